"""Figures of regression ensembles: the calibration curve of interval coverage and the predictive bands.

Both take plain tensors in the targets' original units (member means and variances (M, N, D), targets (N, D)):
a test run draws them per set (:func:`regression_run_figures`), the report once per set with a line per row
(``ensemble_lab.report.regression_figures``). Sizes, fonts and colours come from ``style``.
"""

import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ensemble_lab.figures.per_run import DPI, save_run_figures
from ensemble_lab.figures.style import COLUMN_WIDTH, PALETTE, TEXT_WIDTH, Look, paper_style, who
from ensemble_lab.metrics.registry import label as axis_label
from ensemble_lab.metrics.regression import coverage_curve, mixture_moments, pit_values, uncertainty_decomposition

#: nominal levels of the coverage curve: 0, 0.025, ..., 1
LEVELS = torch.linspace(0.0, 1.0, 41, dtype=torch.float64)
#: at most this many targets get a panel row of the predictive bands (D > 3 shows the first three)
MAX_TARGETS = 3
#: the band's half width in predictive standard deviations
BAND_SIGMAS = 2.0
#: each role's line style in a run's coverage figure (colours: PALETTE in set order)
ROLE_STYLES = {"id": "-", "shift": "--", "ood": ":"}


def _wrap(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters (legends of long row names)."""
    return "\n".join(textwrap.wrap(text, width)) or text


def coverage_line(mean: Tensor, var: Tensor, targets: Tensor) -> np.ndarray:
    """Observed coverage of the mixture's central intervals at each of :data:`LEVELS`, (41,)."""
    return coverage_curve(pit_values(mean, var, targets), LEVELS).cpu().numpy()


@paper_style
def coverage_figure(lines: Sequence[tuple[Look, np.ndarray]], title: str) -> Figure:
    """The calibration curve of interval coverage: observed against nominal coverage, one line per series.

    Args:
        lines: (look, coverage at :data:`LEVELS` (41,)) per series (a test set, or a report row); the legend
            shows the observed coverage of the 90 % interval.
        title: the figure's title.
    """
    names = [_wrap(look.name, 48) for look, _ in lines]
    fig = Figure(figsize=(COLUMN_WIDTH, 2.9 + 0.13 * sum(name.count("\n") + 1 for name in names)), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    at_90 = int(torch.argmin((LEVELS - 0.9).abs()))
    for (look, coverage), name in zip(lines, names):
        ax.plot(LEVELS.numpy(), coverage, color=look.colour, linestyle=look.linestyle, label=f"{name}: {coverage[at_90]:.3f}")
    ax.text(0.03, 0.97, "intervals too wide", transform=ax.transAxes, va="top", color="grey", fontsize=6.5)
    ax.text(0.97, 0.03, "intervals too narrow", transform=ax.transAxes, ha="right", color="grey", fontsize=6.5)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal level q of the central interval", ylabel="observed coverage", aspect="equal")
    fig.legend(loc="outside lower center", title="observed coverage at q = 0.9", title_fontsize=7)
    ax.set_title(title)
    return fig


@paper_style
def predictive_band_figure(panels: Sequence[tuple[str, Tensor, Tensor, Tensor]], title: str) -> Figure:
    """The mixture's mean ± 2σ (light band) and its epistemic part ± 2σ_epi (dark band, M > 1) with the targets
    (points), rows sorted by target; a panel per set (columns) and per target (rows, at most :data:`MAX_TARGETS`).

    Args:
        panels: (set label, member means (M, N, D), member variances (M, N, D), targets (N, D)) per set.
        title: the figure's title.
    """
    targets_shown = min(MAX_TARGETS, panels[0][3].shape[1])
    fig = Figure(figsize=(TEXT_WIDTH if len(panels) > 1 else COLUMN_WIDTH, 0.5 + 2.3 * targets_shown), dpi=DPI, layout="constrained")
    axes = fig.subplots(targets_shown, len(panels), squeeze=False, sharey="row")
    for column, (name, mean, var, targets) in enumerate(panels):
        centre, total = (t.cpu().double() for t in mixture_moments(mean, var))  # (N, D) each
        epistemic = uncertainty_decomposition(mean, var)["epistemic"].cpu().double()  # (N, D)
        for d in range(targets_shown):
            ax = axes[d][column]
            y = targets[:, d].cpu().double()
            order = torch.argsort(y)  # (N,): rows by target
            x = np.arange(1, len(order) + 1)
            mu, sd, sd_epi = centre[order, d].numpy(), total[order, d].sqrt().numpy(), epistemic[order, d].sqrt().numpy()
            inside = float((np.abs(y[order].numpy() - mu) <= BAND_SIGMAS * sd).mean())
            ax.fill_between(x, mu - BAND_SIGMAS * sd, mu + BAND_SIGMAS * sd, color=PALETTE[0], alpha=0.22, linewidth=0, label="mean ± 2σ (total)")
            if mean.shape[0] > 1:
                ax.fill_between(x, mu - BAND_SIGMAS * sd_epi, mu + BAND_SIGMAS * sd_epi, color=PALETTE[0], alpha=0.5, linewidth=0,
                                label="mean ± 2σ (epistemic)")  # fmt: skip
            ax.plot(x, mu, color=PALETTE[0], linewidth=0.9, label="predictive mean")
            ax.scatter(x, y[order].numpy(), s=3, color="black", zorder=3, label="target")
            target = f"target {d}, " if targets_shown > 1 else ""
            ax.set(xlim=(0.5, len(order) + 0.5), xlabel="rows, sorted by target", title=f"{name}: {target}{inside:.0%} inside ± 2σ")
            if column == 0:
                ax.set_ylabel(f"target {d} (original units)" if targets_shown > 1 else "target (original units)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)))
    fig.suptitle(title)
    return fig


@paper_style
def metrics_comparison_figure(rows: Sequence[tuple[Look, dict[str, dict[str, list[float]]]]], sets: Sequence[str], metrics: Sequence[str]) -> Figure:
    """Regression metrics of every report row on every set: a panel per metric, the sets along x, a marker per row
    at its mean over runs with ± std bars (sample std; none for one run).

    Args:
        rows: (look, {set: {metric: the runs' values}}) per report row.
        sets: the sets, in x order (their labels, e.g. "diabetes (id)", are the keys of ``rows``' dicts).
        metrics: one panel each, e.g. ("rmse", "nll", "crps", "coverage_90", "width_90", "epistemic_share");
            a ``coverage_<p>`` panel gets a dotted line at its nominal level p / 100.
    """
    columns = 3
    panel_rows = math.ceil(len(metrics) / columns)
    legend_rows = math.ceil(len(rows) / 2)
    fig = Figure(figsize=(TEXT_WIDTH, 2.0 * panel_rows + 0.2 * legend_rows + 0.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(panel_rows, columns, squeeze=False).ravel()
    offsets = np.linspace(-0.25, 0.25, len(rows)) if len(rows) > 1 else np.zeros(1)  # rows side by side at each set
    for ax, metric in zip(axes, metrics):
        for (look, values), offset in zip(rows, offsets):
            points = [(k + offset, v) for k, name in enumerate(sets) if (v := values.get(name, {}).get(metric))]
            for x, v in points:
                std = float(np.std(v, ddof=1)) if len(v) > 1 else None
                ax.errorbar(x, float(np.mean(v)), yerr=std, color=look.colour, marker=look.marker, capsize=2, linestyle="none",
                            label=_wrap(look.name, 60))  # fmt: skip
        if metric.startswith("coverage_"):
            ax.axhline(int(metric.removeprefix("coverage_")) / 100, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xticks(range(len(sets)), sets, rotation=25, ha="right", rotation_mode="anchor")
        ax.set(xlim=(-0.6, len(sets) - 0.4), ylabel=axis_label(metric), title=axis_label(metric))
    for ax in axes[len(metrics) :]:
        ax.set_axis_off()
    handles = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}  # one entry per row
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=2)
    fig.suptitle("regression metrics per set (mean ± std over runs; dotted: the interval's nominal coverage)")
    return fig


def regression_run_figures(sets: dict[str, tuple[Tensor, Tensor, Tensor]], roles: dict[str, str], results: dict[str, Any]) -> dict[str, Figure]:
    """Every figure of a regression test run, by name.

    Args:
        sets: {set name: (member means (M, N, D), member variances (M, N, D), targets (N, D))}, original units.
        roles: {set name: "id" | "shift" | "ood"}.
        results: the run's results document (method, num_members, run_name for the titles).

    Returns:
        ``coverage_calibration`` (a line per set) and ``predictive_bands`` (the first id set and every ood set,
        whose gap rows keep their targets); nothing without sets.
    """
    if not sets:
        return {}
    title = who(results.get("method"), results.get("num_members"), results.get("run_name"))
    lines = [
        (Look(f"{name} ({roles.get(name, '?')})", PALETTE[k % len(PALETTE)], "", ROLE_STYLES.get(roles.get(name, ""), "-")), coverage_line(*arrays))
        for k, (name, arrays) in enumerate(sets.items())
    ]
    figures = {"coverage_calibration": coverage_figure(lines, f"{title}: interval coverage")}
    shown = [n for n in sets if roles.get(n) == "id"][:1] + [n for n in sets if roles.get(n) == "ood"]
    if shown:
        panels = [(f"{n} ({roles[n]})", *sets[n]) for n in shown]
        figures["predictive_bands"] = predictive_band_figure(panels, f"{title}: predictive mean ± 2σ")
    return figures


def write_regression_figures(
    results_dir: Path, sets: dict[str, tuple[Tensor, Tensor, Tensor]], roles: dict[str, str], results: dict[str, Any],
    loggers: Iterable[Any] = (), step: int = 0,
) -> list[Path]:  # fmt: skip
    """Save :func:`regression_run_figures` as ``<results_dir>/figures/<name>.png`` and add them to TensorBoard loggers
    (``test/figures/<name>``); returns the paths written. Arguments as :func:`regression_run_figures`, and the loggers
    and global step of ``figures.per_run.write_figures``."""
    return save_run_figures(results_dir, regression_run_figures(sets, roles, results), loggers, step)
