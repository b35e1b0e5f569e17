"""Linear mode connectivity: barriers against hand computations, member networks against the ensemble's own logits."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ensemble_lab.connectivity.barriers import all_pairs, barrier, format_barriers, frankle_barrier, grid, path_curves, reestimate_norms
from ensemble_lab.errors import EnsembleLabError
from ensemble_lab.evaluation.member_networks import has_member_layers, interpolate, member_states
from ensemble_lab.methods import MIMO, BatchEnsemble, DeepEnsemble, LowRankEnsemble, MCDropout, PackedEnsemble
from ensemble_lab.nn import GroupedLinear
from ensemble_lab.report.groups import WEIGHTS, build_report

RESNET = {"backbone": "resnet18", "width": 4}
MLP = {"backbone": "mlp", "hidden_sizes": [12, 8]}


class Toy(nn.Module):
    """Two parameters u, v; logits [u·v·x, −u·v·x] for scalar inputs x (B, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.u, self.v = nn.Parameter(torch.tensor(0.0)), nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.u * self.v * x  # (B, 1)
        return torch.cat([z, -z], dim=1)  # (B, 2)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_barrier_of_hand_worked_curves():
    assert barrier([1.0, 3.0, 2.0], [0.0, 0.5, 1.0]) == pytest.approx(1.5)  # chord at t = 0.5 is 1.5
    assert barrier([0.0, 0.25, 1.0], [0.0, 0.5, 1.0]) == 0.0  # below the chord: only the ends touch it
    assert grid(5) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_both_barriers_against_numpy_on_a_hand_made_curve():
    # ends 0.2 and 1.0, a bump of 0.9 at t = 0.25: the chord there is 0.4, the mean of the ends 0.6
    t = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    curve = np.array([0.2, 0.9, 0.7, 0.8, 1.0])
    chord = curve - ((1 - t) * curve[0] + t * curve[-1])  # Entezari et al.: above the chord
    frankle = curve.max() - (curve[0] + curve[-1]) / 2  # Frankle et al.: above the mean of the ends
    assert barrier(curve.tolist(), t.tolist()) == pytest.approx(chord.max()) == pytest.approx(0.5)
    assert frankle_barrier(curve.tolist()) == pytest.approx(frankle) == pytest.approx(0.4)
    # equal ends: the two definitions agree
    flat = [0.3, 0.8, 0.3]
    assert frankle_barrier(flat) == pytest.approx(barrier(flat, [0.0, 0.5, 1.0])) == pytest.approx(0.5)


def test_all_pairs_reports_both_barriers_per_pair_and_over_pairs():
    # three "members" on a line: the network's one weight w = θ, logits (w·x, 0) on one input x = 1 of class 0
    net = nn.Linear(1, 2, bias=False)
    states = [{"weight": torch.tensor([[w], [0.0]])} for w in (3.0, -1.0, 0.5)]
    t = grid(5)
    data = (torch.ones(1, 1), torch.tensor([0]))
    summary = all_pairs(net, states, t, data, batch_size=1)
    chords, frankles = [], []
    for record in summary["pairs"]:
        w = (1 - np.array(t)) * states[record["i"]]["weight"][0, 0].item() + np.array(t) * states[record["j"]]["weight"][0, 0].item()
        loss = np.log1p(np.exp(-w))  # NLL of class 0 with logits (w, 0)
        chord = (loss - ((1 - np.array(t)) * loss[0] + np.array(t) * loss[-1])).max()
        frankle = loss.max() - (loss[0] + loss[-1]) / 2
        assert record["barrier_loss"] == pytest.approx(chord) and record["frankle_barrier_loss"] == pytest.approx(frankle)
        error = (w < 0).astype(float)  # argmax of (w, 0) is class 1 only for w < 0 (a tie goes to class 0)
        assert record["barrier_error"] == pytest.approx((error - ((1 - np.array(t)) * error[0] + np.array(t) * error[-1])).max())
        assert record["frankle_barrier_error"] == pytest.approx(error.max() - (error[0] + error[-1]) / 2)
        chords.append(chord)
        frankles.append(frankle)
    assert summary["barrier_loss_mean"] == pytest.approx(np.mean(chords))
    assert summary["frankle_barrier_loss_mean"] == pytest.approx(np.mean(frankles))
    assert summary["frankle_barrier_loss_std"] == pytest.approx(np.std(frankles, ddof=1))
    # pair 0-1 (w from 3 to −1) turns wrong only at its end: no chord barrier, but ½ above the mean of its ends
    assert summary["pairs"][0]["barrier_error"] == 0.0 and summary["pairs"][0]["frankle_barrier_error"] == 0.5
    assert "Frankle" in format_barriers({**summary, "pairs": summary["pairs"]})


def test_two_parameter_toy_path_equals_the_hand_computation():
    # θ_0 = (2, 2), θ_1 = (−2, −2): u(t) = v(t) = 2 − 4t, so z = (2 − 4t)²; both inputs have NLL softplus(−2z)
    x, y = torch.tensor([[1.0], [-1.0]]), torch.tensor([0, 1])
    a, b = {"u": torch.tensor(2.0), "v": torch.tensor(2.0)}, {"u": torch.tensor(-2.0), "v": torch.tensor(-2.0)}
    t = grid(11)
    loss, error = path_curves(Toy(), a, b, t, (x, y), batch_size=2)
    expected = [softplus(-2 * (2 - 4 * s) ** 2) for s in t]
    assert loss == pytest.approx(expected, rel=1e-5)
    # at t = 0.5 both logits are 0: argmax picks class 0, wrong for the second input
    assert error == [0.5 if s == 0.5 else 0.0 for s in t]
    assert barrier(loss, t) == pytest.approx(math.log(2) - softplus(-8), rel=1e-5)
    assert barrier(error, t) == 0.5


def _randomized(model: nn.Module) -> nn.Module:
    """``model`` in float64 and eval mode, its weights and running statistics moved off their init (members differ)."""
    torch.manual_seed(1)
    model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.3 * torch.randn_like(buffer))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand_like(buffer))
    return model


CASES = {
    "be_mlp_rank1": lambda: BatchEnsemble(num_members=3, **MLP),
    "be_mlp_rank2": lambda: BatchEnsemble(num_members=3, rank=2, **MLP),
    "be_resnet_rank1": lambda: BatchEnsemble(num_members=2, **RESNET),
    "be_resnet_rank2_kernel": lambda: BatchEnsemble(num_members=2, rank=2, perturbation="kernel", **RESNET),
    "be_resnet_per_member_norm": lambda: BatchEnsemble(num_members=2, norm="per_member", **RESNET),
    "deep_mlp": lambda: DeepEnsemble(num_members=3, **MLP),
    "deep_resnet": lambda: DeepEnsemble(num_members=2, **RESNET),
    "low_rank_mlp": lambda: LowRankEnsemble(num_members=3, rank=2, **MLP),
    "low_rank_resnet": lambda: LowRankEnsemble(num_members=2, **RESNET),
    "packed_full_width": lambda: PackedEnsemble(num_members=2, alpha=2.0, **MLP),  # α = M: members at the backbone's width
    "packed_half_width_mlp": lambda: PackedEnsemble(num_members=4, alpha=2.0, **MLP),  # the shipped PE-(2, 4, 1)
    "packed_resnet_alpha_3": lambda: PackedEnsemble(num_members=2, alpha=3.0, **RESNET),  # members 1.5x as wide
    "packed_gamma_2_mlp": lambda: PackedEnsemble(num_members=2, alpha=2.0, gamma=2, **MLP),  # block-diagonal hidden layer
    # grouped convs (no 64-channel floor at this width), the blocks' first convs dense as the authors', or grouped too
    "packed_gamma_2_resnet": lambda: PackedEnsemble(num_members=2, alpha=2.0, gamma=2, min_channels_per_group=0, **RESNET),
    "packed_gamma_2_everywhere": lambda: PackedEnsemble(
        num_members=2, alpha=2.0, gamma=2, min_channels_per_group=0, group_block_entry=True, **RESNET
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_member_network_gives_exactly_the_members_logits(case):
    model = _randomized(CASES[case]())
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)  # (M, B, C)
        plain = model.member_network()
        states = member_states(model.network, plain, model.num_members, type(model).__name__)
        plain.double().eval()
        for i, state in enumerate(states):
            plain.load_state_dict(state)
            torch.testing.assert_close(plain(x), logits[i], rtol=0, atol=1e-10)
    assert not torch.equal(logits[0], logits[1])  # the members differ: a wrong member would show


def test_identical_members_have_zero_barrier():
    model = _randomized(BatchEnsemble(num_members=3, **MLP))
    with torch.no_grad():
        for module in model.modules():
            for name in ("r", "s", "bias"):
                p = getattr(module, name, None)
                if isinstance(p, nn.Parameter) and hasattr(module, "member_state"):
                    p.copy_(p[:1].expand_as(p))  # every member takes member 0's fast weights and bias
    plain = model.member_network()
    states = member_states(model.network, plain, 3, "BatchEnsemble")
    data = (torch.randn(40, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (40,)))
    result = all_pairs(plain.double(), states, grid(7), data, batch_size=16)
    assert len(result["pairs"]) == 3
    for pair in result["pairs"]:
        assert max(pair["loss"]) - min(pair["loss"]) < 1e-12
        assert abs(pair["barrier_loss"]) < 1e-12 and abs(pair["barrier_error"]) < 1e-12  # zero to rounding (the chord)
    assert result["barrier_loss_std"] is not None  # three pairs: a sample std


def _nll(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.cross_entropy(logits, y))


def test_ends_without_norm_reestimation_are_the_ensembles_members():
    model = _randomized(BatchEnsemble(num_members=2, **RESNET))  # a BatchNorm shared by the members
    x, y = torch.randn(12, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (12,))
    with torch.no_grad():
        logits = model(x)  # (M, B, C)
    plain = model.member_network()
    a, b = member_states(model.network, plain, 2, "BatchEnsemble")
    loss, error = path_curves(plain.double(), a, b, [0.0, 0.5, 1.0], (x, y), batch_size=5)
    assert loss[0] == pytest.approx(_nll(logits[0], y), rel=1e-12)
    assert loss[2] == pytest.approx(_nll(logits[1], y), rel=1e-12)
    assert error[0] == float((logits[0].argmax(-1) != y).double().mean())


def test_ends_with_norm_reestimation_match_an_independent_reestimation():
    model = _randomized(DeepEnsemble(num_members=2, **RESNET))
    x, y = torch.randn(10, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (10,))
    batches = [torch.randn(6, 1, 8, 8, dtype=torch.float64) + 0.5 for _ in range(3)]
    plain = model.member_network().double()
    states = member_states(model.network, plain, 2, "DeepEnsemble")
    loss, _ = path_curves(plain, states[0], states[1], [0.0, 1.0], (x, y), batch_size=4, norm_batches=batches)
    for end, state in zip(loss, states):
        member = model.member_network().double()
        member.load_state_dict(state)
        norms = [m for m in member.modules() if isinstance(m, nn.BatchNorm2d)]
        before = norms[0].running_mean.clone()
        for m in norms:  # by hand: fresh statistics, an equal-weight average over the same batches
            m.reset_running_stats()
            m.momentum = None
        member.train()
        with torch.no_grad():
            for batch in batches:
                member(batch)
            member.eval()
            assert not torch.allclose(norms[0].running_mean, before)  # re-estimation changed something
            assert end == pytest.approx(_nll(member(x), y), rel=1e-12)


def test_reestimation_leaves_dropout_off_and_is_repeatable():
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Dropout(0.5), nn.Flatten())
    batches = [torch.randn(4, 1, 5, 5)]
    reestimate_norms(net, batches)
    first = net(batches[0])
    reestimate_norms(net, batches)
    torch.testing.assert_close(net(batches[0]), first)  # eval mode afterwards, same statistics
    assert not net.training and net[1].momentum == 0.1  # momentum restored


def test_interpolation_keeps_integer_buffers_and_hits_the_ends_exactly():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([0.3, -7.1]), "n": torch.tensor(9)}
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"]) and torch.equal(interpolate(a, b, 1.0)["w"], b["w"])
    assert interpolate(a, b, 0.5)["n"] == 3
    torch.testing.assert_close(interpolate(a, b, 0.25)["w"], 0.75 * a["w"] + 0.25 * b["w"])


def test_methods_whose_members_share_every_weight_have_no_member_layers():
    assert not has_member_layers(MCDropout(num_members=3, **MLP).network)
    assert not has_member_layers(MIMO(num_members=3, **MLP).network)
    assert has_member_layers(BatchEnsemble(num_members=3, **MLP).network)


def test_member_networks_of_packed_are_the_backbone_at_alpha_w_over_m():
    model = PackedEnsemble(num_members=4, alpha=2.0, **MLP)  # α/M = 1/2: members of 6 and 4 hidden units
    widths = [m.out_features for m in model.member_network().modules() if isinstance(m, nn.Linear)]
    assert widths == [MLP["hidden_sizes"][0] // 2, MLP["hidden_sizes"][1] // 2, 10]


def test_grouped_packed_members_are_grouped_plain_networks():
    model = PackedEnsemble(num_members=2, alpha=2.0, gamma=2, min_channels_per_group=0, **RESNET)
    member = model.member_network()
    entries = {id(block.conv1) for block in member.blocks}  # each block's first conv: one group, as the authors'
    convs = [m for m in member.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].groups == 1 and {m.groups for m in convs[1:] if id(m) in entries} == {1}  # the stem reads the whole image
    assert {m.groups for m in convs[1:] if id(m) not in entries} == {2}
    linears = [m for m in PackedEnsemble(num_members=2, alpha=2.0, gamma=2, **MLP).member_network().modules() if isinstance(m, nn.Module)]
    assert [type(m).__name__ for m in linears if type(m).__name__ in ("Linear", "GroupedLinear")] == ["Linear", "GroupedLinear", "Linear"]


def test_grouped_linear_is_a_block_diagonal_matrix():
    layer = GroupedLinear(6, 4, groups=2).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    dense = torch.zeros(4, 6, dtype=torch.float64)  # by hand: block j maps inputs [3j, 3j+3) to outputs [2j, 2j+2)
    dense[:2, :3], dense[2:, 3:] = layer.weight[:2], layer.weight[2:]
    torch.testing.assert_close(layer(x), x @ dense.T + layer.bias, rtol=0, atol=1e-12)
    with pytest.raises(EnsembleLabError, match="divide by groups"):
        GroupedLinear(5, 4, groups=2)


def test_report_shows_both_barriers_and_no_blank_column_for_older_files(tmp_path):
    sets = {"digits": {"role": "id", "acc": 0.9, "nll": 0.3, "ece": 0.02, "mi": 0.01, "disagreement": 0.02}}
    walks = {1: (0.1, 0.3), 2: (0.2, 0.6)}  # per seed: (chord, Frankle) mean loss barrier
    for seed, (chord, frankle) in walks.items():
        run = tmp_path / f"be/seed_{seed}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"method": "BatchEnsemble", "num_members": 4, "seed": seed,
                                                      "datamodule": "DigitsDataModule", "sets": sets}))  # fmt: skip
        (run / "connectivity.json").write_text(json.dumps({"barrier_loss_mean": chord, "barrier_error_mean": 0.0,
                                                           "frankle_barrier_loss_mean": frankle, "frankle_barrier_error_mean": 0.05}))  # fmt: skip
    (group,) = build_report([tmp_path])
    stats = group.stats[WEIGHTS]
    assert stats["barrier_loss_mean"].mean == pytest.approx(np.mean([0.1, 0.2]))
    assert stats["frankle_barrier_loss_mean"].mean == pytest.approx(np.mean([0.3, 0.6]))
    assert stats["frankle_barrier_loss_mean"].std == pytest.approx(np.std([0.3, 0.6], ddof=1))
    for seed in walks:  # connectivity.json written before the Frankle barrier: its column is left out, not blank
        (tmp_path / f"be/seed_{seed}" / "connectivity.json").write_text(json.dumps({"barrier_loss_mean": 0.1, "barrier_error_mean": 0.0}))
    (group,) = build_report([tmp_path])
    assert "barrier_loss_mean" in group.stats[WEIGHTS] and "frankle_barrier_loss_mean" not in group.stats[WEIGHTS]
