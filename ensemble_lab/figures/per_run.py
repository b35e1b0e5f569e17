"""Figures of a test run: reliability diagrams, uncertainty histograms, diversity heatmaps.

Figures are ``matplotlib.figure.Figure`` objects drawn with the Agg canvas, never through pyplot,
so nothing needs a display and no global figure list grows. ``write_figures`` saves them as PNG
under ``<results_dir>/figures/`` and adds them to every TensorBoard logger as ``test/figures/<name>``.
Titles name the run (label, method, M); sizes, fonts and colours come from ``style``, and
``draw_reliability`` also draws each panel of the report's side-by-side comparison (docs/figures.md).
"""

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from torch import Tensor

from ensemble_lab.figures.style import COLUMN_WIDTH, TEXT_WIDTH, Look, paper_style, save_figure, who
from ensemble_lab.metrics.calibration_errors import ece_adaptive, equal_mass_bins
from ensemble_lab.metrics.classification import expected_calibration_error, reliability_bins, uncertainty_scores
from ensemble_lab.metrics.registry import label as metric_label

#: resolution of the per-run PNGs and TensorBoard images (figures are sized in inches at print size)
DPI = 150
#: the gap between a bin's accuracy and its mean confidence: grey, so that no method's colour means "gap"
GAP_COLOUR = "#AAAAAA"
#: heatmap cells get their value written in them up to this many members
ANNOTATE_MAX_MEMBERS = 10


def draw_reliability(ax: Axes, ax_count: Axes, probs: Tensor, targets: Tensor, num_bins: int = 15, colour: str = "#0072B2") -> float:
    """Draw a reliability diagram on ``ax`` and its samples per bin on ``ax_count`` (below it); return the ECE.

    Args:
        ax: axes of the diagram: accuracy per confidence bin, the gap to the bin's mean confidence, the diagonal.
        ax_count: axes of the histogram of samples per bin (log scale), sharing the confidence axis.
        probs: ensemble probabilities p̄ (N, C).
        targets: true classes (N,).
        num_bins: number of equal-width confidence bins (as the ECE).
        colour: colour of the accuracy bars and the histogram.
    """
    accuracy, confidence, count = (t.cpu().numpy() for t in reliability_bins(probs, targets, num_bins))
    centers = (0.5 + np.arange(num_bins)) / num_bins  # (num_bins,)
    filled = count > 0
    width = 1 / num_bins
    ax.bar(centers[filled], accuracy[filled], width=width, color=colour, edgecolor="black", linewidth=0.4, label="accuracy")
    ax.bar(centers[filled], (confidence - accuracy)[filled], bottom=accuracy[filled], width=width,
           color=GAP_COLOUR, alpha=0.5, edgecolor="#555555", linewidth=0.4, label="gap to confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", xticks=(0, 0.5, 1))
    ax.tick_params(labelbottom=False)
    ax_count.bar(centers[filled], count[filled], width=width, color=colour, alpha=0.6, edgecolor="black", linewidth=0.4)
    ax_count.set_yscale("log")
    # every diagram of one set gets the same count axis, 1 to all samples: the bars read as shares of the set
    ax_count.set_ylim(0.7, max(int(count.sum()), 1) * 1.6)
    ax_count.yaxis.set_major_locator(LogLocator(base=10, numticks=4))
    ax_count.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 1, 10, 100: plain text, no mathtext
    ax_count.yaxis.set_minor_formatter(NullFormatter())
    ax_count.set(xlim=(0, 1), xticks=(0, 0.5, 1), xlabel="confidence (max p̄)", ylabel="samples")
    return expected_calibration_error(probs, targets, num_bins)


def reliability_axes(fig: Figure, cell: Any = None) -> tuple[Axes, Axes]:
    """A diagram above a short samples-per-bin histogram, in ``fig`` or in one cell of a GridSpec."""
    grid = (cell.subgridspec if cell is not None else fig.add_gridspec)(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax = fig.add_subplot(grid[0])
    return ax, fig.add_subplot(grid[1], sharex=ax)


def draw_reliability_equal_mass(ax: Axes, ax_count: Axes, probs: Tensor, targets: Tensor, num_bins: int = 15, colour: str = "#0072B2") -> float:
    """Draw the reliability diagram of equal-mass bins (each holds about N / ``num_bins`` samples) and return the
    adaptive ECE (metrics/calibration_errors.py). A marker per bin at (mean confidence, accuracy), the grey gap
    reaching the diagonal; below, each bin's samples per unit of confidence over its span (lowest to highest).

    Args:
        ax: axes of the diagram.
        ax_count: axes below it for the samples per bin, sharing the confidence axis.
        probs: ensemble probabilities p̄ (N, C).
        targets: true classes (N,).
        num_bins: number of equal-mass bins.
        colour: colour of the accuracy bars and the histogram.
    """
    confidence, prediction = (t.cpu() for t in probs.double().max(dim=-1))  # (N,), (N,)
    index = equal_mass_bins(confidence, num_bins).numpy()  # (N,)
    conf, correct = confidence.numpy(), (prediction == targets.cpu()).double().numpy()
    filled = [b for b in range(num_bins) if (index == b).any()]
    low = np.array([conf[index == b].min() for b in filled])
    high = np.array([conf[index == b].max() for b in filled])
    accuracy = np.array([correct[index == b].mean() for b in filled])
    mean_conf = np.array([conf[index == b].mean() for b in filled])
    count = np.array([(index == b).sum() for b in filled])
    width = np.maximum(high - low, 0.004)  # a bin of one confidence value still shows
    # bins crowd where most samples are (near 1 for a good model): a marker per bin reads there, a bar would not
    ax.vlines(mean_conf, accuracy, mean_conf, color=GAP_COLOUR, linewidth=2.5, label="gap to confidence")
    ax.plot(mean_conf, accuracy, color=colour, marker="o", markersize=3, linewidth=1, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", xticks=(0, 0.5, 1))
    ax.tick_params(labelbottom=False)
    ax_count.bar(low, count / width, width=width, align="edge", color=colour, alpha=0.6, edgecolor="black", linewidth=0.4)
    ax_count.set_yscale("log")
    ax_count.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax_count.yaxis.set_minor_formatter(NullFormatter())
    ax_count.set(xlim=(0, 1), xticks=(0, 0.5, 1), xlabel="confidence (max p̄)", ylabel="samples / unit")
    return ece_adaptive(probs, targets, num_bins)


@paper_style
def reliability_figure(name: str, probs: Tensor, targets: Tensor, num_bins: int = 15, title: str | None = None) -> Figure:
    """Accuracy against confidence of p̄ in ``num_bins`` equal-width bins (left: their ECE) and in ``num_bins``
    equal-mass bins (right: the adaptive ECE), each with the diagonal and the samples per bin below.

    Args:
        name: test set name, for the title.
        probs: ensemble probabilities p̄ (N, C).
        targets: true classes (N,).
        num_bins: number of confidence bins of each binning (as the ECE).
        title: what the run is (e.g. "BatchEnsemble, M=4"), put before the set name.
    """
    fig = Figure(figsize=(TEXT_WIDTH / 1.4, 3.4), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(1, 2)  # equal-width left, equal-mass right
    left, right = grid[0, 0], grid[0, 1]
    ax, ax_count = reliability_axes(fig, left)
    ece = draw_reliability(ax, ax_count, probs, targets, num_bins)
    ax.set_title(f"equal-width bins: ECE {ece:.3f}")
    ax.legend(loc="upper left")
    ax_mass, ax_mass_count = reliability_axes(fig, right)
    adaptive = draw_reliability_equal_mass(ax_mass, ax_mass_count, probs, targets, num_bins)
    ax_mass.set_title(f"equal-mass bins: adaptive ECE {adaptive:.3f}")
    fig.suptitle(f"{title}: reliability on {name}" if title else f"reliability on {name}")
    return fig


@paper_style
def uncertainty_histograms(scores: dict[str, dict[str, Tensor]], roles: dict[str, str], title: str | None = None) -> Figure:
    """Histograms of total entropy H[p̄] and of mi, one outline per test set (id vs shift vs ood).

    Args:
        scores: {set name: uncertainty_scores(member_probs)}, each score (N,).
        roles: {set name: role}, for the legend.
        title: what the run is (e.g. "BatchEnsemble, M=4"), the figure's title.
    """
    fig = Figure(figsize=(TEXT_WIDTH / 1.4, 2.4), dpi=DPI, layout="constrained")
    for k, key in enumerate(("entropy", "mi")):
        ax = fig.add_subplot(1, 2, k + 1)
        top = max(float(s[key].max()) for s in scores.values())
        value_range = (0.0, top if top > 0 else 1e-3)  # all-zero mi (M = 1) still gets an axis
        for name, s in scores.items():
            ax.hist(s[key].cpu().numpy(), bins=30, range=value_range, density=True, histtype="step",
                    linewidth=1.2, label=f"{name} ({roles.get(name, '?')})")  # fmt: skip
        ax.set(xlabel=metric_label("mi") if key == "mi" else "entropy H[p̄] (total)", ylabel="density")
        ax.legend()
    fig.suptitle(f"{title}: uncertainty per test set" if title else "uncertainty per test set")
    return fig


@paper_style
def heatmap_figure(matrix: list[list[float]], title: str, vmin: float | None = None, vmax: float | None = None,
                   cmap: str = "viridis") -> Figure:  # fmt: skip
    """An M × M matrix as a heatmap with a colour bar, values written in the cells for small M.

    Args:
        matrix: M × M nested list (e.g. pairwise disagreement or weight cosine).
        title: figure title.
        vmin: lower end of the colour scale (None: the data's minimum).
        vmax: upper end of the colour scale (None: the data's maximum).
        cmap: matplotlib colour map name.
    """
    m = len(matrix)
    fig = Figure(figsize=(COLUMN_WIDTH, 2.9), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap=cmap)
    fig.colorbar(image, ax=ax)
    ax.grid(False)
    ax.set(xticks=range(m), yticks=range(m), xlabel="member j", ylabel="member i", title=title)
    if m <= ANNOTATE_MAX_MEMBERS:
        # imshow without a norm uses a Normalize; the stubs type it as the abstract Norm, whose __call__ takes arrays only
        norm = cast(Normalize, image.norm)
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                missing = value is None or math.isnan(value)
                red, green, blue, _ = image.cmap(norm(0.0 if missing else value))
                ink = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"  # readable on the cell
                text = "nan" if missing else f"{value:.3f}" if m <= 5 else f"{value:.2f}"
                ax.text(j, i, text, ha="center", va="center", color=ink, fontsize=7 if m <= 5 else 5.5)
    return fig


def build_figures(collected: dict[str, tuple[Tensor, Tensor]], roles: dict[str, str], results: dict[str, Any]) -> dict[str, Figure]:
    """Every figure of a test run, by name.

    Args:
        collected: {set name: (member_probs (M, N, C), targets (N,))}.
        roles: {set name: "id" | "shift" | "ood"}.
        results: the run's results document (``sets`` with ``pairwise_disagreement``; ``weight_cosine``).

    Returns:
        ``reliability_<set>`` for id and shift sets (OOD sets have no labels to be calibrated
        against), ``uncertainty_histograms``, and for M > 1 ``pairwise_disagreement_<first id set>``
        and ``weight_cosine`` / ``weight_cosine_stored`` (when the method has them).
    """
    figures: dict[str, Figure] = {}
    title = who(results.get("method"), results.get("num_members"), results.get("run_name"))
    for name, (member_probs, targets) in collected.items():
        if roles.get(name) != "ood":
            figures[f"reliability_{name}"] = reliability_figure(name, member_probs.mean(0), targets, title=title)
    if collected:
        scores = {name: uncertainty_scores(probs) for name, (probs, _) in collected.items()}
        figures["uncertainty_histograms"] = uncertainty_histograms(scores, roles, title=title)
    id_names = [n for n in collected if roles.get(n) == "id"]
    if results.get("num_members", 1) > 1:
        if id_names:
            matrix = results["sets"][id_names[0]]["pairwise_disagreement"]
            figures[f"pairwise_disagreement_{id_names[0]}"] = heatmap_figure(
                matrix, f"{title}\npairwise disagreement ({id_names[0]})", vmin=0.0
            )
        readings = (("weight_cosine", "effective weights"), ("weight_cosine_stored", "stored parameters"))
        for key, reading in readings:
            if results.get(key) is not None:
                figures[key] = heatmap_figure(results[key], f"{title}\nweight cosine, {reading}", vmin=-1.0, vmax=1.0, cmap="RdBu_r")
    return figures


def write_figures(
    results_dir: Path,
    collected: dict[str, tuple[Tensor, Tensor]],
    roles: dict[str, str],
    results: dict[str, Any],
    loggers: Iterable[Any] = (),
    step: int = 0,
) -> list[Path]:
    """Save every figure as ``<results_dir>/figures/<name>.png`` and add it to TensorBoard loggers.

    Args:
        results_dir: the run directory.
        collected: {set name: (member_probs (M, N, C), targets (N,))}.
        roles: {set name: role}.
        results: the run's results document.
        loggers: Lightning loggers; TensorBoardLogger ones receive ``test/figures/<name>``.
        step: global step the figures are logged at.

    Returns:
        The paths of the PNG files written.
    """
    return save_run_figures(results_dir, build_figures(collected, roles, results), loggers, step)


def save_run_figures(results_dir: Path, figures: dict[str, Figure], loggers: Iterable[Any] = (), step: int = 0) -> list[Path]:
    """Save each figure as ``<results_dir>/figures/<name>.png`` and add it to TensorBoard loggers as ``test/figures/<name>``
    at global step ``step``; returns the paths of the PNG files written."""
    from lightning.pytorch.loggers import TensorBoardLogger  # Lightning only when a logger is given

    paths = []
    for name, fig in figures.items():
        paths.append(save_png(fig, Path(results_dir) / "figures" / f"{name}.png"))
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(f"test/figures/{name}", fig, global_step=step, close=False)
    return paths


def compact_number(value: float, _position: Any = None) -> str:
    """A tick label without mathtext: 20k, 1.5M, 300 (log axes of counts and rates)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def log_count_axis(axis: Any, span: float | None = None) -> None:
    """A log axis of counts or rates labelled 200k / 500k / 1M (no mathtext): 1-2-5 ticks per decade, or one
    per decade when the values ``span`` (largest / smallest) more than two decades, where 1-2-5 labels collide;
    ``axis`` is an Axes' xaxis or yaxis, after set_xscale("log") / set_yscale("log")."""
    subs = (1.0,) if span is not None and span > 100 else (1.0, 2.0, 5.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(compact_number))
    axis.set_minor_formatter(NullFormatter())  # the 2×10⁵, 3×10⁵ labels of minor ticks collide


@paper_style
def quality_cost_figure(points: list[tuple[Look, dict[str, tuple[float, float | None]]]], quality: list[str], cost: list[str]) -> Figure:
    """Quality (rows) against cost (columns, log scale), one marker per report row with mean ± std bars.

    Args:
        points: (look, {key: (mean, std or None)}) per report row: its legend name, colour and marker (the
            same as in every comparison figure), and the values its keys name.
        quality: the quality keys, one panel row each (e.g. "digits acc").
        cost: the cost keys, one panel column each (e.g. "images_per_s", "parameters").
    """
    columns = 2 if len(cost) > 1 else 1
    legend_rows = math.ceil(len(points) / columns)
    fig = Figure(figsize=(TEXT_WIDTH, 2.0 * len(quality) + 0.18 * legend_rows + 0.5), dpi=DPI)
    axes = fig.subplots(len(quality), len(cost), squeeze=False)
    for r, y_key in enumerate(quality):
        for c, x_key in enumerate(cost):
            ax = axes[r][c]
            for look, values in points:
                if x_key not in values or y_key not in values:
                    continue
                (x, x_err), (y, y_err) = values[x_key], values[y_key]
                ax.errorbar(x, y, xerr=x_err, yerr=y_err, fmt=look.marker, color=look.colour, label=look.name, capsize=2, markersize=4)
            ax.set_xscale("log")
            xs = [values[x_key][0] for _, values in points if values.get(x_key, (0,))[0] > 0]
            log_count_axis(ax.xaxis, max(xs) / min(xs) if xs else None)
            ax.set(xlabel=x_key.replace("_", " "), ylabel=y_key)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=columns, frameon=False)
    fig.suptitle("quality against cost (mean ± std over runs)")
    fig.tight_layout(rect=(0, min(0.5, (0.18 * legend_rows + 0.15) / fig.get_figheight()), 1, 0.97))
    return fig


def save_png(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG at ``path`` (its suffix replaced by .png) atomically; returns the path."""
    return save_figure(fig, Path(path).with_suffix(""), ("png",), dpi)[0]
