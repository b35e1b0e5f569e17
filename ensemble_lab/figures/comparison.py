"""Figures that compare methods (one series per report row), drawn from numbers already gathered.

Each function returns a ``matplotlib.figure.Figure`` (no pyplot) and takes plain data, one
:class:`~ensemble_lab.figures.style.Look` per row: ``ensemble_lab.report.figures`` reads the runs, these draw.
"""

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from ensemble_lab.figures.per_run import draw_reliability, log_count_axis, reliability_axes
from ensemble_lab.figures.style import COLUMN_WIDTH, TEXT_WIDTH, Look, paper_style
from ensemble_lab.metrics.ood import ood_detection
from ensemble_lab.metrics.registry import label as axis_label

#: most reliability panels in one row of the comparison
PANELS_PER_ROW = 4
#: most markers on one validation curve: a longer run marks every k-th epoch, each row from its own offset
CURVE_MARKERS = 8
#: the edge width of the curves' open markers, and the sizes of the last and the first row's (points)
CURVE_MARKER_EDGE = 0.8
CURVE_MARKER_SIZES = (3.0, 6.0)


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _legend_beside(ax: Axes, looks: Sequence[Look], markers: bool = True, hollow: bool = False) -> None:
    """A legend of every look in the spare axes ``ax`` (its frame hidden); lines only when not ``markers``, open markers if ``hollow``."""
    ax.set_axis_off()
    face: dict[str, Any] = {"markerfacecolor": "none", "markeredgewidth": CURVE_MARKER_EDGE} if hollow else {}
    handles = [ax.plot([], [], color=k.colour, marker=k.marker if markers else "", linestyle=k.linestyle, **face)[0] for k in looks]
    ax.legend(handles, [_wrap(k.name, 30) for k in looks], loc="center", borderaxespad=0)


@paper_style
def reliability_comparison(panels: Sequence[tuple[Look, Tensor, Tensor, int]], set_name: str, num_bins: int = 15) -> Figure:
    """One reliability diagram (with its samples per bin below) per report row, side by side.

    Args:
        panels: (look, p̄ (N, C), targets (N,), runs pooled) per row; the ECE in each title is of those pooled samples.
        set_name: the test set, for the title.
        num_bins: confidence bins of the diagrams and the ECE.
    """
    columns = min(len(panels), PANELS_PER_ROW)
    rows = math.ceil(len(panels) / columns)
    width = COLUMN_WIDTH if columns == 1 else TEXT_WIDTH * min(1.0, 0.3 + 0.175 * columns)
    fig = Figure(figsize=(width, rows * width / columns * 1.45 + 0.3), layout="constrained")
    grid = fig.add_gridspec(rows, columns)
    names = [_wrap(look.name, 26) for look, _, _, _ in panels]
    lines = max(name.count("\n") for name in names)
    for k, ((look, probs, targets, runs), name) in enumerate(zip(panels, names)):
        ax, ax_count = reliability_axes(fig, grid[k // columns, k % columns])
        ece = draw_reliability(ax, ax_count, probs, targets, num_bins, colour=look.colour)
        pooled = f"{runs} runs pooled" if runs > 1 else "1 run"
        padding = "\n" * (lines - name.count("\n"))  # titles of equal height keep the panels aligned
        ax.set_title(f"{padding}{name}\nECE {ece:.3f} ({pooled})")
        if k % columns:
            ax.set_ylabel("")
            ax_count.set_ylabel("")
    fig.suptitle(_wrap(f"reliability on {set_name} (grey: gap to the bin's confidence; below: samples per bin)", int(width * 15)))
    return fig


#: one row of an OOD figure: (look, id scores (N_id,), ood scores (N_ood,)), higher = more OOD
OodRow = tuple[Look, Tensor, Tensor]
#: the OOD figures of each score: ROC and precision-recall
OOD_KINDS = ("roc", "pr")


def ood_curve(id_scores: Tensor, ood_scores: Tensor, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) points of separating ``ood_scores`` (the positive class) from ``id_scores``, as the figures draw them.

    Args:
        id_scores: the in-distribution samples' scores (N_id,).
        ood_scores: the OOD samples' scores (N_ood,); higher = more OOD.
        kind: "roc" (x: false-positive rate, y: true-positive rate) or "pr" (x: recall, y: precision).
    """
    from sklearn.metrics import precision_recall_curve, roc_curve  # heavy: only when drawing

    if kind not in OOD_KINDS:
        raise ValueError(f"an OOD curve is roc or pr, got {kind!r}")
    labels = np.concatenate([np.zeros(id_scores.numel()), np.ones(ood_scores.numel())])  # (N_id + N_ood,)
    scores = np.concatenate([id_scores.cpu().numpy(), ood_scores.cpu().numpy()])  # (N_id + N_ood,)
    if kind == "roc":
        x, y, _ = roc_curve(labels, scores)
        return x, y
    y, x, _ = precision_recall_curve(labels, scores)
    return x, y


@paper_style
def ood_curve_figure(curves: Sequence[OodRow], kind: str, ood_set: str, id_set: str, score: str) -> Figure:
    """ROC (``kind="roc"``) or precision-recall (``"pr"``) curves of separating ``ood_set`` from ``id_set``, one per row.

    Args:
        curves: (look, id scores (N_id,), ood scores (N_ood,)) per row; OOD is the positive class, higher = more OOD.
        kind: "roc" or "pr".
        ood_set: the OOD set, for the title.
        id_set: the in-distribution set, for the title.
        score: the uncertainty score's name (msp, entropy, mi), for the title.
    """
    names = [_wrap(look.name, 44) for look, _, _ in curves]
    legend_lines = sum(name.count("\n") + 1 for name in names) + 1
    fig = Figure(figsize=(COLUMN_WIDTH, 2.6 + 0.13 * legend_lines), layout="constrained")
    ax = fig.add_subplot()
    positives = 0.0
    for (look, id_scores, ood_scores), name in zip(curves, names):
        x, y = ood_curve(id_scores, ood_scores, kind)
        positives = ood_scores.numel() / (id_scores.numel() + ood_scores.numel())
        value = ood_detection(id_scores, ood_scores)["auroc" if kind == "roc" else "aupr"]
        ax.plot(x, y, color=look.colour, linestyle=look.linestyle, label=f"{name}: {value:.3f}")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        ax.set(xlabel="false-positive rate (id)", ylabel="true-positive rate (ood)")
        heading = "AUROC"
    else:
        ax.axhline(positives, color="grey", linestyle=":", linewidth=0.8)  # a random score's precision
        ax.set(xlabel="recall (ood)", ylabel="precision")
        heading = "AUPR"
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    fig.legend(loc="outside lower center", title=f"{heading} (runs pooled)", title_fontsize=7)
    ax.set_title(f"{ood_set} vs {id_set}, score: {score}")
    return fig


def ood_curve_figures(curves: Mapping[str, Sequence[OodRow]], ood_set: str, id_set: str) -> dict[str, Figure]:
    """``ood_roc_<ood_set>_<score>`` and ``ood_pr_<ood_set>_<score>`` of every score with rows (a score without any is left out).

    Args:
        curves: {score: its rows (:data:`OodRow`)}, e.g. {"msp": [...], "mi": [...]}.
        ood_set: the OOD set, for the names and titles.
        id_set: the in-distribution set, for the titles.
    """
    return {f"ood_{kind}_{ood_set}_{score}": ood_curve_figure(rows, kind, ood_set, id_set, score)
            for score, rows in curves.items() if rows for kind in OOD_KINDS}  # fmt: skip


@paper_style
def risk_coverage_figure(curves: Sequence[tuple[Look, Tensor, Tensor, float]], set_name: str, score: str = "msp") -> Figure:
    """Risk–coverage curves of a confidence score on one set, one line per report row (metrics/selective.py).

    Args:
        curves: (look, coverage (N,), risk (N,), AURC) per row, its runs' samples pooled.
        set_name: the test set, for the title.
        score: the confidence score's name, for the title.
    """
    names = [_wrap(look.name, 44) for look, _, _, _ in curves]
    legend_lines = sum(name.count("\n") + 1 for name in names) + 1
    fig = Figure(figsize=(COLUMN_WIDTH, 2.6 + 0.13 * legend_lines), layout="constrained")
    ax = fig.add_subplot()
    top = 0.0
    for (look, coverage, risk, aurc), name in zip(curves, names):
        x, y = coverage.cpu().numpy(), risk.cpu().numpy()
        ax.plot(x, y, color=look.colour, linestyle=look.linestyle, label=f"{name}: {aurc:.4f}")
        top = max(top, float(y[len(y) // 20 :].max()))  # the first 5 % (a handful of samples) may jump to 1
    ax.set(xlim=(0, 1), ylim=(0, min(1.0, top * 1.1) or 1.0), xlabel="coverage (share of samples answered)",
           ylabel="risk (error rate among them)")  # fmt: skip
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", title="AURC (runs pooled)", title_fontsize=7)
    ax.set_title(f"risk–coverage on {set_name}, confidence: {score}")
    return fig


@paper_style
def diversity_figure(points: Sequence[tuple[Look, Sequence[dict[str, Any]]]], set_name: str, axes: Sequence[tuple[str, str]]) -> Figure:
    """Diversity (x) against quality (y), one marker per run, one colour per label; a panel per (x, y) pair.

    Args:
        points: (look, the runs' metrics of this set, as in results.json) per row.
        set_name: the test set, for the title.
        axes: (x metric, y metric) per panel, e.g. (("disagreement", "acc"), ("mi", "nll")).
    """
    fig = Figure(figsize=(TEXT_WIDTH, 2.5), layout="constrained")
    grid = fig.add_gridspec(1, len(axes) + 1, width_ratios=[1.0] * len(axes) + [0.85])
    for k, (x_key, y_key) in enumerate(axes):
        ax = fig.add_subplot(grid[0, k])
        for look, runs in points:
            pairs = [(m.get(x_key), m.get(y_key)) for m in runs]
            xy = np.array([p for p in pairs if all(isinstance(v, (int, float)) for v in p)], dtype=float).reshape(-1, 2)  # (runs, 2)
            ax.scatter(xy[:, 0], xy[:, 1], color=look.colour, marker=look.marker, s=18, alpha=0.85, edgecolors="none")
        ax.set(xlabel=axis_label(x_key), ylabel=axis_label(y_key))
    _legend_beside(fig.add_subplot(grid[0, -1]), [Look(look.name, look.colour, look.marker, "none") for look, _ in points])
    fig.suptitle(f"diversity against quality on {set_name} (one marker per run)")
    return fig


@paper_style
def training_curves_figure(series: Sequence[tuple[Look, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]],
                           tags: Sequence[str], x_label: str = "epoch") -> Figure:  # fmt: skip
    """Per-epoch curves, mean line and ± std band over each row's runs; a panel per tag. Each line carries its row's
    marker, open, at most CURVE_MARKERS of them, so lines that coincide stay told apart.

    Args:
        series: (look, {tag: (x, mean, std, runs) from training_curves.mean_std}) per row.
        tags: the tags, one panel each, e.g. "val/acc".
        x_label: the x axis ("epoch", or "step" for runs without an epoch scalar).
    """
    columns = 3
    rows = math.ceil((len(tags) + 1) / columns)
    fig = Figure(figsize=(TEXT_WIDTH, 2.0 * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, tag in zip(axes, tags):
        for row, (look, curves) in enumerate(series):
            if tag not in curves or not len(curves[tag][0]):
                continue
            x, mean, std, _ = curves[tag]
            # open markers, each row's own shape, at staggered epochs, the later rows' smaller: a row whose curve lies on
            # another's (the Deep Ensemble's and the Packed Ensemble's weight cosine, both ≈ 0) still shows around it
            step = max(1, math.ceil(len(x) / CURVE_MARKERS))
            size = CURVE_MARKER_SIZES[1] - (CURVE_MARKER_SIZES[1] - CURVE_MARKER_SIZES[0]) * row / max(1, len(series) - 1)
            ax.plot(x, mean, color=look.colour, linestyle=look.linestyle, marker=look.marker, markevery=(row % step, step),
                    markersize=size, markerfacecolor="none", markeredgewidth=CURVE_MARKER_EDGE)  # fmt: skip
            ax.fill_between(x, mean - std, mean + std, color=look.colour, alpha=0.2, linewidth=0)
        key = tag.removeprefix("val/")
        ax.set(xlabel=x_label, ylabel=axis_label(key), title=tag)
    for ax in axes[len(tags) + 1 :]:
        ax.set_axis_off()
    _legend_beside(axes[len(tags)], [look for look, _ in series], hollow=True)
    fig.suptitle("validation curves during training (mean ± std over seeds)")
    return fig


@paper_style
def sweep_figure(
    lines: Sequence[tuple[Look, Sequence[tuple[float, Sequence[Sequence[float]]]]]],
    panels: Sequence[tuple[str, str]],
    xlabel: str,
    title: str,
) -> Figure:
    """Metrics against a size (members M, parameters per member, ...), one line per label, mean ± std bars over runs.

    Args:
        lines: (look, [(size, [per panel: the runs' values])]) per label; panel values line up with ``panels``.
        panels: (set name or "", metric) per panel, e.g. ("digits", "acc").
        xlabel: what the size is; "members M" gets base-2 ticks at every M, anything else 1-2-5 ticks per decade.
        title: the figure's title, before "(mean ± std over seeds)".
    """
    columns = 3
    rows = math.ceil((len(panels) + 1) / columns)
    fig = Figure(figsize=(TEXT_WIDTH, 2.0 * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    sizes = sorted({x for _, points in lines for x, _ in points})
    for p, (set_name, metric) in enumerate(panels):
        ax = axes[p]
        for look, points in lines:
            stats = [(x, np.mean(v[p]), np.std(v[p], ddof=1) if len(v[p]) > 1 else 0.0) for x, v in sorted(points) if v[p]]
            if stats:
                x, mean, std = (np.array(c, dtype=float) for c in zip(*stats))
                ax.errorbar(x, mean, yerr=std, color=look.colour, marker=look.marker, linestyle=look.linestyle, capsize=2)
        if xlabel == "members M":
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [str(int(m)) for m in sizes])
            ax.minorticks_off()
        else:
            ax.set_xscale("log")
            log_count_axis(ax.xaxis, sizes[-1] / sizes[0] if sizes and sizes[0] > 0 else None)
        label = axis_label(metric)
        ax.set(xlabel=xlabel, ylabel=label, title=f"{set_name} {metric}" if set_name else label)
    for ax in axes[len(panels) + 1 :]:
        ax.set_axis_off()
    _legend_beside(axes[len(panels)], [look for look, _ in lines])
    fig.suptitle(f"{title} (mean ± std over seeds)")
    return fig
