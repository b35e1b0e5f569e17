"""The report's severity figure: accuracy, NLL and ECE against corruption severity, one line per row.

Read from results.json alone: the per-corruption sets (``--data.per_corruption true``) record their
``corrupted`` dataset, ``corruption`` and ``severity`` beside their role (evaluation/corrupted_sets.py). At
each severity a run's value is the mean over the corruptions evaluated at it; the line is the mean over the
row's runs, with the sample std over runs as error bars. One figure per corrupted dataset with more than one
severity: ``severity_<corrupted>`` (e.g. ``severity_cifar10c``). MNIST-C has one severity (recorded as
null) and so no figure.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ensemble_lab.figures.style import TEXT_WIDTH, Look, paper_style
from ensemble_lab.metrics.registry import label

#: the panels of the figure, left to right
SEVERITY_METRICS = ("acc", "nll", "ece")


def run_severity_means(doc: dict[str, Any], corrupted: str, metric: str) -> dict[int, float]:
    """{severity: mean of ``metric`` over the corruptions of ``corrupted`` evaluated at it} of one run's results.json."""
    found: dict[int, list[float]] = {}
    for metrics in (doc.get("sets") or {}).values():
        if not isinstance(metrics, dict) or metrics.get("corrupted") != corrupted:
            continue
        severity, value = metrics.get("severity"), metrics.get(metric)
        if isinstance(severity, int) and isinstance(value, (int, float)):
            found.setdefault(severity, []).append(float(value))
    return {s: float(np.mean(v)) for s, v in sorted(found.items())}


def corrupted_datasets(docs: Sequence[dict[str, Any]]) -> list[str]:
    """The corrupted datasets whose per-corruption sets span more than one severity in ``docs``, in order of appearance."""
    severities: dict[str, set[int]] = {}
    for doc in docs:
        for metrics in (doc.get("sets") or {}).values():
            if isinstance(metrics, dict) and isinstance(metrics.get("corrupted"), str) and isinstance(metrics.get("severity"), int):
                severities.setdefault(metrics["corrupted"], set()).add(metrics["severity"])
    return [name for name, levels in severities.items() if len(levels) > 1]


@paper_style
def severity_figure(lines: Sequence[tuple[Look, Sequence[dict[str, Any]]]], corrupted: str) -> Figure:
    """acc / NLL / ECE of ``corrupted``'s sets against severity, one line per (look, runs' results.json)."""
    fig = Figure(figsize=(TEXT_WIDTH, 2.3), layout="constrained")
    axes = fig.subplots(1, len(SEVERITY_METRICS) + 1)
    for ax, metric in zip(axes, SEVERITY_METRICS):
        for look, docs in lines:
            per_run = [run_severity_means(d, corrupted, metric) for d in docs]
            levels = sorted({s for r in per_run for s in r})
            values = [[r[s] for r in per_run if s in r] for s in levels]
            mean = [float(np.mean(v)) for v in values]
            std = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values]
            ax.errorbar(levels, mean, yerr=std, color=look.colour, marker=look.marker, linestyle=look.linestyle, capsize=2)
        ax.set(xlabel="severity", ylabel=label(metric), title=f"{corrupted} {label(metric)}")
        ax.set_xticks(range(1, 6))
        ax.ticklabel_format(axis="y", useOffset=False)  # values, not an offset plus tiny differences
    legend = axes[-1]
    legend.set_axis_off()
    for look, _ in lines:
        legend.plot([], [], color=look.colour, marker=look.marker, linestyle=look.linestyle, label=look.name)
    legend.legend(loc="center left")
    fig.suptitle(f"{corrupted} by severity, mean over corruptions (mean ± std over seeds)")
    return fig


def severity_figures(seen: Sequence[Look], docs: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Figure]:
    """``severity_<corrupted>`` for every corrupted dataset the runs evaluated at several severities; ``docs``:
    each row's runs' results.json, in the order of ``seen``."""
    figures = {}
    for corrupted in corrupted_datasets([d for runs in docs for d in runs]):
        lines = [(look, runs) for look, runs in zip(seen, docs) if any(run_severity_means(d, corrupted, "acc") for d in runs)]
        figures[f"severity_{corrupted}"] = severity_figure(lines, corrupted)
    return figures
