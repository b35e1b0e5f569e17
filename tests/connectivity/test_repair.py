"""REPAIR: the repaired units' statistics against a numpy forward of the MLP, the ends, the hand-worked correction
on a 3-unit MLP, the option it needs, and the repaired curves and barriers of connectivity.json."""

import json

import numpy as np
import pytest
import torch
import yaml

from ensemble_lab.cli import main
from ensemble_lab.connectivity.barriers import all_pairs, grid
from ensemble_lab.connectivity.command import run_connectivity
from ensemble_lab.connectivity.permutations import permutation_spec
from ensemble_lab.connectivity.repair import repairable_layers, repaired_state, repairer
from ensemble_lab.errors import ConfigError
from ensemble_lab.evaluation.member_networks import State, interpolate
from ensemble_lab.methods import DeepEnsemble, SingleModel
from tests.connectivity.test_command import _connectivity, _fake_run

IMAGES = (1, 8, 8)


def _plain(hidden: list[int]) -> torch.nn.Module:
    """The plain MLP member network: Flatten, then Linear / ReLU pairs (keys 1, 3, ...), then the logits' Linear."""
    return DeepEnsemble(num_members=2, backbone="mlp", hidden_sizes=hidden).member_network().eval()


def _random_state(plain: torch.nn.Module, seed: int) -> State:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.4 for k, v in plain.state_dict().items()}


def _batches(seed: int = 5, count: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, *IMAGES, generator=g) for _ in range(count)]


def _numpy_preactivations(state: State, batches: list[torch.Tensor], layers: list[str]) -> dict[str, np.ndarray]:
    """A hand-written numpy forward of the MLP: every Linear's output (N, n) before its ReLU, over all batches."""
    x = np.concatenate([b.numpy().reshape(len(b), -1) for b in batches]).astype(np.float64)  # (N, 64)
    out = {}
    for name in layers:
        z = x @ state[f"{name}.weight"].double().numpy().T + state[f"{name}.bias"].double().numpy()  # (N, n)
        out[name] = z
        x = np.maximum(z, 0.0)
    return out


def test_repaired_units_have_the_interpolated_statistics():
    plain = _plain([12, 8])
    a, b = _random_state(plain, 0), _random_state(plain, 1)
    layers = repairable_layers(plain, permutation_spec(plain))
    assert layers == ["1", "3"]  # both hidden Linears, not the logits
    batches, alpha = _batches(), 0.5
    state = repaired_state(plain, a, b, alpha, layers, batches)
    za, zb, zr = (_numpy_preactivations(s, batches, layers) for s in (a, b, state))
    for name in layers:
        np.testing.assert_allclose(zr[name].mean(0), (1 - alpha) * za[name].mean(0) + alpha * zb[name].mean(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(zr[name].std(0), (1 - alpha) * za[name].std(0) + alpha * zb[name].std(0), rtol=1e-4, atol=1e-6)
    plain_z = _numpy_preactivations(interpolate(a, b, alpha), batches, layers)
    assert plain_z["3"].std(0).mean() < zr["3"].std(0).mean()  # the plain midpoint had collapsed variance


@pytest.mark.parametrize("alpha, end", [(0.0, 0), (1.0, 1)])
def test_at_the_ends_the_repaired_network_is_the_endpoint(alpha, end):
    plain = _plain([12, 8])
    states = [_random_state(plain, 0), _random_state(plain, 1)]
    layers, batches = repairable_layers(plain, permutation_spec(plain)), _batches()
    x = torch.randn(20, *IMAGES, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        plain.load_state_dict(states[end])
        expected = plain(x)
        plain.load_state_dict(repaired_state(plain, *states, alpha, layers, batches))
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)


def test_the_correction_on_a_three_unit_mlp_is_the_hand_worked_one():
    plain = _plain([3])  # Linear 64 -> 3 (key 1), ReLU, Linear 3 -> 10 (key 3, the logits)
    a, b = _random_state(plain, 2), _random_state(plain, 3)
    layers, batches, alpha = repairable_layers(plain, permutation_spec(plain)), _batches(count=2), 0.25
    assert layers == ["1"]
    state = repaired_state(plain, a, b, alpha, layers, batches)
    x = np.concatenate([bt.numpy().reshape(len(bt), -1) for bt in batches]).astype(np.float64)  # (32, 64)
    middle = {k: (1 - alpha) * a[k].double().numpy() + alpha * b[k].double().numpy() for k in a}

    def moments(w: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = x @ w.T + bias  # (32, 3)
        mean = z.sum(0) / len(z)
        return mean, np.sqrt(((z - mean) ** 2).sum(0) / len(z))  # population std, as REPAIR measures it

    (ma, sa), (mb, sb) = (moments(s["1.weight"].double().numpy(), s["1.bias"].double().numpy()) for s in (a, b))
    m_mid, s_mid = moments(middle["1.weight"], middle["1.bias"])
    scale = ((1 - alpha) * sa + alpha * sb) / s_mid  # (3,)
    np.testing.assert_allclose(state["1.weight"].double().numpy(), middle["1.weight"] * scale[:, None], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state["1.bias"].double().numpy(), (middle["1.bias"] - m_mid) * scale + (1 - alpha) * ma + alpha * mb,
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    for key in ("3.weight", "3.bias"):  # only the repaired layer changes
        np.testing.assert_allclose(state[key].double().numpy(), middle[key], rtol=1e-6, atol=1e-7)
    assert set(state) == set(a)


def test_repair_without_weight_matching_is_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="add --align weight_matching"):
        run_connectivity(tmp_path / "missing.yaml", repair=True)
    options = {"num_members": 2, "hidden_sizes": [16]}
    run = _fake_run(tmp_path, DeepEnsemble(**options), options)
    with pytest.raises(SystemExit) as info:
        _connectivity(run, "--repair", "true")
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and "--repair true" in err and "add --align weight_matching" in err
    assert not (run / "connectivity.json").exists()


def test_all_pairs_reports_the_repaired_curves_and_their_chord_barriers():
    plain = _plain([12, 8])
    states = [_random_state(plain, s) for s in (0, 1, 2)]
    batches, t = _batches(), grid(5)
    g = torch.Generator().manual_seed(4)
    data = (torch.randn(40, *IMAGES, generator=g), torch.randint(0, 10, (40,), generator=g))
    layers = repairable_layers(plain, permutation_spec(plain))
    summary = all_pairs(plain, states, t, data, 16, (), False, lambda a, b: b, repairer(plain, layers, batches))
    ts = np.asarray(t)
    for pair in summary["pairs"]:
        for key in ("loss", "error"):
            curve = np.asarray(pair[f"repaired_{key}"])
            assert pair[f"repaired_barrier_{key}"] == pytest.approx(float(np.max(curve - ((1 - ts) * curve[0] + ts * curve[-1]))))
            assert curve[0] == pytest.approx(pair[key][0]) and curve[-1] == pytest.approx(pair[key][-1])  # the members themselves
    for key in ("repaired_barrier_loss", "repaired_barrier_error"):
        values = [p[key] for p in summary["pairs"]]
        assert summary[f"{key}_mean"] == pytest.approx(np.mean(values)) and summary[f"{key}_std"] == pytest.approx(np.std(values, ddof=1))
    plain_only = all_pairs(plain, states, t, data, 16, (), False, lambda a, b: b)
    assert plain_only["pairs"][0]["repaired_loss"] is None and "repaired_barrier_loss_mean" not in plain_only


def test_connectivity_repair_end_to_end(tmp_path, capsys):
    """Two SingleModel checkpoints assembled into a Deep Ensemble: the repaired fields, the table and the figure."""
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = SingleModel(hidden_sizes=[16])
        paths.append(str(tmp_path / f"single{seed}.ckpt"))
        torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, paths[-1])
    run = tmp_path / "assembled"
    run.mkdir()
    config = {"model": {"class_path": "DeepEnsemble", "init_args": {"hidden_sizes": [16], "member_checkpoints": paths}},
              "data": {"class_path": "DigitsDataModule"}}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    main(["connectivity", "--config", str(run / "config.yaml"), "--points", "3", "--align", "weight_matching", "--repair", "true",
          "--norm_batches", "2"])  # fmt: skip
    out = capsys.readouterr().out
    document = json.loads((run / "connectivity.json").read_text())
    assert document["repair"] is True and document["repaired_layers"] == ["1"] and document["repair_batches"] == 2
    pair = document["pairs"][0]
    curve, ts = np.asarray(pair["repaired_loss"]), np.asarray(document["t"])
    assert pair["repaired_barrier_loss"] == pytest.approx(float(np.max(curve - ((1 - ts) * curve[0] + ts * curve[-1]))))
    assert curve[0] == pytest.approx(pair["loss"][0], rel=1e-5) and curve[-1] == pytest.approx(pair["aligned_loss"][-1], rel=1e-5)
    assert document["repaired_barrier_loss_mean"] == pytest.approx(pair["repaired_barrier_loss"])
    assert "repaired loss" in out and (run / "figures" / "connectivity.png").exists()


class _ConvNet(torch.nn.Module):
    """A conv (with bias, no norm after it) whose channels are hidden units, averaged over space into the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.linear = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_a_conv_layer_is_repaired_per_channel_over_space():
    plain = _ConvNet().eval()
    a, b = _random_state(plain, 6), _random_state(plain, 7)
    layers, batches, alpha = repairable_layers(plain, permutation_spec(plain)), _batches(count=2), 0.5
    assert layers == ["conv"]
    state = repaired_state(plain, a, b, alpha, layers, batches)
    x = torch.cat(batches)

    def moments(s: State) -> tuple[np.ndarray, np.ndarray]:  # per channel over images and positions, by F.conv2d
        z = torch.nn.functional.conv2d(x.double(), s["conv.weight"].double(), s["conv.bias"].double(), padding=1)  # (N, 4, 8, 8)
        z = z.transpose(0, 1).reshape(4, -1).numpy()  # (4, N·64)
        return z.mean(1), z.std(1)

    (ma, sa), (mb, sb), (mr, sr) = moments(a), moments(b), moments(state)
    np.testing.assert_allclose(mr, (1 - alpha) * ma + alpha * mb, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sr, (1 - alpha) * sa + alpha * sb, rtol=1e-4, atol=1e-6)
