"""The report's Deep-Ensemble-equivalent figure: TS-NLL against Deep-Ensemble size, each row placed on the curve.

One panel per id / shift set (at most MAX_PANELS; the per-corruption sets of ``--data.per_corruption`` are left to
the tables): the TS-NLL of the Deep Ensembles of sizes 1..K assembled from the study's runs (report/de_curve.py;
mean over the subsets of each size, ± their std as a band), and each row as its marker at (its DEE, its TS-NLL),
both of the row's mean TS-NLL over its runs, so the marker sits on the curve; a row no better than one network
sits at size 1 above the curve, one beyond size K on the dashed extension of the last segment.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ensemble_lab.figures.style import TEXT_WIDTH, Look, paper_style
from ensemble_lab.metrics.de_equivalent import deep_ensemble_equivalent
from ensemble_lab.report.de_curve import Curve, Saved, de_curves, pool_of
from ensemble_lab.report.figure_rows import RunGroup

#: panels at most (id sets first, then shift sets)
MAX_PANELS = 3


def de_panels(groups: Sequence[RunGroup], docs: Sequence[Sequence[dict[str, Any]]]) -> tuple[list[str], str]:
    """The sets the figure draws (id / shift sets with an NLL, not per-corruption ones), or none and why."""
    sets: dict[str, str] = {}
    for runs in docs:
        for doc in runs:
            for name, metrics in (doc.get("sets") or {}).items():
                if isinstance(metrics, dict) and "nll" in metrics and "corrupted" not in metrics and metrics.get("role") != "ood":
                    sets.setdefault(name, str(metrics.get("role", "id")))
    ordered = [n for n, r in sets.items() if r == "id"] + [n for n, r in sets.items() if r != "id"]
    if not ordered:
        return [], "no id or shift set with an NLL"
    return ordered[:MAX_PANELS], ""


def de_equivalent_figure(
    groups: Sequence[RunGroup], seen: Sequence[Look], docs: Sequence[Sequence[dict[str, Any]]], saved: Saved | None = None
) -> tuple[Figure | None, str]:
    """The figure of the first datamodule whose rows can assemble Deep Ensembles, or None and why not.

    Args:
        groups: the report's rows (report/figure_rows.RunGroup), in table order.
        seen: each row's look (report/figure_rows.looks).
        docs: each row's runs' results.json.
        saved: the cache of saved predictions and temperatures to read through (a new one by default).
    """
    by_data: dict[Any, list[int]] = {}
    for k, runs in enumerate(docs):
        by_data.setdefault(runs[0].get("datamodule") if runs else None, []).append(k)
    why = "no SingleModel or DeepEnsemble runs to assemble Deep Ensembles from"
    saved = saved or Saved()
    for members in by_data.values():
        rows = [groups[k] for k in members]
        if not pool_of(rows)[0]:
            continue
        names, why = de_panels(rows, [docs[k] for k in members])
        curves, reasons = de_curves(rows, names, saved) if names else ({}, {})
        if not curves:
            why = why or "; ".join(f"{n}: {r}" for n, r in reasons.items())
            continue
        points = {
            name: [(seen[k], float(np.mean(ts))) for k in members if (ts := [v for run in groups[k].runs if (v := saved.run_ts_nll(run, name)) is not None])]
            for name in curves
        }
        return draw_de_figure(curves, points), ""
    hint = " (test with --save_predictions true)"
    return None, why if why.endswith(hint) else why + hint  # a curve's reason may already carry the hint


@paper_style
def draw_de_figure(curves: dict[str, Curve], points: dict[str, list[tuple[Look, float]]]) -> Figure:
    """TS-NLL against Deep-Ensemble size per set, a marker per row at its DEE.

    Args:
        curves: {set: the assembled Deep Ensembles' curve}.
        points: {set: [(row look, row's mean TS-NLL)]}.
    """
    looks = list(dict.fromkeys(look for rows in points.values() for look, _ in rows))
    fig = Figure(figsize=(TEXT_WIDTH, 2.4 + 0.14 * ((len(looks) + 2) // 3)), layout="constrained")
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (name, curve) in zip(axes, curves.items()):
        sizes, mean, std = np.arange(1, len(curve.ts_nll) + 1), np.array(curve.ts_nll), np.array(curve.std)
        ax.plot(sizes, mean, color="0.35", marker=".", label="Deep Ensemble of size k" if ax is axes[0] else None)
        ax.fill_between(sizes, mean - std, mean + std, color="0.35", alpha=0.15, linewidth=0)
        furthest = float(sizes[-1])
        for look, value in points.get(name, []):
            dee = deep_ensemble_equivalent(curve.ts_nll, value)
            if dee is None:
                continue
            furthest = max(furthest, dee)
            ax.plot([dee], [value], linestyle="none", marker=look.marker, color=look.colour, markersize=6, markeredgecolor="white",
                    markeredgewidth=0.5, label=look.name if ax is axes[0] else None)  # fmt: skip
        if furthest > sizes[-1] and len(sizes) > 1:  # rows beyond K: the extension of the last segment they were read from
            slope = mean[-1] - mean[-2]
            ax.plot([sizes[-1], furthest], [mean[-1], mean[-1] + slope * (furthest - sizes[-1])], color="0.35", linestyle="--", linewidth=0.8)
        ax.set(xlabel="Deep-Ensemble size (networks, log scale)", ylabel="NLL after temperature scaling", title=name)
        ax.set_xscale("log", base=2)  # the sizes where rows land (1 to M) get most of the width
        ticks = [t for t in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if t <= furthest * 1.05]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlim(0.9, furthest * 1.1)
    source = "single runs and DeepEnsemble members" if any(c.with_de_members for c in curves.values()) else "single runs"
    pool = max(c.pool for c in curves.values())
    fig.suptitle(f"Each row at the size of a Deep Ensemble with its TS-NLL (Deep Ensembles drawn from {pool} networks: {source})")
    fig.legend(loc="outside lower center", ncols=3)
    return fig
