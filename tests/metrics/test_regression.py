"""Tests of ensemble_lab.metrics.regression against scipy / numpy computations and hand-worked cases.

References: scipy.stats.norm and scipy.special.logsumexp for the mixture NLL, numerical integration
(scipy.integrate.quad) of the mixture CDF for CRPS, the closed-form CRPS of one Gaussian (Gneiting &
Raftery 2007), root finding (scipy.optimize.brentq) for the mixture quantiles, counts on samples from a known
Gaussian for coverage, and numpy's var / std / corrcoef for the decomposition and diversity.
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.special import logsumexp
from scipy.stats import norm

from ensemble_lab.errors import NonFiniteOutputError
from ensemble_lab.metrics import regression as reg

ISSUE_NAMES = {
    "rmse", "mae", "nll", "crps", "coverage_50", "coverage_90", "coverage_95", "width_50", "width_90", "width_95",
    "qce", "aleatoric", "epistemic", "epistemic_share",
}  # fmt: skip


def gaussians(num_members: int, num_rows: int, num_targets: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random member means, variances (M, N, D) and targets (N, D), float64, members spread around the targets."""
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randn(num_rows, num_targets, generator=gen, dtype=torch.float64) * 2
    mean = targets + torch.randn(num_members, num_rows, num_targets, generator=gen, dtype=torch.float64)
    var = torch.rand(num_members, num_rows, num_targets, generator=gen, dtype=torch.float64) * 2 + 0.1
    return mean, var, targets


def mixture_cdf_np(x: float, mu: np.ndarray, sd: np.ndarray) -> float:
    """F(x) of the equal-weight mixture of N(mu_m, sd_m²), with scipy."""
    return float(norm.cdf(x, mu, sd).mean())


def test_metric_names_are_the_issue_names_plus_diversity():
    mean, var, targets = gaussians(3, 20, 1, seed=0)
    result = reg.regression_metrics(mean, var, targets)
    assert set(result) == ISSUE_NAMES | {"error_correlation", "epistemic_std"}
    assert [fact.name for fact in reg.METRIC_FACTS] == list(result)
    assert all(isinstance(v, float) for v in result.values())


def test_mixture_nll_matches_scipy_joint_over_targets():
    mean, var, targets = gaussians(3, 40, 2, seed=1)
    mu, sd, y = mean.numpy(), var.sqrt().numpy(), targets.numpy()
    member = norm.logpdf(y, mu, sd).sum(-1)  # (M, N): diagonal Gaussian of each member over the D targets
    expected = logsumexp(member, axis=0) - math.log(3)
    np.testing.assert_allclose(reg.mixture_log_likelihood(mean, var, targets).numpy(), expected, rtol=1e-12)
    assert reg.regression_metrics(mean, var, targets)["nll"] == pytest.approx(-expected.mean(), rel=1e-12)


def test_rmse_and_mae_of_the_mixture_mean_match_numpy():
    mean, var, targets = gaussians(4, 30, 2, seed=2)
    error = mean.numpy().mean(0) - targets.numpy()
    result = reg.regression_metrics(mean, var, targets)
    assert result["rmse"] == pytest.approx(np.sqrt((error**2).mean()), rel=1e-12)
    assert result["mae"] == pytest.approx(np.abs(error).mean(), rel=1e-12)


def test_crps_matches_numerical_integration_of_the_mixture_cdf():
    mean, var, targets = gaussians(3, 6, 1, seed=3)
    got = reg.crps(mean, var, targets).numpy()[:, 0]
    for n in range(6):
        mu, sd, y = mean[:, n, 0].numpy(), var[:, n, 0].sqrt().numpy(), float(targets[n, 0])
        below = quad(lambda x: mixture_cdf_np(x, mu, sd) ** 2, -np.inf, y, epsabs=1e-12)[0]
        above = quad(lambda x: (1 - mixture_cdf_np(x, mu, sd)) ** 2, y, np.inf, epsabs=1e-12)[0]
        assert got[n] == pytest.approx(below + above, rel=1e-7)


def test_crps_of_one_gaussian_is_the_closed_form():
    mean, var, targets = gaussians(1, 50, 2, seed=4)
    sd = var.sqrt().numpy()[0]
    z = (targets.numpy() - mean.numpy()[0]) / sd
    expected = sd * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))  # Gneiting & Raftery (2007)
    np.testing.assert_allclose(reg.crps(mean, var, targets).numpy(), expected, rtol=1e-10)


def test_quantiles_of_one_gaussian_are_scipys_ppf():
    mean, var, _ = gaussians(1, 10, 2, seed=5)
    levels = (0.025, 0.25, 0.5, 0.95)
    got = reg.mixture_quantiles(mean, var, levels).numpy()
    expected = norm.ppf(np.array(levels)[:, None, None], mean.numpy()[0], var.sqrt().numpy()[0])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_mixture_quantiles_solve_the_mixture_cdf():
    mean, var, _ = gaussians(4, 5, 1, seed=6)
    levels = (0.05, 0.5, 0.975)
    got = reg.mixture_quantiles(mean, var, levels).numpy()
    for n in range(5):
        mu, sd = mean[:, n, 0].numpy(), var[:, n, 0].sqrt().numpy()
        for i, q in enumerate(levels):
            root = brentq(lambda x: mixture_cdf_np(x, mu, sd) - q, -50, 50, xtol=1e-13)
            assert got[i, n, 0] == pytest.approx(root, abs=1e-8)


def test_coverage_and_width_equal_counts_on_a_known_gaussian():
    gen = torch.Generator().manual_seed(7)
    num_rows = 5000
    mu = torch.randn(1, num_rows, 1, generator=gen, dtype=torch.float64)
    var = torch.rand(1, num_rows, 1, generator=gen, dtype=torch.float64) + 0.5
    targets = mu[0] + var[0].sqrt() * torch.randn(num_rows, 1, generator=gen, dtype=torch.float64)
    result = reg.interval_metrics(mu, var, targets)
    y, m, sd = targets.numpy()[:, 0], mu.numpy()[0, :, 0], var.sqrt().numpy()[0, :, 0]
    for level in (0.5, 0.9, 0.95):
        low, high = norm.ppf((1 - level) / 2, m, sd), norm.ppf((1 + level) / 2, m, sd)
        assert result[f"coverage_{round(100 * level)}"] == np.mean((low <= y) & (y <= high))
        assert result[f"width_{round(100 * level)}"] == pytest.approx(np.mean(high - low), rel=1e-12)
        # and a calibrated predictive covers about the nominal fraction (3 binomial standard errors)
        assert abs(result[f"coverage_{round(100 * level)}"] - level) < 3 * np.sqrt(level * (1 - level) / num_rows)


def test_mixture_coverage_equals_a_count_inside_brentq_intervals():
    mean, var, targets = gaussians(3, 8, 1, seed=8)
    result = reg.interval_metrics(mean, var, targets, levels=(0.5,))
    inside = []
    for n in range(8):
        mu, sd = mean[:, n, 0].numpy(), var[:, n, 0].sqrt().numpy()
        low = brentq(lambda x: mixture_cdf_np(x, mu, sd) - 0.25, -50, 50, xtol=1e-13)
        high = brentq(lambda x: mixture_cdf_np(x, mu, sd) - 0.75, -50, 50, xtol=1e-13)
        inside.append(low <= float(targets[n, 0]) <= high)
    assert result["coverage_50"] == np.mean(inside)


def qce_numpy(mean: torch.Tensor, var: torch.Tensor, targets: torch.Tensor) -> float:
    """Kuleshov et al.'s calibration error on the grid j/100 with uniform weights, with scipy's CDF."""
    pit = norm.cdf(targets.numpy(), mean.numpy(), var.sqrt().numpy()).mean(0).ravel()
    levels = np.arange(1, 100) / 100
    return float(np.mean([(p - np.mean(pit <= p)) ** 2 for p in levels]))


def test_qce_matches_numpy_and_separates_calibrated_from_overconfident():
    gen = torch.Generator().manual_seed(9)
    num_rows = 20000
    mean = torch.randn(1, num_rows, 1, generator=gen, dtype=torch.float64)
    var = torch.full_like(mean, 2.0)
    targets = mean[0] + math.sqrt(2.0) * torch.randn(num_rows, 1, generator=gen, dtype=torch.float64)
    calibrated = reg.regression_metrics(mean, var, targets)["qce"]
    overconfident = reg.regression_metrics(mean, var / 9, targets)["qce"]
    assert calibrated == pytest.approx(qce_numpy(mean, var, targets), rel=1e-10)
    assert overconfident == pytest.approx(qce_numpy(mean, var / 9, targets), rel=1e-10)
    assert calibrated < 1e-4
    assert overconfident > 0.01


def test_identical_members_have_zero_epistemic_variance():
    mean, var, targets = gaussians(1, 25, 2, seed=10)
    result = reg.regression_metrics(mean.expand(5, -1, -1), var.expand(5, -1, -1), targets)
    assert result["epistemic"] == 0.0
    assert result["epistemic_share"] == 0.0
    assert result["epistemic_std"] == 0.0
    assert result["aleatoric"] == pytest.approx(var.mean().item(), rel=1e-12)


def test_members_with_equal_variances_have_that_aleatoric_variance():
    mean, _, targets = gaussians(4, 25, 2, seed=11)
    result = reg.regression_metrics(mean, torch.full_like(mean, 0.37), targets)
    assert result["aleatoric"] == pytest.approx(0.37, rel=1e-12)


def test_decomposition_matches_numpy():
    mean, var, targets = gaussians(5, 30, 2, seed=12)
    mu = mean.numpy()
    epistemic = np.var(mu, axis=0)  # population variance over the members (divided by M)
    result = reg.regression_metrics(mean, var, targets)
    assert result["epistemic"] == pytest.approx(epistemic.mean(), rel=1e-12)
    assert result["aleatoric"] == pytest.approx(var.numpy().mean(), rel=1e-12)
    assert result["epistemic_share"] == pytest.approx(epistemic.mean() / (epistemic.mean() + var.numpy().mean()), rel=1e-12)
    assert result["epistemic_std"] == pytest.approx(np.std(mu, axis=0).mean(), rel=1e-12)
    # the mixture's moments: E[X] = mean μ_m, Var[X] = E[X²] − E[X]² with E[X²] = mean (σ²_m + μ_m²)
    moment_mean, moment_var = reg.mixture_moments(mean, var)
    np.testing.assert_allclose(moment_mean.numpy(), mu.mean(0), rtol=1e-12)
    np.testing.assert_allclose(moment_var.numpy(), (var.numpy() + mu**2).mean(0) - mu.mean(0) ** 2, rtol=1e-10)
    scores = reg.ood_scores(mean, var)
    np.testing.assert_allclose(scores["epistemic"].numpy(), epistemic.mean(-1), rtol=1e-12)
    np.testing.assert_allclose(scores["variance"].numpy(), (var.numpy().mean(0) + epistemic).mean(-1), rtol=1e-12)


def test_error_correlation_matches_numpy_corrcoef():
    mean, var, targets = gaussians(4, 40, 2, seed=13)
    errors = mean.numpy() - targets.numpy()  # (M, N, D)
    per_target = [np.corrcoef(errors[:, :, d])[np.triu_indices(4, k=1)].mean() for d in range(2)]
    assert reg.error_correlation(mean, targets) == pytest.approx(np.mean(per_target), rel=1e-12)
    assert reg.regression_metrics(mean, var, targets)["error_correlation"] == pytest.approx(np.mean(per_target), rel=1e-12)
    assert reg.error_correlation(mean[:1], targets) == 1.0


def test_original_units_round_trip_and_rescale_the_metrics():
    mean, var, targets = gaussians(3, 40, 2, seed=14)
    shift, scale = torch.tensor([10.0, -3.0], dtype=torch.float64), torch.tensor([4.0, 0.5], dtype=torch.float64)
    orig_mean, orig_var = reg.to_original_units(mean, var, shift, scale)
    np.testing.assert_allclose(orig_mean.numpy(), mean.numpy() * [4.0, 0.5] + [10.0, -3.0])
    np.testing.assert_allclose(orig_var.numpy(), var.numpy() * [16.0, 0.25])
    # standardising again (numpy) gives the network's units back
    np.testing.assert_allclose((orig_mean.numpy() - [10.0, -3.0]) / [4.0, 0.5], mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(orig_var.numpy() / np.array([4.0, 0.5]) ** 2, var.numpy(), rtol=1e-12)
    orig_targets = targets * scale + shift
    standard = reg.regression_metrics(mean, var, targets)
    original = reg.regression_metrics(orig_mean, orig_var, orig_targets)
    # a change of units moves the density by the Jacobian, Σ_d log std_d, and leaves coverage and PIT unchanged
    assert original["nll"] == pytest.approx(standard["nll"] + math.log(4.0) + math.log(0.5), rel=1e-10)
    for name in ("coverage_50", "coverage_90", "coverage_95", "qce"):
        assert original[name] == pytest.approx(standard[name], abs=1e-12)
    one = reg.regression_metrics(mean[..., :1], var[..., :1], targets[:, :1])
    one_orig = reg.regression_metrics(orig_mean[..., :1], orig_var[..., :1], orig_targets[:, :1])
    for name in ("rmse", "mae", "crps", "width_90", "epistemic_std"):
        assert one_orig[name] == pytest.approx(4.0 * one[name], rel=1e-9)
    assert one_orig["epistemic"] == pytest.approx(16.0 * one["epistemic"], rel=1e-10)


def test_large_inputs_are_chunked_without_changing_results(monkeypatch):
    mean, var, targets = gaussians(3, 30, 2, seed=15)
    whole = reg.regression_metrics(mean, var, targets)
    monkeypatch.setattr(reg, "_CHUNK_ELEMENTS", 50)  # a few rows per chunk
    # the quantiles' bisection stops per chunk, at a bracket under 1e-9 σ: the widths agree to that
    assert reg.regression_metrics(mean, var, targets) == pytest.approx(whole, rel=1e-9)


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda m, v, y: (m, -v, y), ValueError),
        (lambda m, v, y: (m, v, y[:, :1]), ValueError),
        (lambda m, v, y: (m[0], v[0], y), ValueError),
        (lambda m, v, y: (m * float("nan"), v, y), NonFiniteOutputError),
        (lambda m, v, y: (m, v * float("inf"), y), NonFiniteOutputError),
    ],
)
def test_bad_inputs_raise_one_line_errors(change, error):
    with pytest.raises(error) as info:
        reg.regression_metrics(*change(*gaussians(2, 5, 2, seed=16)))
    assert "\n" not in str(info.value)


def test_coverage_curve_points_equal_a_count_on_a_known_gaussian():
    """Each point of the calibration curve of interval coverage is the share of targets inside μ ± σ Φ⁻¹((1 + q)/2)."""
    gen = torch.Generator().manual_seed(11)
    num_rows = 2000
    mu = torch.randn(1, num_rows, 2, generator=gen, dtype=torch.float64)
    var = torch.rand(1, num_rows, 2, generator=gen, dtype=torch.float64) + 0.5
    targets = mu[0] + 1.3 * var[0].sqrt() * torch.randn(num_rows, 2, generator=gen, dtype=torch.float64)  # too narrow a predictive
    levels = torch.tensor([0.0, 0.1, 0.5, 0.8, 0.9, 0.95, 1.0], dtype=torch.float64)
    got = reg.coverage_curve(reg.pit_values(mu, var, targets), levels).numpy()
    y, m, sd = targets.numpy(), mu.numpy()[0], var.sqrt().numpy()[0]
    expected = [np.mean(np.abs(y - m) <= sd * norm.ppf((1 + q) / 2)) if q < 1 else 1.0 for q in levels.tolist()]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert got[0] == 0.0 and got[-1] == 1.0 and got[4] < 0.9  # 1.3 σ of noise: the 90 % intervals cover less


def test_coverage_curve_of_a_mixture_agrees_with_its_interval_coverage():
    mean, var, targets = gaussians(3, 400, 1, seed=12)
    levels = torch.tensor(reg.COVERAGE_LEVELS, dtype=torch.float64)
    curve = reg.coverage_curve(reg.pit_values(mean, var, targets), levels)
    intervals = reg.interval_metrics(mean, var, targets)  # bisection on the mixture's quantiles (checked against brentq above)
    for q, value in zip(reg.COVERAGE_LEVELS, curve.tolist()):
        assert value == pytest.approx(intervals[f"coverage_{round(100 * q)}"], abs=1e-12)
