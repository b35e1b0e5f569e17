"""Tests of ensemble_lab.metrics.calibration_errors against numpy loops over bins and hand-worked cases."""

import numpy as np
import pytest
import torch

from ensemble_lab.errors import ConfigError, NonFiniteOutputError
from ensemble_lab.metrics.calibration_errors import (
    FACTS,
    brier_decomposition,
    calibration_error_metrics,
    ece_adaptive,
    ece_classwise,
    equal_mass_bins,
    mce,
    reliability_data,
)
from ensemble_lab.metrics.classification import predictive_metrics


def random_probs(n: int, c: int, seed: int) -> torch.Tensor:
    """Softmax of random float64 logits (N, C)."""
    gen = torch.Generator().manual_seed(seed)
    return (2.0 * torch.randn(n, c, generator=gen, dtype=torch.float64)).softmax(-1)


def random_targets(n: int, c: int, seed: int) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed + 1))


def np_equal_width_bin(value: float, num_bins: int) -> int:
    """Bin k holds (k/B, (k+1)/B]; 0 goes to bin 0 (a plain Python scan over the edges)."""
    for k in range(num_bins):
        if value <= (k + 1) / num_bins:
            return k
    return num_bins - 1


def np_mce(probs: np.ndarray, targets: np.ndarray, num_bins: int) -> float:
    conf, correct = probs.max(1), (probs.argmax(1) == targets)
    bins = np.array([np_equal_width_bin(v, num_bins) for v in conf])
    gaps = [abs(correct[bins == b].mean() - conf[bins == b].mean()) for b in range(num_bins) if (bins == b).any()]
    return max(gaps)


def np_adaptive_ece(probs: np.ndarray, targets: np.ndarray, num_bins: int) -> float:
    """Equal-mass bins by numpy.array_split of the samples sorted by confidence (no ties in the data)."""
    conf, correct = probs.max(1), (probs.argmax(1) == targets).astype(float)
    order = np.argsort(conf)
    total = 0.0
    for chunk in np.array_split(order, num_bins):
        if len(chunk):
            total += len(chunk) / len(conf) * abs(correct[chunk].mean() - conf[chunk].mean())
    return total


def np_classwise_ece(probs: np.ndarray, targets: np.ndarray, num_bins: int) -> float:
    n, c = probs.shape
    per_class = []
    for k in range(c):
        p = probs[:, k]
        event = (targets == k).astype(float)
        bins = np.array([np_equal_width_bin(v, num_bins) for v in p])
        ece = 0.0
        for b in range(num_bins):
            inside = bins == b
            if inside.any():
                ece += inside.sum() / n * abs(event[inside].mean() - p[inside].mean())
        per_class.append(ece)
    return float(np.mean(per_class))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mce_matches_numpy_loop(seed: int) -> None:
    probs, targets = random_probs(300, 5, seed), random_targets(300, 5, seed)
    assert mce(probs, targets, 15) == pytest.approx(np_mce(probs.numpy(), targets.numpy(), 15), abs=1e-12)


@pytest.mark.parametrize(("n", "num_bins"), [(300, 15), (301, 7), (10, 15)])
def test_ece_adaptive_matches_array_split(n: int, num_bins: int) -> None:
    probs, targets = random_probs(n, 4, n), random_targets(n, 4, n)
    expected = np_adaptive_ece(probs.numpy(), targets.numpy(), num_bins)
    assert ece_adaptive(probs, targets, num_bins) == pytest.approx(expected, abs=1e-12)


def test_equal_mass_bins_keep_tie_runs_together_regardless_of_order() -> None:
    # 6 samples, 3 bins of 2: sorted confidences .2 .5 .5 .5 .9 .9 -> the .5 run starts at position 1 (bin 0),
    # the .9 run at position 4 (bin 2)
    conf = torch.tensor([0.5, 0.9, 0.2, 0.5, 0.9, 0.5], dtype=torch.float64)
    assert equal_mass_bins(conf, 3).tolist() == [0, 2, 0, 0, 2, 0]
    permutation = torch.tensor([3, 0, 5, 1, 4, 2])
    assert equal_mass_bins(conf[permutation], 3).tolist() == equal_mass_bins(conf, 3)[permutation].tolist()


@pytest.mark.parametrize("seed", [0, 3])
def test_ece_classwise_matches_numpy_loop(seed: int) -> None:
    probs, targets = random_probs(200, 6, seed), random_targets(200, 6, seed)
    expected = np_classwise_ece(probs.numpy(), targets.numpy(), 15)
    assert ece_classwise(probs, targets, 15) == pytest.approx(expected, abs=1e-12)


def test_brier_decomposition_sums_to_predictive_metrics_brier() -> None:
    member_probs = torch.stack([random_probs(400, 5, s) for s in (4, 5, 6)])  # (3, 400, 5)
    targets = random_targets(400, 5, 4)
    brier = predictive_metrics(member_probs, targets)["brier"]
    parts = brier_decomposition(member_probs.mean(0), targets)
    total = parts["brier_reliability"] - parts["brier_resolution"] + parts["brier_uncertainty"] + parts["brier_within_bin"]
    assert total == pytest.approx(brier, abs=1e-12)
    assert abs(parts["brier_within_bin"]) < 0.05 * brier  # narrow bins: the classical identity holds closely


def test_brier_decomposition_is_exact_when_forecasts_within_a_bin_are_equal() -> None:
    # forecasts taking 3 distinct vectors, each class's values in different bins of 15:
    # the classical identity reliability - resolution + uncertainty = brier holds exactly
    vectors = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    which = torch.randint(0, 3, (500,), generator=gen)
    probs, targets = vectors[which], torch.randint(0, 3, (500,), generator=gen)
    parts = brier_decomposition(probs, targets)
    brier = predictive_metrics(probs.unsqueeze(0), targets)["brier"]
    assert parts["brier_reliability"] - parts["brier_resolution"] + parts["brier_uncertainty"] == pytest.approx(brier, abs=1e-12)
    assert parts["brier_within_bin"] == pytest.approx(0.0, abs=1e-12)
    # uncertainty by hand: Σ_c f_c (1 - f_c) of the class frequencies
    freq = np.bincount(targets.numpy(), minlength=3) / 500
    assert parts["brier_uncertainty"] == pytest.approx(float((freq * (1 - freq)).sum()), abs=1e-12)


def test_reliability_data_counts_and_accuracies_match_numpy() -> None:
    probs, targets = random_probs(97, 3, 7), random_targets(97, 3, 7)
    data = reliability_data(probs, targets, 10)
    conf, correct = probs.max(1).values.numpy(), (probs.argmax(1) == targets).numpy()
    order = np.argsort(conf)
    chunks = np.array_split(order, 10)
    assert data["equal_mass"]["count"] == [float(len(ch)) for ch in chunks]
    assert np.allclose(data["equal_mass"]["accuracy"], [correct[ch].mean() for ch in chunks])
    assert np.allclose(data["equal_mass"]["confidence"], [conf[ch].mean() for ch in chunks])
    bins = np.array([np_equal_width_bin(v, 10) for v in conf])
    assert data["equal_width"]["count"] == [float((bins == b).sum()) for b in range(10)]


def test_calibration_error_metrics_has_the_facts_keys_and_uses_the_member_mean() -> None:
    member_probs = torch.stack([random_probs(120, 4, s) for s in (8, 9)])
    targets = random_targets(120, 4, 8)
    result = calibration_error_metrics(member_probs, targets)
    assert set(result) == {name for name, *_ in FACTS}
    mean = member_probs.mean(0)
    assert result["ece_adaptive"] == pytest.approx(ece_adaptive(mean, targets), abs=1e-12)
    assert result["ece_classwise"] == pytest.approx(np_classwise_ece(mean.numpy(), targets.numpy(), 15), abs=1e-12)
    assert result["mce"] == pytest.approx(np_mce(mean.numpy(), targets.numpy(), 15), abs=1e-12)
    parts = brier_decomposition(mean, targets)
    assert all(result[key] == pytest.approx(parts[key], abs=1e-12) for key in ("brier_reliability", "brier_resolution", "brier_uncertainty"))


def test_bad_input_is_a_one_line_error() -> None:
    probs, targets = random_probs(10, 3, 0), random_targets(10, 3, 0)
    with pytest.raises(ConfigError, match="num_bins"):
        mce(probs, targets, 0)
    with pytest.raises(ValueError, match="targets must have shape"):
        ece_adaptive(probs, targets[:5])
    bad = probs.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteOutputError):
        ece_classwise(bad, targets)
