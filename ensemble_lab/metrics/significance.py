"""Is a method's metric different from a baseline's? Welch's t-test over seeds, or a paired bootstrap over test samples.

Pure functions (no files): ``report`` gathers the per-run values and saved predictions and calls them.

- Both rows have at least two runs: Welch's t-test (unequal variances) on the per-run values, two-sided;
  significant when p < alpha.
- A row has a single run: a paired bootstrap over the test samples (it sees the test samples' noise, not the
  seed-to-seed variation the t-test sees, so the report marks it differently). Every resample draws N sample indices
  with replacement (one seeded generator per test set, so the method and the baseline see the same
  resamples), takes the metric on the resampled set of each run's member probabilities (as count-weighted
  sums of the per-sample terms of ``ensemble_lab.metrics.classification``, computed once), averages it over the
  row's runs and takes the difference
  (method − baseline). The (1 − alpha) percentile interval of those differences is the confidence interval;
  the two-sided p-value is twice the smaller share of differences on either side of 0, counted as
  (1 + k) / (1 + R) so that R resamples never claim p = 0; significant when p < alpha (the interval then
  excludes 0, up to one resample). OOD-detection metrics (AUROC, AUPR, FPR95) resample the OOD set and the
  in-distribution set they are measured against, each with its own generator.
- :func:`correct` applies Holm's step-down correction to a family of comparisons (a row's tests on one set).
"""

import math
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ensemble_lab.metrics.classification import (
    SAMPLE_MEANS,
    calibration_terms,
    member_mean,
    predictive_metrics,
    sample_terms,
    uncertainty_scores,
)
from ensemble_lab.metrics.ood import ood_detection_weighted, ood_metrics
from ensemble_lab.metrics.registry import OOD_FAMILIES, OOD_SCORES, lookup, names, ood_name

#: the per-set metrics recomputed from member probabilities by ``predictive_metrics`` (OOD detection aside)
RECOMPUTABLE = names("classification", recomputable=True, needs_ood=False)
#: bootstrap counts held at once (resamples × samples), about 128 MB of float64
_COUNTS_PER_CHUNK = 2**24


@dataclass(frozen=True)
class Comparison:
    """One metric of one row against the baseline's.

    test: "welch", "bootstrap", or None when no test could be made (``reason`` says why);
    difference: row mean − baseline mean; p: the test's two-sided p-value (Welch's, or the bootstrap's);
    ci: the bootstrap interval of the difference at ``level``; alpha: the level of the test;
    correction: "holm" or "none" once :func:`correct` ran; p_adjusted: p after the correction; family: how
    many tests it was corrected over; significant: (adjusted) p < alpha (None without a test).
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
    correction: str | None = None
    p_adjusted: float | None = None
    family: int | None = None

    def as_json(self) -> dict[str, object]:
        """The comparison as report.json writes it (None fields left out)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items() if v is not None}


def is_ood_detection(metric: str) -> bool:
    """True for ``auroc_<score>``, ``aupr_<score>``, ``fpr95_<score>`` and the ``_in`` ones that the bootstrap recomputes: metrics
    of an OOD set against an id set, by msp / entropy / mi (or a regression model's variance / epistemic)."""
    row = lookup(metric)
    return row.needs_ood and row.recomputable  # the logit scores' (maxlogit, energy, ...) are not bootstrapped


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


def _checked_metrics(metrics: Sequence[str]) -> None:
    """Raise a ValueError naming the metrics that cannot be recomputed from member probabilities."""
    unknown = [m for m in metrics if not lookup(m).recomputable or lookup(m).task == "regression"]  # regression: regression_bootstrap.py
    if unknown:
        raise ValueError(f"cannot recompute {', '.join(unknown)} from member probabilities")


def _sample_columns(member_probs: Tensor, targets: Tensor) -> Tensor:
    """(N, K) float64: the per-sample terms of SAMPLE_MEANS, then the ECE's per-bin calibration terms."""
    terms = sample_terms(member_probs, targets)
    calibration = calibration_terms(member_mean(member_probs.double()), targets)  # (N, bins)
    return torch.cat([torch.stack([terms[m].double() for m in SAMPLE_MEANS], dim=1), calibration.double()], dim=1)


def _counts(indices: list[np.ndarray], size: int) -> Tensor:
    """(R, size) float64: how often each sample was drawn in each resample."""
    return torch.from_numpy(np.stack([np.bincount(index, minlength=size) for index in indices]).astype(np.float64))


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

    Nothing is recomputed per resample: a resample is the counts of its drawn samples, and each metric
    is a function of count-weighted sums of per-sample terms computed once (``sample_terms``,
    ``calibration_terms``; OOD detection: ``ood_detection_weighted`` on the scores sorted once), so a
    resample's value equals the metric on the resampled set, up to round-off.

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
    _checked_metrics(metrics)
    if id_member_probs is not None and len(id_member_probs) != len(member_probs):
        raise ValueError(f"id_member_probs needs one tensor per run: {len(id_member_probs)} for {len(member_probs)} runs")
    detection = [m for m in metrics if is_ood_detection(m)]
    if detection and id_member_probs is None:
        raise ValueError("OOD-detection metrics need the in-distribution set's member probabilities (id_member_probs)")
    size, id_probs = targets.shape[0], list(id_member_probs or []) if detection else []
    columns = [_sample_columns(p, targets) for p in member_probs] if len(detection) < len(metrics) else []
    # per run: (ID scores, OOD scores, whether it is a single model), each score (N,) computed once
    scores = [(uncertainty_scores(i), uncertainty_scores(p), p.shape[0] == 1) for i, p in zip(id_probs, member_probs)]
    id_size = id_probs[0].shape[1] if id_probs else 0
    samples = resample_indices(size, resamples, seed, stream)
    id_samples = resample_indices(id_size, resamples, seed, stream + "/id") if detection else None
    result = {m: np.empty(resamples) for m in metrics}
    chunk = max(1, _COUNTS_PER_CHUNK // (size + id_size))  # resamples at a time: (chunk, N) counts
    for start in range(0, resamples, chunk):
        rows = slice(start, min(start + chunk, resamples))
        counts = _counts([next(samples) for _ in range(rows.stop - rows.start)], size)  # (r, N)
        per_run: list[dict[str, Tensor]] = [{} for _ in member_probs]
        for values, cols in zip(per_run, columns):
            sums = counts @ cols / size  # (r, K): count-weighted means of every column
            values.update({m: sums[:, k] for k, m in enumerate(SAMPLE_MEANS)})
            values["ece"] = sums[:, len(SAMPLE_MEANS) :].abs().sum(1)
        if id_samples is not None:
            id_counts = _counts([next(id_samples) for _ in range(rows.stop - rows.start)], id_size)  # (r, N_id)
            for values, (id_scores, ood_scores, single) in zip(per_run, scores):
                for score in OOD_SCORES:
                    keys = [ood_name(family, score) for family in OOD_FAMILIES]
                    if not any(n in metrics for n in keys):
                        continue
                    if score == "mi" and single:  # a single model's mi is 0 everywhere: no detection result
                        values.update({n: torch.full((counts.shape[0],), math.nan, dtype=torch.float64) for n in keys})
                        continue
                    found = ood_detection_weighted(id_scores[score], ood_scores[score], id_counts, counts)
                    values.update({ood_name(family, score): found[family] for family in OOD_FAMILIES})
        for m in metrics:  # the row's value: the mean over its runs
            result[m][rows] = torch.stack([values[m].double() for values in per_run]).mean(0).numpy()
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
    side = min(np.count_nonzero(differences <= 0), np.count_nonzero(differences >= 0))  # resamples on the smaller side of 0
    p = min(1.0, 2 * (1 + side) / (1 + len(differences)))  # (1 + k) / (1 + R): a finite bootstrap never shows p = 0
    return Comparison(
        "bootstrap", difference, p=p, ci=ci, alpha=alpha, level=1 - alpha, resamples=len(differences), significant=p < alpha
    )


#: the corrections for multiple comparisons :func:`correct` knows
CORRECTIONS = ("holm", "none")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    The k-th smallest of m p-values (k = 1..m) is multiplied by m − k + 1, made no smaller than the
    adjusted value before it (so the order is kept) and capped at 1. Rejecting where the adjusted value
    is below alpha keeps the chance of any false rejection among the m at most alpha, whatever their dependence.
    """
    p = np.asarray(p_values, dtype=float)  # (m,)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order])  # (m,): the k-th smallest times m - k + 1
    adjusted = np.empty(len(p))
    adjusted[order] = np.maximum.accumulate(scaled)  # step-down: never below a smaller p-value's
    return adjusted.tolist()


def correct(comparisons: Mapping[str, Comparison], correction: str = "holm") -> dict[str, Comparison]:
    """The ``comparisons`` of one family (a row's tests on one set) with ``p_adjusted`` and ``significant`` after ``correction``.

    Comparisons without a test are returned as they are; with "none" the adjusted p-value is the p-value.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    tested = {k: c.p for k, c in comparisons.items() if c.test is not None and c.p is not None}
    keys = list(tested)
    adjusted = holm([tested[k] for k in keys]) if correction == "holm" else [tested[k] for k in keys]
    result = dict(comparisons)
    for key, p in zip(keys, adjusted):
        c = comparisons[key]
        result[key] = replace(c, correction=correction, p_adjusted=p, family=len(keys), significant=p < (c.alpha or 0.05))
    return result
