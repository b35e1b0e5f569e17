"""Result files: results.json, results.csv and predictions/<set>.npz, written atomically."""

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ensemble_lab.errors import EnsembleLabError
from ensemble_lab.io import atomic_write_bytes, first_free_number
from ensemble_lab.metrics.corruptions import CORRUPTION_AVERAGES
from ensemble_lab.metrics.registry import lookup

TABLE_COLUMNS = ("acc", "nll", "brier", "ece", "entropy", "mi", "disagreement", "auroc_msp", "auroc_mi", "fpr95_msp")
#: results.json keys beside "checkpoint" that say which checkpoint was tested: checkpoint_choice ("last": the
#: final weights, last.ckpt; "best": the checkpoint ModelCheckpoint kept for the best --checkpoint.monitor value;
#: null: another file, or no checkpoint), the checkpoint's epoch (0-based) and global step, and for "best" the
#: monitored metric and its value there (null otherwise)
CHECKPOINT_RECORD = ("checkpoint_choice", "checkpoint_epoch", "checkpoint_step", "checkpoint_monitor", "checkpoint_score")


def check_can_write(results_dir: Path, overwrite: bool) -> None:
    """Refuse to replace an earlier results.json unless ``overwrite`` is set."""
    if (results_dir / "results.json").exists() and not overwrite:
        raise EnsembleLabError(
            f"{results_dir / 'results.json'} already exists; nothing was changed. "
            "Pass --overwrite true to replace it (the old results, predictions and figures are kept as "
            "results.prev-<N>.json, predictions.prev-<N>/ and figures.prev-<N>/)."
        )


def _json_ready(value: Any) -> Any:
    """NaN / inf become null so the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


#: what one test writes into a run directory besides results.json / results.csv
OUTPUT_DIRS = ("predictions", "figures")


def set_aside_previous(results_dir: Path) -> int | None:
    """Before a test replaces a run's outputs, keep the earlier ones under one number N = 1, 2, ...

    results.json is copied to results.prev-N.json (it stays in place until the new one replaces it),
    and predictions/ and figures/ are renamed predictions.prev-N/ and figures.prev-N/, so no old file
    is lost and none is left beside the new results. Returns N, or None when there was nothing.
    """
    results_dir = Path(results_dir)
    present = [name for name in ("results.json", *OUTPUT_DIRS) if (results_dir / name).exists()]
    if not present:
        return None
    n = first_free_number(lambda k: any((results_dir / name).exists() for name in (f"results.prev-{k}.json", *(f"{d}.prev-{k}" for d in OUTPUT_DIRS))))
    if "results.json" in present:
        atomic_write_bytes(results_dir / f"results.prev-{n}.json", (results_dir / "results.json").read_bytes())
    for name in OUTPUT_DIRS:
        if name in present:
            os.replace(results_dir / name, results_dir / f"{name}.prev-{n}")
    return n


def write_results(results_dir: Path, results: dict[str, Any]) -> Path:
    """Write results.csv (one row per test set, scalar metrics only), then results.json.

    results.json comes last: a run that has it has every output of its test (``ensemble-lab study``
    counts such a run as finished). Call :func:`set_aside_previous` first to keep an earlier one.
    """
    results_dir = Path(results_dir)
    rows = [
        {"set": name, **{k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}}
        for name, metrics in results["sets"].items()
    ]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(results_dir / "results.csv", buffer.getvalue().encode())
    atomic_write_bytes(results_dir / "results.json", json.dumps(_json_ready(results), indent=2).encode())
    return results_dir / "results.json"


#: the name of the validation split's saved predictions (predictions/val_split.npz): the conformal sets' calibration data
VAL_SPLIT = "val_split"


def write_predictions(
    results_dir: Path, set_name: str, member_probs: np.ndarray, targets: np.ndarray, member_logits: np.ndarray | None = None
) -> Path:
    """predictions/<set>.npz with member_probs float32 (M, N, C), targets int64 (N,) and, when given, member_logits
    float32 (M, N, C) (member_probs is their softmax; max logit and energy need the logits)."""
    buffer = io.BytesIO()
    arrays: dict[str, np.ndarray] = {"member_probs": member_probs.astype(np.float32), "targets": targets.astype(np.int64)}
    if member_logits is not None:
        arrays["member_logits"] = member_logits.astype(np.float32)
    np.savez(buffer, allow_pickle=False, **arrays)
    path = Path(results_dir) / "predictions" / f"{set_name}.npz"
    atomic_write_bytes(path, buffer.getvalue())
    return path


def format_table(sets: dict[str, dict[str, Any]], columns: tuple[str, ...] = TABLE_COLUMNS) -> str:
    """A fixed-width text table, one row per test set; '-' where a metric does not apply.

    results.json keeps every key for every set; the table leaves out label-based metrics of ood sets (their
    labels are not the model's classes; the registry's ``needs_labels``). An averages set (``cifar10c_mean``) has no
    acc / nll / ece of its own: its row shows their averages over the corrupted sets (c_acc, c_nll, c_ece) there.
    """
    averaged = {metric: average for average, metric in CORRUPTION_AVERAGES.items()}  # acc -> c_acc, ...
    header = ["set", "role", *columns]
    rows = []
    for name, metrics in sets.items():
        cells = [name, str(metrics.get("role", ""))]
        for col in columns:
            value = None if metrics.get("role") == "ood" and lookup(col).needs_labels else metrics.get(col, metrics.get(averaged.get(col, "")))
            cells.append("-" if value is None else f"{value:.4f}")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
