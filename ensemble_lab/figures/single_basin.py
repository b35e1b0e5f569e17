"""The single-basin figures (Lion et al. 2024): quality against how connected an ensemble's members are.

``barrier_figure``: accuracy and NLL against the mean loss barrier between members, one marker per run, filled
at the raw barrier and hollow at the barrier after weight matching (a thin line joins a run's two).
``spawn_figure``: accuracy, NLL, disagreement and the barrier against the epoch t the members were spawned at;
the rows without a t (BatchEnsemble, a distilled student, a single model) are dashed horizontal lines at their mean.
Both take plain numbers gathered by ``ensemble_lab.report.single_basin``.
"""

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ensemble_lab.figures.style import TEXT_WIDTH, Look, paper_style
from ensemble_lab.metrics.registry import label as axis_label


@dataclass(frozen=True)
class RunPoint:
    """One run's numbers on one test set."""

    acc: float | None
    nll: float | None
    disagreement: float | None
    barrier: float | None  # mean chord loss barrier between members (raw)
    aligned: float | None  # the same after weight matching; None when not measured
    spawn_epoch: int | None  # the epoch its members were spawned at (0: apart from the start); None: no such axis


def _numbers(values: Sequence[float | None]) -> np.ndarray:
    return np.array([v for v in values if v is not None], dtype=float)


def _height(rows: int, least: float) -> float:
    """A figure height (inches) that fits a legend of ``rows`` rows (two lines each at most) and its three keys."""
    return max(least, 0.34 * (rows + 3) + 0.4)


def _legend(ax: Axes, looks: Sequence[Look], extra: Sequence[Line2D]) -> None:
    """Every row's marker, then what the marker kinds and lines mean, in the spare axes ``ax``."""
    ax.set_axis_off()
    handles = [Line2D([], [], color=k.colour, marker=k.marker, linestyle="none", label="\n".join(textwrap.wrap(k.name, 28))) for k in looks]
    ax.legend(handles=[*handles, *extra], loc="center", fontsize="small", frameon=False, borderaxespad=0)


@paper_style
def barrier_figure(rows: Sequence[tuple[Look, Sequence[RunPoint]]], set_name: str) -> Figure:
    """Accuracy and NLL of ``set_name`` (y) against the mean loss barrier (x), one marker per run and barrier kind."""
    fig = Figure(figsize=(TEXT_WIDTH, _height(len(rows), 2.8)), layout="constrained")
    grid = fig.add_gridspec(1, 3, width_ratios=[1.0, 1.0, 0.9])
    axes = [fig.add_subplot(grid[0, k]) for k in range(2)]
    for ax, metric in zip(axes, ("acc", "nll")):
        for look, points in rows:
            for point in points:
                y = getattr(point, metric)
                if y is None or point.barrier is None:
                    continue
                ax.scatter([point.barrier], [y], color=look.colour, marker=look.marker, s=22, zorder=3)
                if point.aligned is not None:
                    ax.plot([point.barrier, point.aligned], [y, y], color=look.colour, linewidth=0.6, alpha=0.5, zorder=2)
                    ax.scatter([point.aligned], [y], facecolors="none", edgecolors=look.colour, marker=look.marker, s=22, zorder=3)
        ax.set(xlabel="mean loss barrier", ylabel=axis_label(metric))
    kinds = [
        Line2D([], [], color="0.3", marker="o", linestyle="none", label="raw barrier"),
        Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="none", label="aligned barrier\n(weight matching)"),
    ]
    _legend(fig.add_subplot(grid[0, 2]), [look for look, _ in rows], kinds)
    fig.suptitle(f"{set_name}: quality against the barrier between members (one marker per run)")
    return fig


@paper_style
def spawn_figure(rows: Sequence[tuple[Look, Sequence[RunPoint]]], set_name: str) -> Figure:
    """Accuracy, NLL, disagreement and loss barrier (y) against the spawn epoch t (x): per run a marker, per row
    with a t its mean as a line; the other rows as dashed horizontal lines at their mean."""
    fig = Figure(figsize=(TEXT_WIDTH, _height(len(rows), 4.4)), layout="constrained")
    grid = fig.add_gridspec(2, 3, width_ratios=[1.0, 1.0, 0.9])
    axes = [fig.add_subplot(grid[k // 2, k % 2]) for k in range(4)]
    spawned = [(look, points) for look, points in rows if any(p.spawn_epoch is not None for p in points)]
    others = [(look, points) for look, points in rows if all(p.spawn_epoch is None for p in points)]
    panels = (("acc", "acc"), ("nll", "nll"), ("disagreement", "disagreement"), ("barrier", "mean loss barrier"))
    for ax, (metric, title) in zip(axes, panels):
        # every spawned row's runs, one marker each, and one line through the means at each t
        ts = sorted({p.spawn_epoch for _, points in spawned for p in points if p.spawn_epoch is not None})
        means = []
        for look, points in spawned:
            xs = [p.spawn_epoch for p in points if getattr(p, metric) is not None and p.spawn_epoch is not None]
            ys = [getattr(p, metric) for p in points if getattr(p, metric) is not None and p.spawn_epoch is not None]
            ax.scatter(xs, ys, color=look.colour, marker=look.marker, s=18, zorder=3)
            means += [(x, y) for x, y in zip(xs, ys)]
            if metric == "barrier":
                aligned = [(p.spawn_epoch, p.aligned) for p in points if p.aligned is not None and p.spawn_epoch is not None]
                ax.scatter([a for a, _ in aligned], [b for _, b in aligned], facecolors="none", edgecolors=look.colour, marker=look.marker, s=18, zorder=3)
        line = [(t, float(np.mean([y for x, y in means if x == t]))) for t in ts if any(x == t for x, _ in means)]
        if line:
            ax.plot([t for t, _ in line], [y for _, y in line], color="0.3", linewidth=0.8, zorder=2)
        for look, points in others:
            values = _numbers([getattr(p, metric) for p in points])
            if values.size:
                ax.axhline(float(values.mean()), color=look.colour, linestyle="--", linewidth=1.0)
        ax.set(xlabel="spawn epoch t", ylabel=axis_label(title) if metric != "barrier" else title)
    kinds = [Line2D([], [], color="0.3", linewidth=0.8, label="mean over runs at each t"),
             Line2D([], [], color="0.3", linestyle="--", linewidth=1.0, label="rows without t:\ntheir mean"),
             Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="none", label="aligned barrier")]  # fmt: skip
    _legend(fig.add_subplot(grid[:, 2]), [look for look, _ in rows], kinds)
    fig.suptitle(f"{set_name}: against the spawn epoch t (members shared the first t epochs)")
    return fig
