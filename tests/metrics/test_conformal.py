"""Tests of ensemble_lab.metrics.conformal: numpy loops of the scores, numpy's quantile, and coverage over many seeds."""

import math

import numpy as np
import pytest
import torch

from ensemble_lab.errors import ConfigError
from ensemble_lab.metrics.conformal import (
    FACTS,
    class_scores,
    conformal_interval_metrics,
    conformal_metrics,
    conformal_quantile,
    prediction_sets,
)


def synthetic(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exchangeable samples: probabilities from random logits, labels drawn from a sharpened version of them."""
    gen = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, c, generator=gen, dtype=torch.float64)
    targets = torch.multinomial((1.5 * logits).softmax(-1), 1, generator=gen).squeeze(-1)
    return logits.softmax(-1), targets


def np_class_scores(probs: np.ndarray, method: str, u: np.ndarray | None, lam: float, k_reg: int) -> np.ndarray:
    """The scores' definitions in loops over samples and classes."""
    n, c = probs.shape
    out = np.zeros((n, c))
    for i in range(n):
        order = sorted(range(c), key=lambda k: -probs[i, k])
        for k in range(c):
            if method == "thr":
                out[i, k] = 1 - probs[i, k]
                continue
            rank = order.index(k) + 1
            score = sum(probs[i, order[j]] for j in range(rank))
            last = probs[i, k]
            if method == "raps":
                score += lam * max(0, rank - k_reg)
                last += lam * (rank > k_reg)
            out[i, k] = score - (u[i] * last if u is not None else 0.0)
    return out


@pytest.mark.parametrize("method", ["thr", "aps", "raps"])
@pytest.mark.parametrize("randomized", [False, True])
def test_class_scores_match_numpy_loop(method: str, randomized: bool) -> None:
    probs, _ = synthetic(20, 6, 0)
    u = torch.rand(20, generator=torch.Generator().manual_seed(1), dtype=torch.float64) if randomized else None
    got = class_scores(probs, method, u, lam=0.05, k_reg=2)
    expected = np_class_scores(probs.numpy(), method, None if u is None else u.numpy(), 0.05, 2)
    assert np.allclose(got.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize(("n", "alpha"), [(100, 0.1), (37, 0.2), (9, 0.05), (1000, 0.01)])
def test_quantile_is_numpy_inverted_cdf_at_the_corrected_level(n: int, alpha: float) -> None:
    scores = np.random.default_rng(n).random(n)
    level = math.ceil((n + 1) * (1 - alpha) - 1e-9) / n
    got = conformal_quantile(torch.tensor(scores), alpha).item()
    if level > 1:
        assert got == math.inf
    else:
        assert got == np.quantile(scores, level, method="inverted_cdf")


@pytest.mark.parametrize("method", ["thr", "aps", "raps"])
def test_alpha_zero_gives_every_class(method: str) -> None:
    cal, cal_y = synthetic(50, 5, 2)
    test, _ = synthetic(30, 5, 3)
    assert prediction_sets(cal, cal_y, test, alpha=0.0, method=method).all()
    assert prediction_sets(cal, cal_y, test, alpha=1e-3, method=method).all()  # ⌈51 · 0.999⌉ = 51 > 50


@pytest.mark.parametrize("method", ["thr", "aps", "raps"])
def test_coverage_is_within_the_finite_sample_bounds_over_many_seeds(method: str) -> None:
    # exchangeable calibration and test data: the mean coverage over seeds lies in [1 − α, 1 − α + 1/(n+1)]
    # (continuous scores), up to Monte Carlo error
    n, alpha, seeds = 100, 0.1, 200
    coverages = []
    for seed in range(seeds):
        cal, cal_y = synthetic(n, 5, 2 * seed)
        test, test_y = synthetic(100, 5, 2 * seed + 1)
        sets = prediction_sets(cal, cal_y, test, alpha, method, generator=torch.Generator().manual_seed(seed), k_reg=1)
        coverages.append(sets[torch.arange(100), test_y].double().mean().item())
    mean, se = np.mean(coverages), np.std(coverages) / np.sqrt(seeds)
    assert 1 - alpha - 3 * se <= mean <= 1 - alpha + 1 / (n + 1) + 3 * se


def test_conformal_metrics_keys_and_values_match_the_sets() -> None:
    cal, cal_y = synthetic(200, 4, 10)
    test, test_y = synthetic(150, 4, 11)
    result = conformal_metrics(cal.unsqueeze(0), cal_y, test.unsqueeze(0), test_y, alpha=0.2)
    assert set(result) == {p.replace("<score>", s) for p, *_ in FACTS[:2] for s in ("thr", "aps", "raps")}
    sets = prediction_sets(cal, cal_y, test, 0.2, "thr")
    assert result["conformal_set_size_thr"] == pytest.approx(sets.double().sum(1).mean().item())
    assert result["conformal_coverage_thr"] == pytest.approx(sets[torch.arange(150), test_y].double().mean().item())
    # a THR set is every class with p_c >= 1 − q̂: check one by numpy
    scores = 1 - cal.numpy()[np.arange(200), cal_y.numpy()]
    q = np.quantile(scores, math.ceil(201 * 0.8) / 200, method="inverted_cdf")
    assert np.array_equal(sets.numpy(), 1 - test.numpy() <= q)


def test_interval_coverage_and_width_match_numpy() -> None:
    rng = np.random.default_rng(0)
    def split(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean = rng.normal(size=(n, 2))
        std = rng.uniform(0.5, 2.0, size=(n, 2))
        return mean, std, mean + std * rng.normal(size=(n, 2))
    cal, test = split(300), split(500)
    got = conformal_interval_metrics(*(torch.tensor(a) for a in cal + test), alpha=0.1)
    q = np.array([np.quantile(np.abs(cal[2][:, d] - cal[0][:, d]) / cal[1][:, d], math.ceil(301 * 0.9) / 300, method="inverted_cdf") for d in range(2)])
    inside = np.abs(test[2] - test[0]) <= q * test[1]
    assert got["conformal_interval_coverage"] == pytest.approx(inside.mean())
    assert got["conformal_interval_width"] == pytest.approx((2 * q * test[1]).mean())
    assert got["conformal_interval_coverage"] == pytest.approx(0.9, abs=0.04)


def test_bad_input_is_a_one_line_error() -> None:
    cal, cal_y = synthetic(10, 3, 0)
    with pytest.raises(ConfigError, match="alpha"):
        prediction_sets(cal, cal_y, cal, alpha=1.0)
    with pytest.raises(ConfigError, match="unknown conformal score"):
        prediction_sets(cal, cal_y, cal, method="lac")
    ones = torch.ones(5)
    with pytest.raises(ValueError, match="std must be positive"):
        conformal_interval_metrics(ones, ones * 0, ones, ones, ones, ones)
