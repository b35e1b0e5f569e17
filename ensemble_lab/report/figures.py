"""The report's comparison figures: every method of a report in one figure, from the runs' saved files.

``draw_report_figures(groups, out)`` writes into ``<out>/figures/`` (docs/figures.md shows each):

- ``reliability_<set>``: per id / shift set, one reliability diagram per row with its samples per bin
  (needs ``predictions/<set>.npz``: test with ``--save_predictions true``);
- ``ood_roc_<set>_<score>`` and ``ood_pr_<set>_<score>``: per OOD set and score (msp, entropy, mi), every
  row's ROC / precision-recall curve against the first id set, AUROC / AUPR in the legend (predictions too);
- ``risk_coverage_<set>``: per id / shift set, every row's risk–coverage curve of its msp confidence (error rate among
  the most confident samples against their share), AURC in the legend (predictions too);
- ``diversity_<set>``: disagreement and mi against quality, one marker per run (results.json alone);
- ``training_curves``: val/acc, val/nll, val/mi, val/disagreement and val/weight_cosine per epoch, mean ±
  std over seeds (the runs' TensorBoard event files);
- ``ensemble_size``: metrics against M, a line per set of rows trained alike but for M (per method: a study's
  ``be_m2``, ``be_m4`` ... join into one line, a variant at a single M such as ``be_rank2`` stays out; results.json alone);
- ``severity_<corrupted>``: acc, NLL and ECE against corruption severity, a line per row, for runs tested with
  ``--data.per_corruption true`` at several ``--data.severities`` (results.json alone; report/severity.py);
- ``deep_ensemble_equivalent``: TS-NLL against the size of Deep Ensembles assembled from the study's single runs, each
  row placed at its Deep-Ensemble equivalent (needs the pool's and the rows' predictions; report/de_figure.py);
- ``single_basin_<set>`` and ``spawn_<set>``: for the first id set, acc and NLL against the members' mean loss barrier
  (raw and aligned, from connectivity.json), and acc, NLL, disagreement and the barrier against the spawn epoch t
  (report/single_basin.py);
- ``scale``: accuracy, diversity (mi, disagreement), weight cosine and AUROC (mi) against the parameters of one member's
  network, for methods whose rows differ in size (a width or depth sweep, a line each; results.json alone).

The rows and their looks are report/figure_rows.py; the figures against a size (ensemble_size, scale) report/sweeps.py.
A row's predictions are pooled over its runs: the curves, the ECE and AUROC / AUPR in titles and legends
are those of all its runs' samples together (the tables' numbers are means over runs, so they differ a little).
"""

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ensemble_lab.figures import comparison as draw
from ensemble_lab.figures.style import Look, check_formats, save_figure
from ensemble_lab.metrics.classification import member_mean, uncertainty_scores
from ensemble_lab.metrics.registry import OOD_SCORES
from ensemble_lab.metrics.selective import risk_coverage_curve
from ensemble_lab.report.de_curve import Saved
from ensemble_lab.report.de_figure import de_equivalent_figure
from ensemble_lab.report.figure_rows import RunGroup, looks, regression_sets, run_results, saved_predictions, set_roles, skip
from ensemble_lab.report.ood_figures import ood_figures
from ensemble_lab.report.regression_figures import regression_figures
from ensemble_lab.report.severity import severity_figures
from ensemble_lab.report.single_basin import single_basin_figures
from ensemble_lab.report.sweeps import backbone_dims, ensemble_size_figure, member_lines, scale_figure, sweeps
from ensemble_lab.report.training_curves import CURVE_TAGS, REGRESSION_CURVE_TAGS, has_epochs, mean_std, per_epoch, read_scalars

#: names the tests and report/groups.py, report/tables.py import from here
__all__ = ["RunGroup", "backbone_dims", "draw_figures", "draw_report_figures", "looks", "member_lines", "set_roles", "skip", "sweeps"]

T = TypeVar("T")
#: the uncertainty scores of the OOD curves
SCORES = OOD_SCORES
#: (x, y) panels of the diversity figure: label metrics on id / shift sets, detection on ood sets
DIVERSITY_AXES = {"ood": (("disagreement", "auroc_msp"), ("mi", "auroc_mi")), "id": (("disagreement", "acc"), ("mi", "nll"))}


def _reliability(groups: Sequence[RunGroup], seen: list[Look], set_name: str) -> Figure | None:
    panels = []
    for group, look in zip(groups, seen):
        saved = [p for run in group.runs if (p := saved_predictions(run, set_name)) is not None]
        if saved:
            mean = torch.cat([member_mean(probs) for probs, _ in saved])  # (runs · N, C)
            panels.append((look, mean, torch.cat([t for _, t in saved]), len(saved)))
    return draw.reliability_comparison(panels, set_name) if panels else None


def _risk_coverage(groups: Sequence[RunGroup], seen: list[Look], set_name: str) -> Figure | None:
    """The msp risk–coverage curve of each row with saved predictions of ``set_name``, its runs' samples pooled."""
    curves = []
    for group, look in zip(groups, seen):
        saved = [p for run in group.runs if (p := saved_predictions(run, set_name)) is not None]
        if saved:
            mean = torch.cat([member_mean(probs.double()) for probs, _ in saved])  # (runs · N, C)
            confidence, prediction = mean.max(dim=-1)
            errors = (prediction != torch.cat([t for _, t in saved])).double()  # (runs · N,)
            coverage, risk = risk_coverage_curve(confidence, errors)
            curves.append((look, coverage, risk, float(risk.mean())))  # AURC: the mean risk over k = 1..N
    return draw.risk_coverage_figure(curves, set_name) if curves else None


def _class_scores(run: Path, set_name: str) -> dict[str, Tensor] | None:
    """A classification run's uncertainty scores of one set (msp, entropy, mi), or None without its saved predictions."""
    saved = saved_predictions(run, set_name)
    return None if saved is None else uncertainty_scores(saved[0])


def _training_curves(groups: Sequence[RunGroup], seen: list[Look], tags: Sequence[str] = CURVE_TAGS) -> Figure | None:
    series, epochs = [], True
    for group, look in zip(groups, seen):
        scalars = [s for run in group.runs if (s := read_scalars(run, tags))]
        if any(tag in s for s in scalars for tag in tags):
            epochs = epochs and all(has_epochs(s) for s in scalars)
            series.append((look, scalars))
    if not series:
        return None
    tags = [tag for tag in tags if any(tag in s for _, scalars in series for s in scalars)]  # no empty panel
    stats = [(look, {tag: mean_std([per_epoch(s, tag) for s in scalars]) for tag in tags}) for look, scalars in series]
    return draw.training_curves_figure(stats, tags, "epoch" if epochs else "step")


def _where(rows: Sequence[T], keep: Sequence[bool]) -> list[T]:
    """The rows whose ``keep`` is true."""
    return [row for row, kept in zip(rows, keep) if kept]


def draw_figures(groups: Sequence[RunGroup], saved: Saved | None = None) -> dict[str, Figure]:
    """Every comparison figure the groups' runs allow, by name; says on stderr which could not be drawn and why.

    Args:
        groups: the report's rows, in table order.
        saved: the report's cache of saved predictions, fitted temperatures and Deep-Ensemble curves
            (report/de_curve.py): pass the one the Deep-Ensemble columns filled, so the figure reuses their fits.
    """
    every_look = looks(groups)
    every_doc = [[d for run in g.runs if (d := run_results(run))] for g in groups]
    every_role = set_roles([d for runs in every_doc for d in runs])
    regression = regression_sets([d for runs in every_doc for d in runs])  # their figures: report/regression_figures.py
    figures = regression_figures(groups, every_look, every_doc, every_role, regression)
    is_regression = [any(set(d.get("sets") or {}) & regression for d in runs) for runs in every_doc]
    if any(is_regression) and (fig := _training_curves(_where(groups, is_regression), _where(every_look, is_regression), REGRESSION_CURVE_TAGS)):
        figures["training_curves_regression"] = fig
    elif any(is_regression):
        skip("training_curves_regression", "no regression run has TensorBoard event files with val/ curves (the default logger)")
    # the classification figures: its rows and sets alone
    classification = [not r for r in is_regression]
    groups, seen, docs = _where(groups, classification), _where(every_look, classification), _where(every_doc, classification)
    roles = {n: r for n, r in every_role.items() if n not in regression}
    if not groups:
        return figures
    save_hint = "no run has saved predictions of it (test with --save_predictions true)"
    for name, role in roles.items():
        if role != "ood":
            if fig := _reliability(groups, seen, name):
                figures[f"reliability_{name}"] = fig
            else:
                skip(f"reliability_{name}", save_hint)
            if fig := _risk_coverage(groups, seen, name):
                figures[f"risk_coverage_{name}"] = fig
            else:
                skip(f"risk_coverage_{name}", save_hint)
    figures.update(ood_figures(groups, seen, roles, _class_scores, SCORES, "mi"))  # ROC / PR per ood set and score
    for name, role in roles.items():
        axes = DIVERSITY_AXES["ood" if role == "ood" else "id"]
        # a set without the axes' metrics (an averages set such as cifar10c_mean) gets no empty figure
        points = [(look, [m for d in runs if isinstance(m := (d.get("sets") or {}).get(name), dict) and axes[0][0] in m]) for look, runs in zip(seen, docs)]
        if points := [p for p in points if p[1]]:
            figures[f"diversity_{name}"] = draw.diversity_figure(points, name, axes)
    if fig := _training_curves(groups, seen):
        figures["training_curves"] = fig
    else:
        skip("training_curves", "no run has TensorBoard event files with val/ curves (fit with the default TensorBoard logger)")
    fig, why = ensemble_size_figure(groups, seen, docs, roles)
    if fig is not None:
        figures["ensemble_size"] = fig
    else:
        skip("ensemble_size", why)
    if fig := scale_figure(groups, seen, docs, roles):
        figures["scale"] = fig
    else:
        skip("scale", "no method has rows of different sizes (vary --model.backbone.hidden_sizes / --model.backbone.width, as configs/study/scale_digits.yaml)")
    figures.update(severity_figures(seen, docs))  # acc / NLL / ECE against corruption severity (report/severity.py)
    fig, why = de_equivalent_figure(groups, seen, docs, saved)  # TS-NLL against Deep-Ensemble size (report/de_figure.py)
    if fig is not None:
        figures["deep_ensemble_equivalent"] = fig
    else:
        skip("deep_ensemble_equivalent", why)
    figures.update(single_basin_figures(groups, seen, roles))  # quality against the barrier and the spawn epoch
    if not every_role:
        skip("comparison", "no run has a readable results.json")
    return figures


def draw_report_figures(groups: Sequence[RunGroup], out: Path, formats: Sequence[str] = ("png",), dpi: int = 200,
                        saved: Saved | None = None) -> list[Path]:  # fmt: skip
    """Draw every comparison figure the runs allow into <out>/figures/, one file per figure and format; return the paths written.
    A figure the runs cannot give (no saved predictions, no event files, a single M) is skipped with one line on stderr saying why
    and how to get it. ``saved``: as in :func:`draw_figures`."""
    check_formats(formats, dpi)  # before any drawing: a bad option fails fast
    paths = []
    for name, fig in draw_figures(groups, saved).items():
        paths += save_figure(fig, Path(out) / "figures" / name, formats, dpi)
    return paths
