"""The report's Deep-Ensemble columns: each row's TS-NLL, Deep-Ensemble equivalent and fraction of the DE's gain.

Per datamodule and id / shift set (report/de_curve.py assembles the Deep Ensembles of sizes 1..K):

- ``ts_nll``: the row's NLL after temperature scaling, each run's T fitted on its saved validation split;
- ``dee``: the size of an assembled Deep Ensemble with the row's TS-NLL, its mean over the runs (Ashukha et al. read
  it off means; one run's DEE swings far with its seed), so no std; metrics/de_equivalent.py; beyond K it is
  extrapolated along the curve's last segment (a lower bound);
- ``de_gain_<m>`` for m in nll, ece, acc: (single − run) / (single − DE), where single and DE are the means over
  seeds of the SingleModel row and the DeepEnsemble row (the largest M if several) of ``m`` as results.json has it
  (not temperature-scaled); per run, then mean ± std over the row's runs (its mean is the fraction of the row's mean).

A cell that cannot be computed shows "–" and the table says why below it. Only the columns the report asked for
are filled (build_report puts them in a row's stats); in the default layout they are dropped for a datamodule
with neither a SingleModel nor a DeepEnsemble row and for a set where none of them has a value in any row; always
for ood sets, calibrated (+T) sets and sets without NLL.
"""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ensemble_lab.metrics.de_equivalent import deep_ensemble_equivalent, fraction_of_de_gain
from ensemble_lab.metrics.registry import DE_COLUMNS, DE_GAIN_METRICS
from ensemble_lab.report.de_curve import DEEP_ENSEMBLE, SINGLE, Curve, Saved, de_curves
from ensemble_lab.report.groups import CALIBRATED, COST, WEIGHTS, Group, Stat, run_sets, summarize
from ensemble_lab.report.reading import read_document

SAVE_HINT = "test with --save_predictions true"


def add_de_equivalents(groups: Sequence[Group], explicit: bool = False, saved: Saved | None = None) -> None:
    """Fill the Deep-Ensemble columns (module docstring) of ``groups``' stats in place, with a reason for each blank cell.

    Args:
        groups: the report's rows (build_report).
        explicit: the columns were asked for (``--preset dee``, ``--metrics``): keep them, as "–", where nothing can
            be computed; by default they are dropped for a datamodule without SingleModel and DeepEnsemble rows.
        saved: the cache of saved predictions to read through (a new one by default).
    """
    saved = saved or Saved()
    results: dict[Path, dict[str, Any]] = {}
    for datamodule in dict.fromkeys(g.datamodule for g in groups):
        rows = [g for g in groups if g.datamodule == datamodule]
        asked = list(dict.fromkeys(n for g in rows for n, s in g.stats.items() if n not in (WEIGHTS, COST) and set(s) & set(DE_COLUMNS)))
        usable = [n for n in asked if _applicable(rows, n, results)]
        if not explicit and not any(g.method in (SINGLE, DEEP_ENSEMBLE) for g in rows):
            usable = []
        for name in (n for n in asked if n not in usable):
            _drop(rows, name)
        if not usable:
            continue
        curves, reasons = de_curves(rows, usable, saved)
        single, deep = _pick(rows, SINGLE), _pick(rows, DEEP_ENSEMBLE)
        for name in usable:
            curve = curves.get(name)
            for g in rows:
                stats, blank = g.stats.get(name), g.blank.setdefault(name, {})
                if stats is None:
                    continue
                ts = [v for run in g.runs if (v := saved.run_ts_nll(run, name)) is not None]
                if "ts_nll" in stats:
                    stats["ts_nll"] = summarize(ts)
                    if not ts:
                        blank["ts_nll"] = f"no saved predictions of {name} and the validation split ({SAVE_HINT})"
                if "dee" in stats:
                    stats["dee"], why = _dee(curve, ts, reasons.get(name), name)
                    if why:
                        blank["dee"] = why
                for metric in DE_GAIN_METRICS:
                    if (key := f"de_gain_{metric}") in stats:
                        stats[key], why = _gain(g, single, deep, name, metric, results)
                        if why:
                            blank[key] = why
                if curve is not None and "dee" in stats:
                    g.notes[name] = [_curve_note(curve)]
            if not explicit and not any(g.stats[name][k].n for g in rows if name in g.stats for k in DE_COLUMNS if k in g.stats[name]):
                _drop(rows, name)  # the default layout: no column of dashes only (a lone run, no predictions and no DE row)


def _drop(rows: Sequence[Group], name: str) -> None:
    """Remove the Deep-Ensemble columns of set ``name`` from ``rows``."""
    for g in (g for g in rows if name in g.stats):
        g.stats[name] = {k: s for k, s in g.stats[name].items() if k not in DE_COLUMNS}
        g.blank.pop(name, None)


def _applicable(rows: Sequence[Group], name: str, cache: dict[Path, dict[str, Any]]) -> bool:
    """Whether the Deep-Ensemble columns mean something on set ``name``: an id / shift set whose runs have an NLL
    (not an averages set such as cifar10c_mean), and not a calibrated (+T) one."""
    role = next((g.roles[name] for g in rows if name in g.roles), "id")
    if role == "ood" or name.endswith(CALIBRATED.format("")):
        return False
    return any(_values(g, name, "nll", cache) for g in rows)


def _pick(rows: Sequence[Group], method: str) -> Group | None:
    """The row of ``method`` the gains are measured against: the largest M, then the most runs."""
    found = [g for g in rows if g.method == method]
    return max(found, key=lambda g: (g.num_members or 0, len(g.runs))) if found else None


def _dee(curve: Curve | None, ts: Sequence[float], reason: str | None, name: str) -> tuple[Stat, str | None]:
    if curve is None:
        return Stat(None, None, 0), f"no Deep-Ensemble curve of {name}: {reason or 'no pool'}"
    if not ts:
        return Stat(None, None, 0), f"no saved predictions of {name} and the validation split ({SAVE_HINT})"
    value = deep_ensemble_equivalent(curve.ts_nll, sum(ts) / len(ts))
    if value is None:
        return Stat(None, None, 0), "better than the largest Deep Ensemble assembled, and the curve does not fall there"
    return Stat(value, None, len(ts)), None  # of the mean TS-NLL: one run's DEE swings with its seed (no per-run values)


def _results(run: Path, cache: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    if run not in cache:
        cache[run] = read_document(run / "results.json") or {}
    return cache[run]


def _values(group: Group, name: str, metric: str, cache: dict[Path, dict[str, Any]]) -> list[float]:
    """``metric`` of set ``name`` in each of the row's runs' results.json that has it."""
    found = [run_sets(_results(run, cache)).get(name) for run in group.runs]
    values = [m.get(metric) for m in found if isinstance(m, dict)]
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _gain(
    group: Group, single: Group | None, deep: Group | None, name: str, metric: str, cache: dict[Path, dict[str, Any]]
) -> tuple[Stat, str | None]:
    """The row's fraction of the DE's gain in ``metric`` on ``name`` (per run, then summarized), or why there is none."""
    if single is None or deep is None:
        return Stat(None, None, 0), f"needs a {SINGLE} and a {DEEP_ENSEMBLE} row of this datamodule"
    base, top = _values(single, name, metric, cache), _values(deep, name, metric, cache)
    own = _values(group, name, metric, cache)
    if not base or not top or not own:
        return Stat(None, None, 0), f"{metric} of {name} is missing from the row's, the single model's or the Deep Ensemble's runs"
    single_mean, deep_mean = sum(base) / len(base), sum(top) / len(top)
    fractions = [f for v in own if (f := fraction_of_de_gain(single_mean, v, deep_mean)) is not None]
    if not fractions:
        return Stat(None, None, 0), f"the Deep Ensemble's {metric} equals the single model's: no gain to share"
    stat = summarize(fractions)  # the single row's own: exactly 0 but for rounding, shown as 0.000 rather than -0.000
    return Stat(0.0 if stat.mean is not None and abs(stat.mean) < 1e-12 else stat.mean, stat.std, stat.n, stat.values), None


def _curve_note(curve: Curve) -> str:
    pool = (
        f"{curve.pool} networks: the SingleModel runs and, as there are fewer of them than the DeepEnsemble's M, its runs' members"
        if curve.with_de_members
        else f"{curve.pool} SingleModel runs"
    )
    k = len(curve.ts_nll)
    return (
        f"dee: the size of a Deep Ensemble with the row's TS-NLL (temperature fitted on the validation split), on the TS-NLL "
        f"of ensembles of sizes 1..{k} averaging subsets of {pool}; above {k} extrapolated along the last segment (a lower "
        f"bound). de_gain_*: (single − row) / (single − DeepEnsemble), means over seeds, uncalibrated metrics."
    )
