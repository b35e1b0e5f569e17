"""Metrics of a regression ensemble: the members' Gaussians, their equal-weight mixture, and its scores.

Definitions: docs/regression.md. Conventions for every function:

- ``mean`` and ``var`` are float tensors (M, N, D): member m predicts, for row n, an independent Gaussian
  N(mean[m, n, d], var[m, n, d]) per target d (variances > 0). ``targets`` is (N, D). Everything is in
  the units the metric is reported in: convert standardised outputs first (:func:`to_original_units`).
- The ensemble's predictive is the equal-weight mixture of the members' Gaussians, p(y) = (1/M) Σ_m
  Π_d N(y_d; μ_md, σ²_md). Its NLL is exact (log-sum-exp over members, never a moment-matched Gaussian)
  and joint over the D targets of a row: the members' diagonal Gaussians are mixed as whole vectors, so for
  D > 1 it is not the sum of the D marginal NLLs (for D = 1 the two agree).
- Every other metric is univariate: it is computed per target on the marginal mixture (1/M) Σ_m N(μ_md,
  σ²_md) and averaged over rows and targets alike (rmse: the root of the mean squared error over both).
- Reductions run in float64 (float32 on MPS). NaN or inf inputs raise NonFiniteOutputError.
- Functions ending in ``_metrics`` return Python floats; the others return tensors.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ensemble_lab.metrics.classification import check_finite, member_mean, reduce_dtype

#: central-interval levels of the ``coverage_<p>`` / ``width_<p>`` metrics (p = round(100 · level))
COVERAGE_LEVELS = (0.5, 0.9, 0.95)
#: the levels p_j = j / 100, j = 1..99, at which the quantile calibration error compares frequencies
QCE_LEVELS = tuple(j / 100 for j in range(1, 100))
#: bisection of the mixture quantiles stops once every bracket is narrower than this fraction of the
#: smallest member standard deviation of its row (about 35 halvings of the members' spread) ...
QUANTILE_TOLERANCE = 1e-9
#: ... or after this many halvings, which shrink any bracket below a float64 ulp of its ends
BISECTION_STEPS = 64
# Upper bound on the elements of one (M, M, rows, D) or (M, levels, rows, D) tensor (2**24 float64 = 128 MiB);
# larger inputs are processed in row chunks.
_CHUNK_ELEMENTS = 2**24
_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class MetricFact:
    """What a report needs to know about one regression metric (to become a row of the metric registry).

    Args:
        name: the key in results.json.
        direction: "lower" or "higher" (better), "nominal" (closer to ``nominal`` is better) or "none" (not ranked).
        display: the column header in tables.
        nominal: the target value of a "nominal" metric.
    """

    name: str
    direction: str
    display: str
    nominal: float | None = None


#: the facts of every key :func:`regression_metrics` returns, in its order
METRIC_FACTS = (
    MetricFact("rmse", "lower", "RMSE"),
    MetricFact("mae", "lower", "MAE"),
    MetricFact("nll", "lower", "NLL"),
    MetricFact("crps", "lower", "CRPS"),
    *(MetricFact(f"coverage_{round(100 * q)}", "nominal", f"Coverage@{round(100 * q)}", q) for q in COVERAGE_LEVELS),
    *(MetricFact(f"width_{round(100 * q)}", "lower", f"Width@{round(100 * q)}") for q in COVERAGE_LEVELS),
    MetricFact("qce", "lower", "QCE"),
    MetricFact("aleatoric", "none", "Aleatoric var."),
    MetricFact("epistemic", "none", "Epistemic var."),
    MetricFact("epistemic_share", "none", "Epistemic share"),
    MetricFact("error_correlation", "none", "Error corr."),
    MetricFact("epistemic_std", "none", "Epistemic std"),
)
#: the per-row uncertainty scores of :func:`ood_scores` (``auroc_<score>`` etc. in results)
OOD_SCORES = ("variance", "epistemic")


def check_gaussians(mean: Tensor, var: Tensor, targets: Tensor | None = None) -> None:
    """Raise unless ``mean`` and ``var`` are finite (M, N, D) with M, N, D >= 1, var > 0, and targets (N, D)."""
    if mean.dim() != 3 or mean.shape != var.shape or 0 in mean.shape:
        raise ValueError(
            f"mean and var must both have shape (M, N, D) (members, rows, targets) with no empty dimension, "
            f"got {tuple(mean.shape)} and {tuple(var.shape)}"
        )
    check_finite(mean, "predicted means")
    check_finite(var, "predicted variances")
    if bool((var <= 0).any()):
        raise ValueError("predicted variances must be > 0: floor them (a softplus head plus a small minimum)")
    if targets is not None:
        if targets.shape != mean.shape[1:]:
            raise ValueError(f"targets must have shape (N, D) = {tuple(mean.shape[1:])}, got {tuple(targets.shape)}")
        check_finite(targets, "targets")


def to_original_units(mean: Tensor, var: Tensor, target_mean: Tensor, target_std: Tensor) -> tuple[Tensor, Tensor]:
    """Undo the standardisation of the targets: (mean · std + target mean, var · std²).

    Args:
        mean: predicted means in standardised units, (..., D).
        var: predicted variances in standardised units, (..., D).
        target_mean: the training targets' mean per target, (D,).
        target_std: the training targets' standard deviation per target, (D,), > 0.
    """
    scale = target_std.to(mean)
    return mean * scale + target_mean.to(mean), var * scale**2


def _prepared(mean: Tensor, var: Tensor, targets: Tensor | None = None) -> tuple[Tensor, ...]:
    """Check the inputs and cast them to the reduction dtype."""
    check_gaussians(mean, var, targets)
    dtype = reduce_dtype(mean)
    tensors = (mean, var) if targets is None else (mean, var, targets)
    return tuple(t.to(dtype) for t in tensors)


def _row_chunks(num_rows: int, per_row: int) -> list[slice]:
    """Row slices holding at most ``_CHUNK_ELEMENTS`` elements of ``per_row`` each."""
    step = max(1, _CHUNK_ELEMENTS // max(1, per_row))
    return [slice(start, start + step) for start in range(0, num_rows, step)]


def mixture_moments(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (N, D) and variance (N, D) of the equal-weight mixture: mean_m μ_m and mean_m σ²_m + Var_m μ_m."""
    mean, var = _prepared(mean, var)
    parts = uncertainty_decomposition(mean, var)
    return member_mean(mean), parts["aleatoric"] + parts["epistemic"]


def uncertainty_decomposition(mean: Tensor, var: Tensor) -> dict[str, Tensor]:
    """Aleatoric and epistemic variance per row and target, each (N, D); their sum is the mixture's variance.

    aleatoric = mean_m σ²_m; epistemic = (1/M) Σ_m (μ_m − μ̄)², the population variance of the member means
    (exactly 0 for identical members).
    """
    mean, var = _prepared(mean, var)
    centred = mean - member_mean(mean)  # (M, N, D): member_mean is exact for identical members, so epistemic is 0
    return {"aleatoric": var.mean(0), "epistemic": (centred**2).mean(0)}


def mixture_log_likelihood(mean: Tensor, var: Tensor, targets: Tensor) -> Tensor:
    """log p(y_n) of each row under the mixture, (N,): log mean_m Π_d N(y_nd; μ_mnd, σ²_mnd), by log-sum-exp."""
    mean, var, targets = _prepared(mean, var, targets)
    member = -0.5 * (_LOG_2PI + var.log() + (targets - mean) ** 2 / var).sum(-1)  # (M, N): joint over D
    return torch.logsumexp(member, dim=0) - math.log(mean.shape[0])


def mixture_cdf(mean: Tensor, var: Tensor, x: Tensor) -> Tensor:
    """F(x) = mean_m Φ((x − μ_m) / σ_m) per target; mean, var (M, N, D), x (..., N, D) -> (..., N, D)."""
    extra = x.dim() - 2
    shape = (mean.shape[0],) + (1,) * extra + tuple(mean.shape[1:])  # (M, 1.., N, D)
    z = (x.unsqueeze(0) - mean.view(shape)) / var.sqrt().view(shape)  # (M, ..., N, D)
    return torch.special.ndtr(z).mean(0)


def mixture_quantiles(mean: Tensor, var: Tensor, levels: tuple[float, ...]) -> Tensor:
    """The mixture's quantiles at ``levels`` (each in (0, 1)) per row and target, (L, N, D), by bisection on its CDF.

    The q-quantile lies between the smallest and the largest member q-quantile μ_m + σ_m Φ⁻¹(q) (the mixture CDF
    is the mean of the member CDFs), so that is the starting bracket; it is halved, for all levels, rows and
    targets at once, until every bracket is narrower than ``QUANTILE_TOLERANCE`` times the row's smallest σ_m
    (at most ``BISECTION_STEPS`` times). For M = 1 the bracket is a point: μ + σ Φ⁻¹(q).
    """
    mean, var = _prepared(mean, var)
    if not all(0 < q < 1 for q in levels):
        raise ValueError(f"quantile levels must lie in (0, 1), got {levels}")
    q = torch.tensor(levels, dtype=mean.dtype, device=mean.device).view(-1, 1, 1)  # (L, 1, 1)
    num_members, num_rows, num_targets = mean.shape
    result = torch.empty(len(levels), num_rows, num_targets, dtype=mean.dtype, device=mean.device)
    for rows in _row_chunks(num_rows, num_members * len(levels) * num_targets):
        mu, sd = mean[:, rows].unsqueeze(1), var[:, rows].sqrt().unsqueeze(1)  # (M, 1, n, D)
        member_q = mu + sd * torch.special.ndtri(q)  # (M, L, n, D)
        low, high = member_q.min(0).values, member_q.max(0).values  # (L, n, D)
        tolerance = QUANTILE_TOLERANCE * sd.min(0).values  # (1, n, D)
        inverse_sd = sd.reciprocal()  # (M, 1, n, D)
        for _ in range(BISECTION_STEPS):
            if bool((high - low <= tolerance).all()):
                break
            middle = 0.5 * (low + high)  # (L, n, D)
            below = torch.special.ndtr((middle - mu) * inverse_sd).mean(0) < q  # (L, n, D): the quantile lies above
            low, high = torch.where(below, middle, low), torch.where(below, high, middle)
        result[:, rows] = 0.5 * (low + high)
    return result


def _folded_mean(loc: Tensor, scale: Tensor) -> Tensor:
    """E|X| for X ~ N(loc, scale²): scale · (2φ(loc/scale) + (loc/scale)(2Φ(loc/scale) − 1))."""
    z = loc / scale
    density = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return scale * (2 * density + z * (2 * torch.special.ndtr(z) - 1))


def crps(mean: Tensor, var: Tensor, targets: Tensor) -> Tensor:
    """CRPS of the mixture per row and target, (N, D), in closed form: E|X − y| − ½ E|X − X'|.

    With X, X' independent draws of the mixture: E|X − y| = mean_m A(μ_m − y, σ²_m) and E|X − X'| =
    mean_{m,k} A(μ_m − μ_k, σ²_m + σ²_k), A(μ, s²) = E|N(μ, s²)| (a folded normal's mean). The M × M pairs
    are one tensor per chunk of rows.
    """
    mean, var, targets = _prepared(mean, var, targets)
    num_members, num_rows, num_targets = mean.shape
    result = torch.empty(num_rows, num_targets, dtype=mean.dtype, device=mean.device)
    for rows in _row_chunks(num_rows, num_members * num_members * num_targets):
        mu, v = mean[:, rows], var[:, rows]  # (M, n, D)
        to_target = _folded_mean(mu - targets[rows], v.sqrt()).mean(0)  # (n, D)
        pair_loc = mu.unsqueeze(1) - mu.unsqueeze(0)  # (M, M, n, D)
        pair_scale = (v.unsqueeze(1) + v.unsqueeze(0)).sqrt()  # (M, M, n, D)
        result[rows] = to_target - 0.5 * _folded_mean(pair_loc, pair_scale).mean((0, 1))
    return result


def interval_metrics(mean: Tensor, var: Tensor, targets: Tensor, levels: tuple[float, ...] = COVERAGE_LEVELS) -> dict[str, float]:
    """Coverage and mean width of the mixture's central intervals [Q((1 − q)/2), Q((1 + q)/2)] at each level q.

    Returns:
        ``coverage_<p>``: the fraction of (row, target) values inside the interval, ends included, and
        ``width_<p>``: the mean of Q((1 + q)/2) − Q((1 − q)/2), for p = round(100 · q).
    """
    mean, var, targets = _prepared(mean, var, targets)
    ends = tuple(e for q in levels for e in ((1 - q) / 2, (1 + q) / 2))
    quantiles = mixture_quantiles(mean, var, ends)  # (2L, N, D): lower and upper end of each level
    lower, upper = quantiles[0::2], quantiles[1::2]  # (L, N, D)
    covered = ((lower <= targets) & (targets <= upper)).to(mean.dtype).mean((1, 2))  # (L,)
    width = (upper - lower).mean((1, 2))  # (L,)
    coverage = {f"coverage_{round(100 * q)}": float(covered[i]) for i, q in enumerate(levels)}
    return {**coverage, **{f"width_{round(100 * q)}": float(width[i]) for i, q in enumerate(levels)}}


def pit_values(mean: Tensor, var: Tensor, targets: Tensor) -> Tensor:
    """Probability integral transform F(y) of each target under its mixture, (N, D), in [0, 1]."""
    mean, var, targets = _prepared(mean, var, targets)
    chunks = _row_chunks(targets.shape[0], mean.shape[0] * mean.shape[2])
    return torch.cat([mixture_cdf(mean[:, rows], var[:, rows], targets[rows]) for rows in chunks])  # (N, D)


def coverage_curve(pit: Tensor, levels: Tensor) -> Tensor:
    """Empirical coverage of the mixture's central intervals at each nominal level, (L,), from PIT values.

    The central interval of level q, [Q((1 − q)/2), Q((1 + q)/2)], holds y exactly when (1 − q)/2 ≤ F(y) ≤ (1 + q)/2
    (F is continuous and increasing), so its coverage is the share of |PIT − ½| ≤ q/2, with no quantile search.

    Args:
        pit: PIT values F(y) (any shape), from :func:`pit_values`.
        levels: nominal levels q in [0, 1], (L,).
    """
    distance = (pit.reshape(1, -1).to(reduce_dtype(pit)) - 0.5).abs()  # (1, N·D)
    return (distance <= levels.to(distance).unsqueeze(1) / 2).to(distance.dtype).mean(1)  # (L,)


def quantile_calibration_error(pit: Tensor, levels: tuple[float, ...] = QCE_LEVELS) -> float:
    """Quantile calibration error (Kuleshov et al. 2018): mean_j (p_j − freq(PIT ≤ p_j))² over the levels p_j.

    A calibrated predictive has uniform PIT values, so the fraction at or below p_j is p_j at every level.

    Args:
        pit: PIT values (any shape), from :func:`pit_values`.
        levels: the levels p_j; the default is j/100, j = 1..99.
    """
    p = torch.tensor(levels, dtype=reduce_dtype(pit), device=pit.device)  # (J,)
    observed = (pit.reshape(1, -1) <= p.unsqueeze(1)).to(p.dtype).mean(1)  # (J,)
    return float(((p - observed) ** 2).mean())


def ood_scores(mean: Tensor, var: Tensor) -> dict[str, Tensor]:
    """Per-row uncertainty scores (N,), higher means more uncertain, each a mean over the targets.

    ``variance``: the mixture's total variance; ``epistemic``: the variance of the member means.
    """
    parts = uncertainty_decomposition(mean, var)
    return {"variance": (parts["aleatoric"] + parts["epistemic"]).mean(-1), "epistemic": parts["epistemic"].mean(-1)}


def error_correlation(mean: Tensor, targets: Tensor) -> float:
    """Mean over member pairs i < j and targets of the Pearson correlation of the errors μ_i − y and μ_j − y over rows.

    1.0 for a single model (its errors are perfectly correlated with themselves); a member whose error is
    constant over the rows counts as uncorrelated (0) with every other.
    """
    if mean.dim() != 3 or targets.shape != mean.shape[1:]:
        raise ValueError(f"mean must be (M, N, D) and targets (N, D), got {tuple(mean.shape)} and {tuple(targets.shape)}")
    check_finite(mean, "predicted means")
    errors = mean.to(reduce_dtype(mean)) - targets.to(reduce_dtype(mean))  # (M, N, D)
    num_members = errors.shape[0]
    if num_members == 1:
        return 1.0
    centred = errors - errors.mean(1, keepdim=True)  # (M, N, D)
    covariance = torch.einsum("ind,jnd->ijd", centred, centred)  # (M, M, D), not divided by N (it cancels)
    std = covariance.diagonal(dim1=0, dim2=1).T.sqrt()  # (M, D)
    # a zero std has zero covariances too: the floor makes its correlations 0 / tiny = 0 instead of 0 / 0
    correlation = covariance / (std.unsqueeze(1) * std.unsqueeze(0)).clamp_min(torch.finfo(errors.dtype).tiny)  # (M, M, D)
    first, second = torch.triu_indices(num_members, num_members, offset=1, device=errors.device)  # (P,) pairs
    return float(correlation[first, second].mean())


def regression_metrics(mean: Tensor, var: Tensor, targets: Tensor) -> dict[str, float]:
    """Accuracy, scores, calibration, uncertainty and diversity of a regression ensemble on one set.

    Args:
        mean: member means (M, N, D), in original units.
        var: member variances (M, N, D), > 0, in original units.
        targets: targets (N, D), in original units.

    Returns:
        The keys of ``METRIC_FACTS``: ``rmse`` and ``mae`` of the mixture mean (over rows and targets); ``nll``
        the mean over rows of −log p(y_n) (joint over the targets, see the module docstring); ``crps``;
        ``coverage_50|90|95`` and ``width_50|90|95``; ``qce``; ``aleatoric`` and ``epistemic`` (means over rows
        and targets) and ``epistemic_share`` = epistemic / (aleatoric + epistemic); ``error_correlation``;
        ``epistemic_std``, the mean over rows and targets of the standard deviation of the member means.
    """
    mean, var, targets = _prepared(mean, var, targets)
    error = member_mean(mean) - targets  # (N, D)
    parts = uncertainty_decomposition(mean, var)
    aleatoric, epistemic = float(parts["aleatoric"].mean()), float(parts["epistemic"].mean())
    return {
        "rmse": float((error**2).mean().sqrt()),
        "mae": float(error.abs().mean()),
        "nll": float(-mixture_log_likelihood(mean, var, targets).mean()),
        "crps": float(crps(mean, var, targets).mean()),
        **interval_metrics(mean, var, targets),
        "qce": quantile_calibration_error(pit_values(mean, var, targets)),
        "aleatoric": aleatoric,
        "epistemic": epistemic,
        "epistemic_share": epistemic / (aleatoric + epistemic),
        "error_correlation": error_correlation(mean, targets),
        "epistemic_std": float(parts["epistemic"].sqrt().mean()),
    }
