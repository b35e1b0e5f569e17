"""Is a method's metric different from a baseline's? Welch's t-test over seeds, or a paired bootstrap over test samples.

Pure functions (no files): ``report`` gathers the per-run values and saved predictions and calls them.

- Both rows have at least two runs: Welch's t-test (unequal variances) on the per-run values, two-sided;
  significant when p < alpha.
- A row has a single run: a paired bootstrap over the test samples. Every resample draws N sample indices
  with replacement (one seeded generator per test set, so the method and the baseline see the same
  resamples), recomputes the metric on each run's member probabilities with the functions of
  ``ensemble_lab.evaluation.metrics``, averages it over the row's runs and takes the difference
  (method − baseline). The (1 − alpha) percentile interval of those differences is the confidence interval;
  significant when it excludes zero. OOD-detection metrics (AUROC, AUPR, FPR95) resample the OOD set and the
  in-distribution set they are measured against, each with its own generator.
"""

import math
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ensemble_lab.evaluation.metrics import ood_metrics, predictive_metrics

#: metric families measured against an in-distribution set (OOD = positive class): ``<family>_<score>``
OOD_FAMILIES = ("auroc", "aupr", "fpr95")
#: the per-set metrics recomputed from member probabilities by ``predictive_metrics``
RECOMPUTABLE = ("acc", "nll", "brier", "ece", "entropy", "expected_entropy", "mi", "disagreement")


@dataclass(frozen=True)
class Comparison:
    """One metric of one row against the baseline's.

    test: "welch", "bootstrap", or None when no test could be made (``reason`` says why);
    difference: row mean − baseline mean; p: Welch's p-value; ci: the bootstrap interval of the difference
    at ``level``; alpha: the level of the test; significant: p < alpha or ci excludes 0 (None without a test).
    """

    test: str | None
    difference: float | None = None
    p: float | None = None
    ci: tuple[float, float] | None = None
    alpha: float | None = None
    level: float | None = None
    resamples: int | None = None
    significant: bool | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, object]:
        """The comparison as report.json writes it (None fields left out)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items() if v is not None}


def is_ood_detection(metric: str) -> bool:
    """True for ``auroc_<score>``, ``aupr_<score>`` and ``fpr95_<score>``: metrics of an OOD set against an id set."""
    return metric.split("_", 1)[0] in OOD_FAMILIES and "_" in metric


def welch(values: Sequence[float], baseline: Sequence[float], alpha: float = 0.05) -> Comparison:
    """Welch's two-sided t-test (scipy.stats.ttest_ind, equal_var=False) of ``values`` against ``baseline``.

    Args:
        values: the row's per-run values (at least two).
        baseline: the baseline's per-run values (at least two).
        alpha: significance level.
    """
    from scipy.stats import ttest_ind  # scipy only when testing

    if len(values) < 2 or len(baseline) < 2:
        raise ValueError(f"Welch's t-test needs at least 2 values per side, got {len(values)} and {len(baseline)}")
    difference = float(np.mean(values) - np.mean(baseline))
    with warnings.catch_warnings():  # nearly equal values: scipy warns of precision loss, and the p-value says it anyway
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(values, baseline, equal_var=False).pvalue)
    if not math.isfinite(p):  # both sides constant and equal: t = 0 / 0 (constant and apart: scipy gives p = 0)
        return Comparison(None, difference, reason="the same value in every run of both rows: Welch's t-test is undefined")
    return Comparison("welch", difference, p=p, alpha=alpha, significant=p < alpha)


def resample_indices(size: int, resamples: int, seed: int, stream: str = "") -> Iterator[np.ndarray]:
    """``resamples`` arrays of ``size`` indices drawn with replacement; the same for the same (size, seed, stream).

    ``stream`` (e.g. the test set's name) gives each set its own generator, so resamples of one set do not
    depend on which other sets were resampled before it.
    """
    generator = np.random.default_rng([seed, zlib.crc32(stream.encode())])
    for _ in range(resamples):
        yield generator.integers(0, size, size)


def metric_values(member_probs: Tensor, targets: Tensor, metrics: Sequence[str], id_member_probs: Tensor | None = None) -> dict[str, float]:
    """The ``metrics`` of one run on one set, recomputed from member probabilities (NaN where undefined).

    Args:
        member_probs: the set's member probabilities (M, N, C).
        targets: its classes (N,).
        metrics: keys of ``predictive_metrics`` (acc, nll, brier, ece, entropy, expected_entropy, mi,
            disagreement) and of ``ood_metrics`` (auroc_msp, ..., fpr95_mi).
        id_member_probs: the in-distribution set's member probabilities (M, N_id, C), needed by OOD-detection metrics.
    """
    values: dict[str, Any] = {}
    if any(not is_ood_detection(m) for m in metrics):
        values.update(predictive_metrics(member_probs, targets))
    if any(is_ood_detection(m) for m in metrics):
        if id_member_probs is None:
            raise ValueError("OOD-detection metrics need the in-distribution set's member probabilities (id_member_probs)")
        values.update(ood_metrics(id_member_probs, member_probs))
    unknown = [m for m in metrics if m not in values]
    if unknown:
        raise ValueError(f"cannot recompute {', '.join(unknown)} from member probabilities")
    return {m: math.nan if (v := values[m]) is None else float(v) for m in metrics}


def bootstrap_replicates(
    member_probs: Sequence[Tensor],
    targets: Tensor,
    metrics: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
    stream: str = "",
    id_member_probs: Sequence[Tensor] | None = None,
) -> dict[str, np.ndarray]:
    """Each metric, averaged over a row's runs, on every bootstrap resample of the test samples.

    Args:
        member_probs: one (M, N, C) tensor per run of the row, all on the same N samples.
        targets: the samples' classes (N,), shared by the runs.
        metrics: metric names (see :func:`metric_values`).
        resamples: number of resamples.
        seed: seed of the resampling; the same seed and stream give the same resamples for every row.
        stream: names the set, so each set has its own generator.
        id_member_probs: per run, the in-distribution set's (M, N_id, C), for OOD-detection metrics.

    Returns:
        metric -> (resamples,) array.
    """
    if id_member_probs is not None and len(id_member_probs) != len(member_probs):
        raise ValueError(f"id_member_probs needs one tensor per run: {len(id_member_probs)} for {len(member_probs)} runs")
    result = {m: np.empty(resamples) for m in metrics}
    samples = resample_indices(targets.shape[0], resamples, seed, stream)
    id_size = id_member_probs[0].shape[1] if id_member_probs else 0
    id_samples = resample_indices(id_size, resamples, seed, stream + "/id") if id_member_probs else None
    for r, index in enumerate(samples):
        chosen = torch.from_numpy(index)
        id_chosen = torch.from_numpy(next(id_samples)) if id_samples is not None else None
        per_run = [
            metric_values(
                p[:, chosen],
                targets[chosen],
                metrics,
                None if id_chosen is None or id_member_probs is None else id_member_probs[k][:, id_chosen],
            )
            for k, p in enumerate(member_probs)
        ]  # runs of one row: a handful, each one call on its (M, N, C) resample
        for m in metrics:
            result[m][r] = float(np.mean([v[m] for v in per_run]))
    return result


def bootstrap(
    point: float, baseline_point: float, replicates: np.ndarray, baseline_replicates: np.ndarray, alpha: float = 0.05
) -> Comparison:
    """The paired bootstrap comparison: the (1 − alpha) percentile interval of the resampled differences.

    Args:
        point: the row's metric on the whole set (mean over its runs).
        baseline_point: the baseline's.
        replicates: the row's metric on each resample, (R,), from :func:`bootstrap_replicates`.
        baseline_replicates: the baseline's on the same resamples, (R,).
        alpha: 1 − the interval's level.
    """
    differences = np.asarray(replicates) - np.asarray(baseline_replicates)  # (R,)
    difference = point - baseline_point
    if not np.isfinite(differences).all() or not math.isfinite(difference):
        return Comparison(None, None, reason="the metric is undefined for one of the rows (e.g. mi scores of a single model)")
    low, high = np.quantile(differences, [alpha / 2, 1 - alpha / 2])
    ci = (float(low), float(high))
    return Comparison("bootstrap", difference, ci=ci, level=1 - alpha, resamples=len(differences), significant=bool(not low <= 0 <= high))
