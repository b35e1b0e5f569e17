"""The report's significance marks: each row against the baseline row of its datamodule and architecture (statistics: metrics/significance.py).

Welch's t-test over seeds when both rows have two or more values of a metric; otherwise a paired bootstrap over
the test samples of the runs' predictions/<set>.npz (``test --save_predictions true``). A row's tests on one set
(or on the run-level metrics) are one family, corrected together (``--correction``, Holm's by default). A
comparison that cannot be made (no predictions, a calibrated set, different test samples) keeps its reason,
and the report says how many.
"""

import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ensemble_lab.errors import ConfigError
from ensemble_lab.metrics.registry import DE_COLUMNS
from ensemble_lab.metrics.regression_bootstrap import bootstrap_regression, recomputable
from ensemble_lab.metrics.significance import (
    RECOMPUTABLE,
    Comparison,
    bootstrap,
    bootstrap_replicates,
    correct,
    is_ood_detection,
    metric_values,
    welch,
)
from ensemble_lab.report.groups import CALIBRATED, COST, DEFAULT_BASELINE, WEIGHTS, Group, row_name

#: the rows one baseline row serves: those of one datamodule and one architecture (report/architecture.py)
Block = tuple[str | None, str | None]


def block(group: Group) -> Block:
    """The rows ``group`` is compared and ranked among: its datamodule's, of its architecture."""
    return group.datamodule, group.architecture


def choose_baselines(groups: Sequence[Group], baseline: str | None = None) -> dict[Block, Group]:
    """The reference row of each datamodule and architecture (rows of different backbones are never compared):
    the row named ``baseline`` (its label, method class or row name), by default the single model's (label or
    method SingleModel); "none" or no such row: {}.

    Raises ConfigError for a ``baseline`` no row has, or one naming several rows of a datamodule and architecture.
    """
    if baseline is not None and baseline.lower() == "none":
        return {}
    wanted = baseline or DEFAULT_BASELINE
    matches = [g for g in groups if wanted in (g.label, g.method, row_name(g))]
    if baseline is not None and not matches:
        names = ", ".join(dict.fromkeys(row_name(g) for g in groups))
        raise ConfigError(f"--baseline {baseline}: no row has that label or method; give one of: {names} (or none)")
    chosen: dict[Block, Group] = {}
    for key in dict.fromkeys(map(block, matches)):
        candidates = [g for g in matches if block(g) == key]
        exact = [g for g in candidates if row_name(g) == wanted]
        if len(candidates) > 1 and not exact and baseline is not None:
            names = ", ".join(row_name(g) for g in candidates)
            where = key[0] if key[1] is None else f"{key[0]} ({key[1]})"
            raise ConfigError(f"--baseline {baseline} names several rows of {where} ({names}); give one row's full name")
        chosen[key] = (exact or candidates)[0]  # by default the first single-model row, in table order
    return chosen


def add_significance(
    groups: Sequence[Group], baselines: Mapping[Block, Group], alpha: float = 0.05, resamples: int = 1000, seed: int = 0,
    correction: str = "holm",
) -> list[str]:  # fmt: skip
    """Compare every metric of every row with its datamodule's (and architecture's) baseline (metrics/significance.py), into ``group.significance``.

    Welch's t-test over seeds when both rows have two or more values; otherwise a paired bootstrap over the
    test samples of the runs' predictions/<set>.npz. ``correction`` ("holm" or "none") is applied over each
    row's tests on one set. Returns one line per reason some comparisons could not be made.
    """
    missing: Counter[str] = Counter()
    loaded: Predictions = {}
    baseline_replicates: dict[tuple[int, str, tuple[str, ...]], Replicates] = {}
    for group in groups:
        base = baselines.get(block(group))
        if base is None or base is group:
            continue
        group.baseline = base
        for name, metrics in group.stats.items():
            if name == COST or name not in base.stats:
                continue
            result = group.significance.setdefault(name, {})
            by_bootstrap = []
            for metric, stat in metrics.items():
                other = base.stats[name].get(metric)
                if other is None or not stat.n or not other.n:
                    continue
                if metric in DE_COLUMNS:  # derived from nll / ece / acc (their tests say it) or a summary of the runs (dee)
                    continue
                if stat.n >= 2 and other.n >= 2:
                    result[metric] = welch(stat.values, other.values, alpha)
                elif name == WEIGHTS:
                    result[metric] = Comparison(None, reason="run-level metrics of a single run: no test samples to resample")
                else:
                    by_bootstrap.append(metric)
            if by_bootstrap:
                result.update(_bootstrap_set(group, base, name, by_bootstrap, alpha, resamples, seed, loaded, baseline_replicates))
            result = group.significance[name] = correct(result, correction)
            for comparison in result.values():
                if comparison.reason:
                    missing[comparison.reason] += 1
    return [f"{count} comparison{'s' if count > 1 else ''} without a test: {reason}" for reason, count in missing.items()]


Predictions = dict[tuple[Path, str], tuple[Tensor, Tensor] | None]
#: one row's bootstrap: its metrics on the whole set (mean over runs) and on every resample
Replicates = tuple[dict[str, float], dict[str, np.ndarray]]


def _bootstrap_set(
    group: Group, base: Group, name: str, metrics: Sequence[str], alpha: float, resamples: int, seed: int,
    loaded: Predictions, cache: dict[tuple[int, str, tuple[str, ...]], Replicates],
) -> dict[str, Comparison]:  # fmt: skip
    """The paired bootstrap of ``metrics`` of set ``name``, from the predictions of the row's and the baseline's runs."""
    result = {
        m: Comparison(None, reason="not recomputable from predictions")
        for m in metrics
        if m not in RECOMPUTABLE and not is_ood_detection(m) and not recomputable(m)
    }
    metrics = [m for m in metrics if m not in result]
    ood = any(is_ood_detection(m) for m in metrics)
    # OOD detection is measured against the first id set, as `test` does
    id_name = next((n for n, role in group.roles.items() if role == "id" and not n.endswith(CALIBRATED.format(""))), None)
    needed = [name] + ([id_name] if ood and id_name else [])
    runs = (*group.runs, *base.runs)
    for run in runs:
        for set_name in needed:
            if (run, set_name) not in loaded:
                loaded[(run, set_name)] = _predictions(run, set_name)
    found = {key: value for key, value in loaded.items() if value is not None}
    unavailable = None
    if name.endswith(CALIBRATED.format("")):
        unavailable = "calibrated (+T) sets keep no predictions to resample"
    elif ood and id_name is None:
        unavailable = "OOD detection needs an id set's predictions to resample"
    elif any((run, s) not in found for run in runs for s in needed):
        unavailable = "a single-run row without predictions/<set>.npz to bootstrap (run `ensemble-lab test` with --save_predictions true)"
    elif any(not torch.equal(found[(r, s)][1], found[(runs[0], s)][1]) for r in runs for s in needed):
        unavailable = "the runs' predictions are not of the same test samples (targets differ): no paired bootstrap"
    if unavailable:
        return {**result, **{m: Comparison(None, reason=unavailable) for m in metrics}}

    def replicates(row: Group) -> Replicates:
        probs = [found[(r, name)][0] for r in row.runs]
        targets = found[(row.runs[0], name)][1]
        id_probs = [found[(r, id_name)][0] for r in row.runs] if ood and id_name else None
        if targets.dim() == 2:  # a regression set: [means | variances] (M, N, 2·D) per run (see _predictions)
            pairs = lambda packed: [tuple(p.chunk(2, dim=-1)) for p in packed]  # (M, N, D) each
            return bootstrap_regression(pairs(probs), targets, metrics, resamples, seed, name, None if id_probs is None else pairs(id_probs))
        full = [metric_values(p, targets, metrics, None if id_probs is None else id_probs[k]) for k, p in enumerate(probs)]
        point = {m: float(np.mean([v[m] for v in full])) for m in metrics}
        return point, bootstrap_replicates(probs, targets, metrics, resamples, seed, name, id_probs)

    key = (id(base), name, tuple(metrics))  # the baseline's resamples serve every row compared on the same metrics;
    if key not in cache:  # a single model's row has no mi-based ones, the next row may
        cache[key] = replicates(base)
    (base_point, base_replicates), (point, own) = cache[key], replicates(group)
    return {**result, **{m: bootstrap(point[m], base_point[m], own[m], base_replicates[m], alpha) for m in metrics}}


def _predictions(run: Path, name: str) -> tuple[Tensor, Tensor] | None:
    """Member probabilities (M, N, C) and targets (N,) of <run>/predictions/<name>.npz, or a regression run's member means
    and variances side by side (M, N, 2·D) and targets (N, D); None without one (or an unreadable one)."""
    path = run / "predictions" / f"{name}.npz"
    if not path.exists():
        return None
    try:
        with np.load(path) as saved:
            if "mean" in saved.files:  # regression: mean and var (M, N, D), targets (N, D)
                return torch.cat([torch.from_numpy(saved["mean"]), torch.from_numpy(saved["var"])], dim=-1), torch.from_numpy(saved["targets"])
            return torch.from_numpy(saved["member_probs"]), torch.from_numpy(saved["targets"])
    except (OSError, ValueError, KeyError) as error:
        print(f"ensemble-lab report: ignoring {path}: {error}", file=sys.stderr)
        return None
