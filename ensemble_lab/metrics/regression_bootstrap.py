"""The report's paired bootstrap of a regression row's metrics, from saved member means and variances.

As for classification (metrics/significance.py), nothing is recomputed per resample: every recomputable regression
metric is a function of count-weighted means over the rows of per-row terms computed once (:func:`row_terms`), so
a resample's value equals ``regression_metrics`` on the resampled set up to round-off. The terms of row n, each
a mean over its D targets: the squared and the absolute error of the mixture mean, the mixture's −log p(y_n)
(joint over the targets), its CRPS, whether each central interval (50 / 90 / 95 %) holds the target and its
width, whether the PIT is at or below each QCE level, the aleatoric and epistemic variance and the epistemic
std. Then rmse = √(mean squared error), qce = mean_j (p_j − share of PIT ≤ p_j)² and epistemic_share =
epistemic / (aleatoric + epistemic) of the resampled means. OOD detection by the total and the epistemic
variance resamples the gap set and the id set, as classification's. ``error_correlation`` (a correlation over
rows of every member pair's errors) is not recomputed.
"""

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ensemble_lab.metrics import regression as reg
from ensemble_lab.metrics.ood import ood_detection_weighted
from ensemble_lab.metrics.registry import OOD_FAMILIES, REGRESSION_OOD_SCORES, lookup, ood_name
from ensemble_lab.metrics.significance import resample_indices

#: the per-row terms (columns of :func:`row_terms`) before the coverage, width and PIT ones
_SIMPLE = ("squared_error", "abs_error", "nll", "crps", "aleatoric", "epistemic", "epistemic_std")
#: the interval levels and the names of their coverage and width columns
_LEVELS = reg.COVERAGE_LEVELS
_INTERVALS = tuple(f"{kind}_{round(100 * q)}" for kind in ("coverage", "width") for q in _LEVELS)
#: bootstrap counts held at once (resamples × rows), about 128 MB of float64
_COUNTS_PER_CHUNK = 2**24


def recomputable(metric: str) -> bool:
    """True for the regression metrics :func:`bootstrap_regression` recomputes (rmse, mae, nll, crps, coverage and width,
    qce, the decomposition, epistemic std; OOD detection by ``variance`` or ``epistemic``)."""
    row = lookup(metric)
    return row.task in ("regression", "any") and row.recomputable


def row_terms(mean: Tensor, var: Tensor, targets: Tensor) -> Tensor:
    """(N, K) float64: each row's terms (the module docstring), each a mean over its D targets.

    Args:
        mean: member means (M, N, D), original units.
        var: member variances (M, N, D).
        targets: targets (N, D).
    """
    mean, var, targets = (t.double() for t in (mean, var, targets))
    centre = mean.mean(0)  # (N, D)
    parts = reg.uncertainty_decomposition(mean, var)  # (N, D) each
    ends = tuple(e for q in _LEVELS for e in ((1 - q) / 2, (1 + q) / 2))
    quantiles = reg.mixture_quantiles(mean, var, ends)  # (2L, N, D)
    lower, upper = quantiles[0::2], quantiles[1::2]  # (L, N, D)
    covered = ((lower <= targets) & (targets <= upper)).double().mean(-1)  # (L, N)
    width = (upper - lower).mean(-1)  # (L, N)
    pit = reg.pit_values(mean, var, targets)  # (N, D)
    levels = torch.tensor(reg.QCE_LEVELS, dtype=torch.float64)  # (J,)
    below = (pit.unsqueeze(-1) <= levels).double().mean(1)  # (N, J)
    simple = [
        ((centre - targets) ** 2).mean(-1),
        (centre - targets).abs().mean(-1),
        -reg.mixture_log_likelihood(mean, var, targets),
        reg.crps(mean, var, targets).mean(-1),
        parts["aleatoric"].mean(-1),
        parts["epistemic"].mean(-1),
        parts["epistemic"].sqrt().mean(-1),
    ]  # each (N,)
    return torch.cat([torch.stack(simple, dim=1), covered.T, width.T, below], dim=1)  # (N, 7 + 2L + J)


def metrics_of_means(means: Tensor) -> dict[str, Tensor]:
    """Every recomputable (non-OOD) regression metric from count-weighted means of :func:`row_terms`' columns.

    Args:
        means: (R, K), one row per weighting (a resample, or all rows once).

    Returns:
        metric -> (R,).
    """
    simple = {name: means[:, k] for k, name in enumerate(_SIMPLE)}
    intervals = {name: means[:, len(_SIMPLE) + k] for k, name in enumerate(_INTERVALS)}
    below = means[:, len(_SIMPLE) + len(_INTERVALS) :]  # (R, J)
    levels = torch.tensor(reg.QCE_LEVELS, dtype=means.dtype)  # (J,)
    return {
        "rmse": simple["squared_error"].sqrt(),
        "mae": simple["abs_error"],
        "nll": simple["nll"],
        "crps": simple["crps"],
        **intervals,
        "qce": ((levels - below) ** 2).mean(1),
        "aleatoric": simple["aleatoric"],
        "epistemic": simple["epistemic"],
        "epistemic_share": simple["epistemic"] / (simple["aleatoric"] + simple["epistemic"]),
        "epistemic_std": simple["epistemic_std"],
    }


def _counts(samples: Sequence[np.ndarray], size: int) -> Tensor:
    """(r, size) float64: how often each row was drawn in each resample."""
    return torch.from_numpy(np.stack([np.bincount(s, minlength=size) for s in samples]).astype(np.float64))


def bootstrap_regression(
    stored: Sequence[tuple[Tensor, Tensor]],
    targets: Tensor,
    metrics: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
    stream: str = "",
    id_stored: Sequence[tuple[Tensor, Tensor]] | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """A regression row's metrics on the whole set and on every bootstrap resample of its rows, means over its runs.

    Args:
        stored: (member means (M, N, D), member variances (M, N, D)) per run of the row, all on the same N rows.
        targets: the rows' targets (N, D), shared by the runs.
        metrics: names :func:`recomputable` accepts.
        resamples: number of resamples.
        seed: seed of the resampling; the same seed and stream give every row the same resamples
            (metrics/significance.py ``resample_indices``).
        stream: names the set, so each set has its own generator.
        id_stored: per run, the id set's (means, variances), for OOD detection (``auroc_variance``, ...).

    Returns:
        (metric -> value on the whole set, metric -> (resamples,) values); NaN where undefined (the epistemic
        score's detection for a single model).
    """
    unknown = [m for m in metrics if not recomputable(m)]
    if unknown:
        raise ValueError(f"cannot recompute {', '.join(unknown)} from saved means and variances")
    detection = [m for m in metrics if lookup(m).needs_ood]
    if detection and (id_stored is None or len(id_stored) != len(stored)):
        raise ValueError("OOD-detection metrics need the id set's means and variances, one pair per run (id_stored)")
    size = targets.shape[0]
    columns = [row_terms(mean, var, targets) for mean, var in stored]  # per run (N, K)
    scores = [(reg.ood_scores(*i), reg.ood_scores(*s), s[0].shape[0] == 1) for i, s in zip(id_stored or [], stored)] if detection else []
    id_size = id_stored[0][0].shape[1] if detection and id_stored else 0

    def evaluate(counts: Tensor, id_counts: Tensor | None) -> dict[str, Tensor]:
        """metric -> (r,) mean over runs, for r weightings of the rows (and of the id rows)."""
        per_run = [metrics_of_means(counts @ c / counts.sum(1, keepdim=True)) for c in columns]  # (r, K) means
        for values, (id_scores, ood_scores, single) in zip(per_run, scores):
            for score in REGRESSION_OOD_SCORES:
                keys = [ood_name(family, score) for family in OOD_FAMILIES]
                if score == "epistemic" and single:  # a single model's epistemic variance is 0 on every row
                    values.update({k: torch.full((counts.shape[0],), math.nan, dtype=torch.float64) for k in keys})
                elif any(k in metrics for k in keys) and id_counts is not None:
                    found = ood_detection_weighted(id_scores[score].double(), ood_scores[score].double(), id_counts, counts)
                    values.update({ood_name(family, score): found[family] for family in OOD_FAMILIES})
        return {m: torch.stack([v[m].double() for v in per_run]).mean(0) for m in metrics}

    full = evaluate(torch.ones(1, size, dtype=torch.float64), torch.ones(1, id_size, dtype=torch.float64) if detection else None)
    point = {m: float(v[0]) for m, v in full.items()}
    samples = resample_indices(size, resamples, seed, stream)
    id_samples = resample_indices(id_size, resamples, seed, stream + "/id") if detection else None
    result = {m: np.empty(resamples) for m in metrics}
    chunk = max(1, _COUNTS_PER_CHUNK // (size + id_size))  # resamples at a time
    for start in range(0, resamples, chunk):
        rows = slice(start, min(start + chunk, resamples))
        counts = _counts([next(samples) for _ in range(rows.stop - rows.start)], size)  # (r, N)
        id_counts = None if id_samples is None else _counts([next(id_samples) for _ in range(rows.stop - rows.start)], id_size)
        for m, values in evaluate(counts, id_counts).items():
            result[m][rows] = values.numpy()
    return point, result
