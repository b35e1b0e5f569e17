"""The report's comparison figures of regression rows (report/figures.py draws the classification ones and calls these).

- ``coverage_<set>``: per set (the gap set keeps its targets, so every set), the calibration curve of interval
  coverage of each row, its runs' rows pooled (needs ``predictions/<set>.npz``: test with ``--save_predictions true``);
- ``regression_metrics``: rmse, nll, crps, coverage and width at 90 % and the epistemic share on every set, mean ±
  std over each row's runs (results.json alone);
- ``diversity_<set>``: the epistemic share and the members' error correlation against NLL and rmse (id and shift sets),
  the epistemic share and std against AUROC by variance / epistemic variance (the gap set), a marker per run;
- ``ood_roc_<set>_<score>`` and ``ood_pr_<set>_<score>``: per gap (ood) set and score (``variance``, ``epistemic``),
  every row's ROC / precision-recall curve against the first regression id set (predictions too).

A set is a regression set when some run's metrics of it have ``rmse`` (figure_rows.regression_sets); the
classification figures leave those sets out.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ensemble_lab.figures import comparison as draw
from ensemble_lab.figures.regression import LEVELS, coverage_figure, metrics_comparison_figure
from ensemble_lab.figures.style import Look
from ensemble_lab.metrics.registry import REGRESSION_OOD_SCORES
from ensemble_lab.metrics.regression import coverage_curve, ood_scores, pit_values
from ensemble_lab.report.figure_rows import RunGroup, saved_regression, skip
from ensemble_lab.report.ood_figures import ood_figures

#: the panels of the regression_metrics figure
METRIC_PANELS = ("rmse", "nll", "crps", "coverage_90", "width_90", "epistemic_share")
#: (x, y) panels of a regression set's diversity figure: the epistemic share against quality, detection on the gap set
DIVERSITY_AXES = {"id": (("epistemic_share", "nll"), ("error_correlation", "rmse")), "ood": (("epistemic_share", "auroc_variance"), ("epistemic_std", "auroc_epistemic"))}
#: what a figure that needs predictions says when no run saved them
SAVE_HINT = "no run has saved predictions of it (test with --save_predictions true)"


def _coverage(groups: Sequence[RunGroup], seen: Sequence[Look], set_name: str) -> Figure | None:
    """Each row's coverage curve on ``set_name``, the PIT values of all its runs' rows pooled."""
    lines = []
    for group, look in zip(groups, seen):
        saved = [s for run in group.runs if (s := saved_regression(run, set_name)) is not None]
        if saved:
            pit = torch.cat([pit_values(*s).reshape(-1) for s in saved])  # (runs · N · D,)
            lines.append((look, coverage_curve(pit, LEVELS).numpy()))
    return coverage_figure(lines, f"interval coverage on {set_name} (runs pooled)") if lines else None


def _regression_scores(run: Path, set_name: str) -> dict[str, Tensor] | None:
    """A regression run's OOD scores of one set (variance, epistemic), or None without its saved predictions."""
    saved = saved_regression(run, set_name)
    return None if saved is None else ood_scores(*saved[:2])


def regression_figures(groups: Sequence[RunGroup], seen: Sequence[Look], docs: Sequence[Sequence[dict[str, Any]]], roles: dict[str, str],
                       names: set[str]) -> dict[str, Figure]:  # fmt: skip
    """Every regression comparison figure the rows' runs allow, by name; says on stderr which could not be drawn and why.

    Args:
        groups: the report's rows.
        seen: each row's look (figure_rows.looks).
        docs: each row's runs' results.json documents.
        roles: {set name: role} over every run.
        names: the regression sets among ``roles``.
    """
    sets = {n: r for n, r in roles.items() if n in names}
    if not sets:
        return {}
    figures: dict[str, Figure] = {}
    for name in sets:
        if fig := _coverage(groups, seen, name):
            figures[f"coverage_{name}"] = fig
        else:
            skip(f"coverage_{name}", SAVE_HINT)
    labels = {n: f"{n} ({r})" for n, r in sets.items()}
    rows = []
    for look, runs in zip(seen, docs):
        values = {labels[n]: {m: [v for d in runs if isinstance(v := ((d.get("sets") or {}).get(n) or {}).get(m), (int, float))] for m in METRIC_PANELS}
                  for n in sets}  # fmt: skip
        if any(v for by_metric in values.values() for v in by_metric.values()):
            rows.append((look, values))
    if rows:
        figures["regression_metrics"] = metrics_comparison_figure(rows, list(labels.values()), METRIC_PANELS)
    for name, role in sets.items():
        axes = DIVERSITY_AXES["ood" if role == "ood" else "id"]
        points = [(look, [m for d in runs if isinstance(m := (d.get("sets") or {}).get(name), dict) and axes[0][0] in m]) for look, runs in zip(seen, docs)]
        if points := [p for p in points if p[1]]:
            figures[f"diversity_{name}"] = draw.diversity_figure(points, name, axes)
    figures.update(ood_figures(groups, seen, sets, _regression_scores, REGRESSION_OOD_SCORES, "epistemic", "regression "))
    return figures
