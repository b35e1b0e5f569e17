"""Weight matching: permutation groups against hand-written ones, random permutations undone exactly, the identity
on itself, a monotone objective, brute force on a one-group network, and the runs it refuses."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ensemble_lab.connectivity.alignment import align, check_alignable, objective, permute, weight_matching
from ensemble_lab.connectivity.barriers import all_pairs, grid
from ensemble_lab.connectivity.permutations import NotPermutable, permutation_spec
from ensemble_lab.errors import ConfigError
from ensemble_lab.evaluation.member_networks import State
from ensemble_lab.methods import (
    MIMO,
    BatchEnsemble,
    DeepEnsemble,
    LowRankEnsemble,
    Masksembles,
    MCDropout,
    PackedEnsemble,
    SnapshotEnsemble,
)

MLP = {"backbone": "mlp", "hidden_sizes": [12, 8]}
RESNET = {"backbone": "resnet18", "width": 2}
WRN = {"backbone": "wide_resnet", "depth": 10, "widen_factor": 1}
IMAGES = (1, 8, 8)  # the digits' shape, every backbone's default input here


def _plain(method: type, seed: int, **options) -> nn.Module:
    torch.manual_seed(seed)
    return method(num_members=2, **options).member_network().eval()


def _with_random_statistics(state: State, seed: int) -> State:
    """``state`` with BatchNorm running statistics drawn at random, so permuting them is tested too."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(v.shape, generator=g) + 0.5 if k.endswith(("running_mean", "running_var")) else v.clone() for k, v in state.items()}


def _trained_mlp() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """The MLP member network fitted for a few steps to images labelled by a random linear teacher."""
    net = _plain(DeepEnsemble, 0, **MLP).train()
    x = torch.randn(64, *IMAGES)
    y = (x.flatten(1) @ torch.randn(64, 10)).argmax(1)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        optimiser.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimiser.step()
    return net.eval(), (x, y)


def test_the_mlp_groups_are_its_hidden_layers():
    spec = permutation_spec(_plain(DeepEnsemble, 0, **MLP))  # Flatten, Linear 1, ReLU, Linear 3, ReLU, Linear 5
    assert spec.sizes == {"1": 12, "3": 8}
    assert sorted(spec.groups["1"]) == [("1.bias", 0), ("1.weight", 0), ("3.weight", 1)]
    assert sorted(spec.groups["3"]) == [("3.bias", 0), ("3.weight", 0), ("5.weight", 1)]


def test_the_resnet_ties_each_stages_residual_stream():
    spec = permutation_spec(_plain(DeepEnsemble, 0, **RESNET))
    # 4 stages: one stream each, and the inner channels of 8 blocks
    assert len(spec.groups) == 12 and sorted(spec.sizes.values()) == [2] * 3 + [4] * 3 + [8] * 3 + [16] * 3
    stream = set(spec.groups["conv1"])  # the stem writes stage 1's stream; both blocks add into it, block 2 reads it
    assert {("conv1.weight", 0), ("bn1.weight", 0), ("bn1.running_var", 0), ("blocks.0.bn2.bias", 0), ("blocks.1.bn2.running_mean", 0),
            ("blocks.0.conv1.weight", 1), ("blocks.1.conv1.weight", 1), ("blocks.2.conv1.weight", 1),
            ("blocks.2.shortcut.0.weight", 1)} <= stream  # fmt: skip
    stage2 = next(g for g, members in spec.groups.items() if ("blocks.2.shortcut.0.weight", 0) in members)
    assert {("blocks.2.conv2.weight", 0), ("blocks.2.shortcut.1.weight", 0), ("blocks.3.bn2.weight", 0)} <= set(spec.groups[stage2])
    last = next(g for g, members in spec.groups.items() if ("linear.weight", 1) in members)  # the pooled stream feeds the classifier
    assert spec.sizes[last] == 16 and ("linear.bias", 0) not in spec.groups[last]


def test_a_layer_it_cannot_permute_is_named():
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.softmax(self.a(x), dim=-1))

    with pytest.raises(NotPermutable, match="softmax"):
        permutation_spec(Attention())


@pytest.mark.parametrize(
    "method, options",
    [(DeepEnsemble, MLP), (DeepEnsemble, RESNET), (DeepEnsemble, WRN), (PackedEnsemble, {**RESNET, "width": 8})],
    ids=["mlp", "resnet18", "wide_resnet", "packed_resnet18_gamma1"],
)
def test_a_randomly_permuted_network_is_aligned_back_exactly(method, options):
    net = _plain(method, 0, **options)
    original = _with_random_statistics(net.state_dict(), 1)
    spec = permutation_spec(net)
    g = torch.Generator().manual_seed(2)
    shuffled = {group: torch.randperm(n, generator=g) for group, n in spec.sizes.items()}
    copy = permute(original, spec, shuffled)
    assert any(not torch.equal(copy[k], original[k]) for k in original)
    x = torch.randn(6, *IMAGES)
    net.load_state_dict(original)
    before = net(x)
    net.load_state_dict(copy)
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-6)  # permuting units keeps the function
    aligned, alignment = align(net, spec, original, copy)
    for group, perm in shuffled.items():  # the inverse of the shuffle: copy unit perm[a] is original unit a
        assert torch.equal(perm[alignment.perms[group]], torch.arange(spec.sizes[group]))
    assert all(torch.equal(aligned[k], original[k]) for k in original)


def test_after_alignment_the_barrier_to_a_permuted_copy_is_zero():
    net, data = _trained_mlp()
    original = {k: v.clone() for k, v in net.state_dict().items()}  # a copy: loading another state overwrites the live tensors
    spec = permutation_spec(net)
    g = torch.Generator().manual_seed(3)
    copy = permute(original, spec, {group: torch.randperm(n, generator=g) for group, n in spec.sizes.items()})
    net.load_state_dict(copy)
    torch.testing.assert_close(net(data[0]), _logits(original, data[0]), rtol=1e-5, atol=1e-5)  # the copy computes the original's function
    summary = all_pairs(net, [original, copy], grid(5), data, batch_size=64, aligner=lambda a, b: align(net, spec, a, b)[0])
    pair = summary["pairs"][0]
    assert pair["barrier_loss"] > 0.05  # the raw path between the two orderings crosses a ridge
    assert pair["aligned_barrier_loss"] == 0.0 and pair["aligned_barrier_error"] == 0.0
    assert len(set(pair["aligned_loss"])) == 1  # every point of the aligned path is the network itself
    assert summary["aligned_barrier_loss_mean"] == 0.0


def _logits(state: State, x: torch.Tensor) -> torch.Tensor:
    """The MLP's logits from its state by hand: Linear 1, ReLU, Linear 3, ReLU, Linear 5 on the flattened input."""
    h = x.flatten(1)
    for layer in ("1", "3"):
        h = torch.relu(h @ state[f"{layer}.weight"].T + state[f"{layer}.bias"])
    return h @ state["5.weight"].T + state["5.bias"]


@pytest.mark.parametrize("options", [MLP, RESNET], ids=["mlp", "resnet18"])
def test_aligning_a_network_to_itself_is_the_identity(options):
    net = _plain(DeepEnsemble, 4, **options)
    state = net.state_dict()
    aligned, alignment = align(net, permutation_spec(net), state, state)
    assert all(torch.equal(p, torch.arange(len(p))) for p in alignment.perms.values())
    assert all(torch.equal(aligned[k], state[k]) for k in state) and alignment.sweeps == 1


def test_the_objective_never_decreases_and_matches_a_direct_sum():
    a, b = (_plain(DeepEnsemble, seed, **RESNET) for seed in (5, 6))
    spec = permutation_spec(a)
    keys = [name for name, _ in a.named_parameters() if name in spec.axes]
    result = weight_matching(spec, a.state_dict(), b.state_dict(), keys)
    assert len(result.objective) == result.sweeps + 1 >= 3
    assert all(later >= earlier for earlier, later in zip(result.objective, result.objective[1:]))
    assert result.objective[-1] > result.objective[0]
    permuted = permute(b.state_dict(), spec, result.perms)
    direct = sum(float(np.sum(a.state_dict()[k].double().numpy() * permuted[k].double().numpy())) for k in keys)
    assert result.objective[-1] == pytest.approx(direct, rel=1e-12)
    assert objective(a.state_dict(), permuted, keys) == pytest.approx(direct, rel=1e-12)


def test_one_hidden_layer_finds_the_best_of_all_permutations():
    """With one group the problem is a single linear assignment: brute force over all 5! orders must agree."""
    a, b = (_plain(DeepEnsemble, seed, backbone="mlp", hidden_sizes=[5]) for seed in (7, 8))
    spec = permutation_spec(a)
    state_a, state_b = a.state_dict(), b.state_dict()
    keys = list(state_a)

    def score(order: tuple[int, ...]) -> float:  # ⟨a, b with hidden unit r of the result = unit order[r] of b⟩
        o = list(order)
        return float(
            (state_a["1.weight"] * state_b["1.weight"][o]).sum() + (state_a["1.bias"] * state_b["1.bias"][o]).sum()
            + (state_a["3.weight"] * state_b["3.weight"][:, o]).sum() + (state_a["3.bias"] * state_b["3.bias"]).sum()
        )  # fmt: skip

    best = max(itertools.permutations(range(5)), key=score)
    result = weight_matching(spec, state_a, state_b, keys)
    assert tuple(result.perms["1"].tolist()) == best
    assert result.objective[-1] == pytest.approx(score(best), rel=1e-6)


@pytest.mark.parametrize("method", [BatchEnsemble, LowRankEnsemble])
def test_members_that_share_weights_are_refused_in_one_line(method):
    model = method(num_members=2, **MLP)
    with pytest.raises(ConfigError) as info:
        check_alignable(model.network, model.member_network(), method.__name__)
    message = str(info.value)
    assert "\n" not in message and f"{method.__name__}'s members share weights" in message and "meaningless" in message
    assert "DeepEnsemble" in message and "PackedEnsemble" in message and "SnapshotEnsemble" in message


def test_grouped_packed_members_are_refused_naming_the_layer():
    model = PackedEnsemble(num_members=2, gamma=2, **MLP)
    with pytest.raises(ConfigError, match=r"cannot align PackedEnsemble's members: layer \S+ .*it aligns DeepEnsemble"):
        check_alignable(model.network, model.member_network(), "PackedEnsemble")
    deep = DeepEnsemble(num_members=2, **MLP)
    assert check_alignable(deep.network, deep.member_network(), "DeepEnsemble").sizes == {"1": 12, "3": 8}


def test_the_refusal_lists_exactly_the_methods_and_backbones_alignment_works_on():
    with pytest.raises(ConfigError) as info:
        model = BatchEnsemble(num_members=2, **MLP)
        check_alignable(model.network, model.member_network(), "BatchEnsemble")
    message = str(info.value)
    assert "\n" not in message
    takes = message.split("; it aligns ", 1)[1]
    listed, backbones = takes.split(", on the ")
    works = {"DeepEnsemble", "PackedEnsemble", "SnapshotEnsemble"}  # members own their weights, as a run loads them
    refused = {"BatchEnsemble", "LowRankEnsemble", "MCDropout", "MIMO", "Masksembles"}
    assert all(name in listed for name in works) and not any(name in listed for name in refused)
    assert backbones == "mlp, resnet18, wide_resnet backbones"  # the ViT cannot be traced, timm's resnet has a max pool
    for method in (DeepEnsemble, PackedEnsemble, SnapshotEnsemble):  # each listed method aligns a real network
        built = method(num_members=2, **MLP)
        assert check_alignable(built.network, built.member_network(), method.__name__).sizes == {"1": 12, "3": 8}
    for method in (MCDropout, MIMO, Masksembles):  # the others share weights between members
        built = method(num_members=2, backbone="mlp", hidden_sizes=[16, 16])
        with pytest.raises(ConfigError, match="share weights"):
            check_alignable(built.network, built.member_network(), method.__name__)
