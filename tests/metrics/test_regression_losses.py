"""Tests of ensemble_lab.metrics.regression_losses against scipy / numpy and hand-derived gradients.

References: scipy.stats.norm.logpdf for the Gaussian NLL, numpy's softplus and exp for the variance heads,
the gradients of the MSE worked out by hand, the closed-form optimal variance scale of one Gaussian
(s = mean r²/σ²) and scipy.optimize.minimize_scalar on a scipy mixture NLL for several members.
"""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp
from scipy.stats import norm

from ensemble_lab.metrics import regression_losses as losses


def batch(num_members: int, num_rows: int, num_targets: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random member means, variances (M, B, D) and targets (B, D), float64."""
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randn(num_rows, num_targets, generator=gen, dtype=torch.float64)
    mean = targets + 0.5 * torch.randn(num_members, num_rows, num_targets, generator=gen, dtype=torch.float64)
    var = torch.rand(num_members, num_rows, num_targets, generator=gen, dtype=torch.float64) + 0.2
    return mean, var, targets


def test_split_outputs_softplus_and_log_variance():
    outputs = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    raw = outputs.numpy()
    mean, var = losses.split_outputs(outputs, "softplus", min_variance=1e-3)
    np.testing.assert_allclose(mean.numpy(), raw[..., :3])
    np.testing.assert_allclose(var.numpy(), np.log1p(np.exp(raw[..., 3:])) + 1e-3, rtol=1e-12)
    _, log_var = losses.split_outputs(outputs, "log", min_variance=1e-3)
    np.testing.assert_allclose(log_var.numpy(), np.exp(raw[..., 3:]) + 1e-3, rtol=1e-12)
    # the floor holds however negative the variance parameter
    assert float(losses.split_outputs(torch.full((1, 1, 2), -1e4, dtype=torch.float64), "softplus")[1].min()) >= losses.MIN_VARIANCE
    assert torch.isfinite(losses.split_outputs(torch.full((1, 1, 2), 1e4), "log")[1]).all()
    with pytest.raises(ValueError, match="even last dimension"):
        losses.split_outputs(torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="parameterisation"):
        losses.split_outputs(outputs, "sigmoid")


def test_gaussian_nll_matches_scipy_per_member():
    mean, var, targets = batch(3, 20, 2, seed=1)
    expected = -norm.logpdf(targets.numpy(), mean.numpy(), var.sqrt().numpy()).sum(-1).mean(-1)  # (M,)
    np.testing.assert_allclose(losses.gaussian_nll(mean, var, targets).numpy(), expected, rtol=1e-12)
    # member m on its own rows: (M, B, D) targets
    own = targets + torch.arange(3, dtype=torch.float64).view(3, 1, 1)
    expected_own = -norm.logpdf(own.numpy(), mean.numpy(), var.sqrt().numpy()).sum(-1).mean(-1)
    np.testing.assert_allclose(losses.gaussian_nll(mean, var, own).numpy(), expected_own, rtol=1e-12)
    with pytest.raises(ValueError, match="targets must have shape"):
        losses.gaussian_nll(mean, var, targets[:, :1])


def test_beta_nll_with_beta_zero_is_the_nll_and_weights_by_the_variance():
    mean, var, targets = batch(2, 15, 3, seed=2)
    torch.testing.assert_close(losses.beta_nll(mean, var, targets, beta=0.0), losses.gaussian_nll(mean, var, targets))
    per_value = -norm.logpdf(targets.numpy(), mean.numpy(), var.sqrt().numpy())
    expected = (var.numpy() ** 0.5 * per_value).sum(-1).mean(-1)
    np.testing.assert_allclose(losses.beta_nll(mean, var, targets, beta=0.5).numpy(), expected, rtol=1e-12)


def test_beta_nll_with_beta_one_gives_the_means_the_mse_gradient():
    mean, var, targets = batch(2, 10, 1, seed=3)
    mean.requires_grad_(True)
    losses.beta_nll(mean, var, targets, beta=1.0).sum().backward()
    # d/dμ of mean_rows ½ (y − μ)² is (μ − y) / B, whatever the variance
    np.testing.assert_allclose(mean.grad.numpy(), (mean.detach().numpy() - targets.numpy()) / 10, rtol=1e-12)


def test_mse_noise_loss_trains_the_mean_by_mse_and_fits_the_variance_to_the_residuals():
    mean, var, targets = batch(2, 8, 2, seed=4)
    mean.requires_grad_(True)
    var.requires_grad_(True)
    losses.mse_noise_loss(mean, var, targets).sum().backward()
    residual = targets.numpy() - mean.detach().numpy()
    np.testing.assert_allclose(mean.grad.numpy(), -2 * residual / 8, rtol=1e-12)  # d/dμ of mean_rows (y − μ)²
    # the variance's gradient vanishes where σ² equals the squared residual
    fitted = torch.tensor(residual**2, requires_grad=True)
    losses.mse_noise_loss(mean.detach(), fitted, targets).sum().backward()
    np.testing.assert_allclose(fitted.grad.numpy(), 0.0, atol=1e-12)


def test_member_losses_dispatch_and_reject_unknown_names():
    mean, var, targets = batch(2, 6, 1, seed=5)
    torch.testing.assert_close(losses.member_losses("beta_nll", mean, var, targets, 0.3), losses.beta_nll(mean, var, targets, 0.3))
    torch.testing.assert_close(losses.member_losses("mse", mean, var, targets), losses.mse_noise_loss(mean, var, targets))
    with pytest.raises(ValueError, match="unknown regression loss"):
        losses.member_losses("huber", mean, var, targets)


def test_variance_scaling_of_one_gaussian_is_the_closed_form():
    mean, var, targets = batch(1, 200, 2, seed=6)
    expected = float(((targets - mean[0]) ** 2 / var[0]).mean())  # argmin_s of ½ Σ (log s σ² + r² / (s σ²))
    # a search by comparing NLL values finds the flat minimum to about √(float64 eps) ≈ 1e-8
    assert float(losses.fit_variance_scale(mean, var, targets)) == pytest.approx(expected, rel=1e-6)


def test_variance_scaling_recovers_a_known_factor():
    gen = torch.Generator().manual_seed(7)
    num_members, num_rows = 3, 5000
    centre = torch.randn(num_rows, 1, generator=gen, dtype=torch.float64)
    mean = centre.expand(num_members, -1, -1).clone()
    var = (torch.rand(num_rows, 1, generator=gen, dtype=torch.float64) + 0.5).expand(num_members, -1, -1).clone()
    targets = centre + (4 * var[0]).sqrt() * torch.randn(num_rows, 1, generator=gen, dtype=torch.float64)  # 4× the variance
    assert float(losses.fit_variance_scale(mean, var, targets)) == pytest.approx(4.0, rel=0.1)  # the estimate's sd: 4 · √(2 / N) = 2%


def test_variance_scaling_of_a_mixture_matches_scipy_minimisation():
    mean, var, targets = batch(4, 100, 2, seed=8)
    mu, sd, y = mean.numpy(), var.sqrt().numpy(), targets.numpy()

    def nll(log_s: float) -> float:
        member = norm.logpdf(y, mu, sd * math.exp(log_s / 2)).sum(-1)  # (M, N)
        return float(-(logsumexp(member, axis=0) - math.log(4)).mean())

    best = minimize_scalar(nll, bounds=(-5, 5), method="bounded", options={"xatol": 1e-10})
    assert float(losses.fit_variance_scale(mean, var, targets)) == pytest.approx(math.exp(best.x), rel=1e-6)
    np.testing.assert_allclose(losses.scale_variance(var, 2.5).numpy(), var.numpy() * 2.5)


def test_variance_scaling_runs_under_inference_mode():
    mean, var, targets = batch(2, 50, 1, seed=9)
    with torch.inference_mode():
        scale = losses.fit_variance_scale(mean, var, targets)
    assert scale.dtype == torch.float64 and scale.dim() == 0 and float(scale) > 0
