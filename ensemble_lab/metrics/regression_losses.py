"""Training a regression ensemble: raw outputs to Gaussians, the members' losses, and variance scaling.

Under the one contract a regression method outputs (M, B, 2·D) per batch: the first D values of a row are
the means, the last D the variance parameters, turned into variances by :func:`split_outputs`. The losses
return one value per member, (M,): the mean over rows of a per-row loss summed over the D targets; the
members' losses are then averaged (or summed) by the caller. Targets are (B, D) (every member trains on the
same rows) or (M, B, D) (member m on its own rows), in the standardised units the network predicts.

Variance scaling is the regression counterpart of temperature scaling: one scalar s > 0 multiplies every
member's variance; s minimises the mixture NLL on the validation split. It moves neither a mean nor the
rmse, and being a scale it is the same number in standardised and in original units.
"""

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from ensemble_lab.metrics.classification import reduce_dtype
from ensemble_lab.metrics.regression import check_gaussians

#: how the variance parameter becomes a variance: softplus(v) + floor, or exp(v) + floor (v is a log-variance)
VARIANCE_PARAMETERISATIONS = ("softplus", "log")
#: the member losses :func:`member_losses` knows
REGRESSION_LOSSES = ("nll", "beta_nll", "mse")
#: the default floor added to every predicted variance, in standardised units (targets have variance 1)
MIN_VARIANCE = 1e-6
#: a log-variance is clamped here before exp, so that one extreme output cannot overflow to inf
MAX_LOG_VARIANCE = 30.0
#: the search range of variance scaling: s in [1 / VARIANCE_SCALE_RANGE, VARIANCE_SCALE_RANGE]
VARIANCE_SCALE_RANGE = 1e4
#: the number of grid points of log s that variance scaling evaluates before its golden-section search
VARIANCE_SCALE_GRID = 41
# Upper bound on the elements of one (grid points, M, N) tensor of variance scaling (2**24 float64 = 128 MiB).
_CHUNK_ELEMENTS = 2**24
_LOG_2PI = math.log(2 * math.pi)


def split_outputs(outputs: Tensor, parameterisation: str = "softplus", min_variance: float = MIN_VARIANCE) -> tuple[Tensor, Tensor]:
    """Member outputs (M, B, 2·D) -> means (M, B, D) and variances (M, B, D), variances >= ``min_variance``.

    Args:
        outputs: the raw member outputs; the first D values of a row are means, the last D variance parameters.
        parameterisation: "softplus" (variance = softplus(v) + min_variance) or "log" (v is a log-variance:
            variance = exp(min(v, 30)) + min_variance).
        min_variance: a floor that keeps the NLL finite when the network drives a variance towards 0.
    """
    if outputs.dim() != 3 or outputs.shape[-1] % 2:
        raise ValueError(f"regression outputs must have shape (M, B, 2·D), an even last dimension; got {tuple(outputs.shape)}")
    if parameterisation not in VARIANCE_PARAMETERISATIONS:
        raise ValueError(f"unknown variance parameterisation {parameterisation!r}: use one of {VARIANCE_PARAMETERISATIONS}")
    mean, raw = outputs.chunk(2, dim=-1)  # (M, B, D) each
    variance = F.softplus(raw) if parameterisation == "softplus" else raw.clamp_max(MAX_LOG_VARIANCE).exp()
    return mean, variance + min_variance


def _member_targets(mean: Tensor, targets: Tensor) -> Tensor:
    """Targets (B, D) or (M, B, D) as (M, B, D), checked against ``mean``."""
    if targets.shape not in (mean.shape, mean.shape[1:]):
        raise ValueError(f"targets must have shape (B, D) or (M, B, D) to match means {tuple(mean.shape)}, got {tuple(targets.shape)}")
    return targets.to(mean.dtype).expand_as(mean)


def gaussian_nll(mean: Tensor, var: Tensor, targets: Tensor) -> Tensor:
    """Each member's Gaussian NLL, (M,): mean over rows of Σ_d ½ (log 2π + log σ² + (y − μ)² / σ²).

    Args:
        mean: member means (M, B, D).
        var: member variances (M, B, D), > 0.
        targets: (B, D) or (M, B, D).
    """
    y = _member_targets(mean, targets)
    return (0.5 * (_LOG_2PI + var.log() + (y - mean) ** 2 / var)).sum(-1).mean(-1)


def beta_nll(mean: Tensor, var: Tensor, targets: Tensor, beta: float = 0.5) -> Tensor:
    """β-NLL (Seitzer et al. 2022) per member, (M,): the Gaussian NLL of each value weighted by stop-gradient(σ²)^β.

    The weight keeps the NLL's gradient on a mean from shrinking where the predicted variance is large; β = 0 is
    the NLL, β = 1 gives the means the gradient of the MSE. Summed over targets, averaged over rows.

    Args:
        mean: member means (M, B, D).
        var: member variances (M, B, D), > 0.
        targets: (B, D) or (M, B, D).
        beta: the exponent, in [0, 1].
    """
    y = _member_targets(mean, targets)
    per_value = 0.5 * (_LOG_2PI + var.log() + (y - mean) ** 2 / var)  # (M, B, D)
    return (var.detach() ** beta * per_value).sum(-1).mean(-1)


def mse_noise_loss(mean: Tensor, var: Tensor, targets: Tensor) -> Tensor:
    """MSE for the means with a fitted noise variance, per member, (M,).

    The means are trained by the squared error alone (Σ_d (y − μ)²); the variance head is fitted to the
    squared residuals: its Gaussian NLL ½ (log σ² + r² / σ²) with r = y − μ held fixed (stop-gradient) is
    minimised by σ² = E[r² | x], the noise variance of the mean as trained. A head that ignores its input
    fits a single noise variance per target. Summed over targets, averaged over rows.
    """
    y = _member_targets(mean, targets)
    squared = (y - mean) ** 2  # (M, B, D)
    return (squared + 0.5 * (var.log() + squared.detach() / var)).sum(-1).mean(-1)


def member_losses(name: str, mean: Tensor, var: Tensor, targets: Tensor, beta: float = 0.5) -> Tensor:
    """The member losses (M,) of ``name`` ("nll", "beta_nll" with ``beta``, or "mse": :func:`mse_noise_loss`)."""
    if name == "nll":
        return gaussian_nll(mean, var, targets)
    if name == "beta_nll":
        return beta_nll(mean, var, targets, beta)
    if name == "mse":
        return mse_noise_loss(mean, var, targets)
    raise ValueError(f"unknown regression loss {name!r}: use one of {REGRESSION_LOSSES}")


def _scaled_nll(log_likelihood_parts: tuple[Tensor, Tensor, int], log_scale: Tensor) -> Tensor:
    """Mixture NLL (mean over rows) for each log s in ``log_scale`` (S,) -> (S,), from the parts of :func:`_nll_parts`."""
    offset, squared, num_targets = log_likelihood_parts  # (M, N), (M, N)
    s = log_scale.view(-1, 1, 1)  # (S, 1, 1)
    member = -0.5 * (offset + num_targets * s + squared * torch.exp(-s))  # (S, M, N)
    return -(torch.logsumexp(member, dim=1) - math.log(offset.shape[0])).mean(-1)


def _nll_parts(mean: Tensor, var: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, int]:
    """Σ_d (log 2π + log σ²) and Σ_d (y − μ)² / σ², each (M, N): log N(y; μ, s σ²) = −½ (first + D log s + second / s)."""
    check_gaussians(mean, var, targets)
    dtype = reduce_dtype(mean)
    mean, var, targets = mean.to(dtype), var.to(dtype), targets.to(dtype)
    return (_LOG_2PI + var.log()).sum(-1), ((targets - mean) ** 2 / var).sum(-1), mean.shape[-1]


def fit_variance_scale(mean: Tensor, var: Tensor, targets: Tensor, steps: int = 50) -> Tensor:
    """The scale s > 0 of every member's variance that minimises the mixture NLL on a validation set, float64 ().

    The NLL is evaluated at ``VARIANCE_SCALE_GRID`` values of log s evenly spaced over [−log 10⁴, log 10⁴], and
    the best point is refined by a golden-section search between its two neighbours (so s is found to about
    √(float64 eps) ≈ 1e-8 relative). A result at either end of the range means the best s lies beyond it.
    For M = 1 the optimum has the closed form s = mean(r² / σ²) over rows and targets, with r = y − μ.

    Args:
        mean: validation member means (M, N, D).
        var: validation member variances (M, N, D), > 0.
        targets: validation targets (N, D).
        steps: golden-section iterations (each shrinks the bracket by 0.618).
    """
    with torch.inference_mode(False), torch.no_grad():
        parts = _nll_parts(mean, var, targets)
        bound = math.log(VARIANCE_SCALE_RANGE)
        grid = torch.linspace(-bound, bound, VARIANCE_SCALE_GRID, dtype=parts[0].dtype, device=parts[0].device)  # (S,)
        # a few grid points at a time: each takes an (M, N) tensor
        per_point = max(1, _CHUNK_ELEMENTS // parts[0].numel())
        nll = torch.cat([_scaled_nll(parts, points) for points in grid.split(per_point)])  # (S,)
        best = int(nll.argmin())
        low, high = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, grid.numel() - 1)])
        at = lambda log_s: float(_scaled_nll(parts, torch.tensor([log_s], dtype=grid.dtype, device=grid.device))[0])
        ratio = (math.sqrt(5) - 1) / 2
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        at_left, at_right = at(left), at(right)
        for _ in range(steps):  # golden section: one new NLL per step, the other inner point is kept
            if at_left <= at_right:
                high, right, at_right = right, left, at_left
                left = high - ratio * (high - low)
                at_left = at(left)
            else:
                low, left, at_left = left, right, at_right
                right = low + ratio * (high - low)
                at_right = at(right)
        return torch.tensor(math.exp(0.5 * (low + high)), dtype=torch.float64)


def scale_variance(var: Tensor, scale: Tensor | float) -> Tensor:
    """Member variances (M, N, D) after variance scaling: var · s."""
    return var * torch.as_tensor(scale, dtype=var.dtype, device=var.device)
