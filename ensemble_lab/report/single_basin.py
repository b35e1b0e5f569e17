"""The single-basin figures of a report: each run's quality on the first id set beside its members' loss
barrier (connectivity.json: raw, and aligned where measured) and the epoch its members were spawned at.

A run's spawn epoch t is results.json's ``spawn_epoch`` (a run with ``--model.spawn_from``); a Deep Ensemble
trained without one has t = 0 (its members start apart); every other run has no t. The drawing is
figures/single_basin.py.
"""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ensemble_lab.figures.single_basin import RunPoint, barrier_figure, spawn_figure
from ensemble_lab.figures.style import Look
from ensemble_lab.report.figure_rows import RunGroup, run_results, skip
from ensemble_lab.report.reading import read_document


def _number(value: Any) -> float | None:
    """A finite float, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def spawn_epoch_of(doc: dict[str, Any]) -> int | None:
    """The epoch a run's members were spawned at: its recorded ``spawn_epoch``, 0 for a Deep Ensemble trained
    without a parent, None for every other run (and for an assembled Deep Ensemble, whose members' runs say)."""
    epoch = doc.get("spawn_epoch")
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        return epoch
    if doc.get("method") == "DeepEnsemble" and not doc.get("member_checkpoints") and not doc.get("spawn_from"):
        return 0
    return None


def run_point(run: Path, doc: dict[str, Any], set_name: str) -> RunPoint:
    """A run's numbers on ``set_name`` with its barriers (None where it has no connectivity.json)."""
    metrics = (doc.get("sets") or {}).get(set_name) or {}
    connectivity = read_document(run / "connectivity.json") if (run / "connectivity.json").exists() else None
    barriers = connectivity or {}
    return RunPoint(
        acc=_number(metrics.get("acc")),
        nll=_number(metrics.get("nll")),
        disagreement=_number(metrics.get("disagreement")),
        barrier=_number(barriers.get("barrier_loss_mean")),
        aligned=_number(barriers.get("aligned_barrier_loss_mean")),
        spawn_epoch=spawn_epoch_of(doc),
    )


def single_basin_figures(groups: Sequence[RunGroup], seen: Sequence[Look], roles: dict[str, str]) -> dict[str, Figure]:
    """``single_basin_<set>`` (acc, NLL against the barrier) and ``spawn_<set>`` (against t) for the first id set."""
    id_set = next((name for name, role in roles.items() if role == "id"), None)
    if id_set is None:
        return {}
    rows = []
    for group, look in zip(groups, seen):
        points = [run_point(run, doc, id_set) for run in group.runs if (doc := run_results(run))]
        if points:
            rows.append((look, points))
    figures = {}
    with_barriers = [(look, kept) for look, points in rows if (kept := [p for p in points if p.barrier is not None])]
    if with_barriers:  # a row without a connectivity.json is neither drawn nor in the legend
        figures[f"single_basin_{id_set}"] = barrier_figure(with_barriers, id_set)
    else:
        skip(f"single_basin_{id_set}", "no run has a connectivity.json (run ensemble-lab connectivity, or a study with connectivity:)")
    if len({p.spawn_epoch for _, points in rows for p in points if p.spawn_epoch is not None}) > 1:
        figures[f"spawn_{id_set}"] = spawn_figure(rows, id_set)
    else:
        skip(f"spawn_{id_set}", "fewer than two spawn epochs among the runs (train Deep Ensembles with --model.spawn_from)")
    return figures
