"""Per-epoch validation curves of runs, read back from their TensorBoard event files, and mean ± std over seeds.

A run directory holds one event file per Lightning session (fit, the test after it, every resume).
The files are read oldest first and merged by step: a step logged again by a later session (a run
resumed from a checkpoint re-logs the steps after it) keeps the later value. Lightning logs the scalar
``epoch`` at the step of every validation, which turns steps into epochs.
"""

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ensemble_lab.metrics.registry import REGRESSION_VAL_CURVES, VAL_CURVES

#: the curves of the comparison figure: what the mixin logs each validation epoch, and the weight cosine
CURVE_TAGS = tuple(f"val/{k}" for k in VAL_CURVES if k != "ece") + ("val/weight_cosine",)
#: the curves of a regression run's training: its validation NLL (of the mixture), rmse, crps and epistemic share
REGRESSION_CURVE_TAGS = tuple(f"val/{k}" for k in REGRESSION_VAL_CURVES) + ("val/weight_cosine",)
EPOCH_TAG = "epoch"


def event_files(run_dir: Path) -> list[Path]:
    """The TensorBoard event files directly in ``run_dir``, oldest first (their names start with the wall time)."""

    def started(path: Path) -> tuple[int, int, str]:
        parts = path.name.split(".")  # events.out.tfevents.<unix time>.<host>.<pid>.<count>
        number = lambda part: int(part) if part.isdigit() else 0
        return number(parts[3]) if len(parts) > 3 else 0, number(parts[-1]), path.name

    return sorted(Path(run_dir).glob("events.out.tfevents.*"), key=started)


def read_scalars(run_dir: Path, tags: Sequence[str]) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of ``tags`` (and ``epoch``) in a run's event files, merged by step (later files win).

    Tags no file has are left out; a run without event files gives {}.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # type: ignore[import-untyped]  # heavy: import when reading

    merged: dict[str, dict[int, float]] = {}
    for path in event_files(run_dir):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every event, not a sample
        events.Reload()
        present = set(events.Tags().get("scalars", ()))
        for tag in (*tags, EPOCH_TAG):
            if tag in present:
                merged.setdefault(tag, {}).update({e.step: float(e.value) for e in events.Scalars(tag)})
    return merged


def per_epoch(scalars: dict[str, dict[int, float]], tag: str) -> dict[int, float]:
    """{epoch (1-based: epochs trained): value} of ``tag``; by step when the run logged no epoch."""
    values = scalars.get(tag, {})
    epochs = scalars.get(EPOCH_TAG)
    if not epochs:
        return dict(values)
    return {int(epochs[step]) + 1: value for step, value in sorted(values.items()) if step in epochs}


def has_epochs(scalars: dict[str, dict[int, float]]) -> bool:
    """Whether steps could be turned into epochs (the x axis is "epoch", else "step")."""
    return bool(scalars.get(EPOCH_TAG))


def mean_std(curves: Sequence[dict[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, std, runs) over the runs' curves at every x some run has; std is 0 where one run has it.

    std is the sample std (ddof = 1), as in the report's tables; ``runs`` counts the runs at each x
    (early stopping ends runs at different epochs). Non-finite values are left out.
    """
    xs = sorted({x for curve in curves for x in curve})
    table = np.full((len(curves), len(xs)), np.nan)  # (runs, x)
    for r, curve in enumerate(curves):
        for i, x in enumerate(xs):
            value = curve.get(x, math.nan)
            table[r, i] = value if math.isfinite(value) else math.nan
    runs = np.isfinite(table).sum(0)  # (x,)
    keep = runs > 0
    table, runs = table[:, keep], runs[keep]
    mean = np.nanmean(table, axis=0) if table.size else np.zeros(0)
    std = np.zeros_like(mean)
    several = runs > 1
    if several.any():
        std[several] = np.nanstd(table[:, several], axis=0, ddof=1)
    return np.asarray(xs, dtype=float)[keep], mean, std, runs
