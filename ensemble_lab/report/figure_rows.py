"""The report's rows as its comparison figures take them, and what the figures read from their runs.

A :class:`RunGroup` is one row of the report; :func:`looks` gives each its colour, marker and line style (the
same in every figure); the runs' results.json and saved predictions are read here.
"""

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ensemble_lab.figures.style import LINESTYLES, MARKERS, Look, label_colours


@dataclass(frozen=True)
class RunGroup:
    """One row of the report: runs trained alike (seeds aside)."""

    name: str  # the table's row name (label, variant, M), used in legends
    label: str  # the method label (study method name, else class name): colours are per label, stable across figures
    method: str | None  # the method class name, e.g. "BatchEnsemble"
    num_members: int | None
    runs: tuple[Path, ...]  # run directories, each holding results.json, maybe predictions/<set>.npz, TensorBoard event files
    # the options its runs were trained with (flat, seeds aside); None if unrecorded. Not compared: a row stays hashable
    config: Mapping[str, Any] | None = field(default=None, compare=False)


def skip(figure: str, why: str) -> None:
    """Say on stderr that a figure was not drawn, why and how to get it."""
    print(f"ensemble-lab report: no {figure} figure: {why}", file=sys.stderr)


def looks(groups: Sequence[RunGroup]) -> list[Look]:
    """Each group's look: its label's colour and marker; groups sharing a label get line styles in order of M."""
    colours = label_colours((g.label, g.method) for g in groups)
    result = []
    for g in groups:
        siblings = sorted((h for h in groups if h.label == g.label), key=lambda h: (h.num_members or 0, h.name))
        name = g.name if g.num_members is None or f"M={g.num_members}" in g.name else f"{g.name}, M={g.num_members}"
        colour, marker = colours[g.label]
        k = siblings.index(g)  # rows of one label keep its colour; the marker and line style tell them apart
        result.append(Look(name, colour, MARKERS[(MARKERS.index(marker) + 5 * k) % len(MARKERS)], LINESTYLES[k % len(LINESTYLES)]))
    return result


def run_results(run: Path) -> dict[str, Any]:
    """A run's results.json as a dict ({} when it is missing or unreadable)."""
    try:
        document = json.loads((Path(run) / "results.json").read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def saved_predictions(run: Path, set_name: str) -> tuple[Tensor, Tensor] | None:
    """A run's saved member probabilities (M, N, C) and targets (N,) of one set, or None (also for a regression run's file)."""
    path = Path(run) / "predictions" / f"{set_name}.npz"
    if not path.is_file():
        return None
    with np.load(path) as saved:
        if "member_probs" not in saved.files:
            return None
        return torch.from_numpy(saved["member_probs"]), torch.from_numpy(saved["targets"])


def saved_regression(run: Path, set_name: str) -> tuple[Tensor, Tensor, Tensor] | None:
    """A regression run's saved member means and variances (M, N, D) and targets (N, D) of one set, original units, or None."""
    path = Path(run) / "predictions" / f"{set_name}.npz"
    if not path.is_file():
        return None
    with np.load(path) as saved:
        if "mean" not in saved.files:
            return None
        return torch.from_numpy(saved["mean"]), torch.from_numpy(saved["var"]), torch.from_numpy(saved["targets"])


def regression_sets(docs: Sequence[dict[str, Any]]) -> set[str]:
    """The names of the sets that some run measured as regression (its metrics have ``rmse``)."""
    return {name for doc in docs for name, m in (doc.get("sets") or {}).items() if isinstance(m, dict) and "rmse" in m}


def set_roles(docs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """{set name: role} over all runs, in the order the sets first appear."""
    roles: dict[str, str] = {}
    for doc in docs:
        for name, metrics in (doc.get("sets") or {}).items():
            if isinstance(metrics, dict):
                roles.setdefault(name, str(metrics.get("role", "id")))
    return roles
