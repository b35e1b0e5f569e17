"""Which checkpoint a run tests: the final weights (last.ckpt) or the best-validation one ModelCheckpoint kept.

``fit --test_checkpoint best`` tests, after training, the checkpoint with the best ``--checkpoint.monitor``
value; ``test --ckpt_path best`` finds that file of the newest run again. Every checkpoint tested is
described in results.json (:data:`~ensemble_lab.runs.results.CHECKPOINT_RECORD`): which choice it
is, its epoch and step and, for the best one, the monitored metric and its value there.
"""

import re
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from ensemble_lab.errors import ConfigError
from ensemble_lab.metrics.registry import lookup
from ensemble_lab.runs.checkpoint_files import load_checkpoint

_LAST = re.compile(r"^last(-v\d+)?\.ckpt$")  # Lightning names a second last checkpoint last-v1.ckpt


def model_checkpoint_state(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The ModelCheckpoint state stored in a loaded checkpoint (the CLI's --checkpoint one first), or None."""
    states = [(key, state) for key, state in (checkpoint.get("callbacks") or {}).items() if isinstance(state, dict) and "best_model_path" in state]
    states.sort(key=lambda item: not str(item[0]).startswith("FinalLastCheckpoint"))
    return states[0][1] if states else None


def _number(value: Any) -> float | None:
    try:
        return float(value)  # a 0-d tensor or a float
    except (TypeError, ValueError):
        return None


def checkpoint_record(path: str | Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """results.json's description of the checkpoint file ``path`` (``checkpoint``: its loaded content).

    ``checkpoint_choice`` is "last" for last.ckpt, "best" for the file its ModelCheckpoint kept as the best
    ``monitor`` value (that file's own saved state names it as the best), else None.
    """
    name = Path(path).name
    state = model_checkpoint_state(checkpoint) or {}
    best = state.get("monitor") is not None and Path(str(state.get("best_model_path") or "")).name == name
    return {
        "checkpoint_choice": "last" if _LAST.match(name) else "best" if best else None,
        "checkpoint_epoch": checkpoint.get("epoch"),
        "checkpoint_step": checkpoint.get("global_step"),
        "checkpoint_monitor": state.get("monitor") if best else None,
        "checkpoint_score": _number(state.get("best_model_score")) if best else None,
    }


def best_checkpoint_of(last: Path) -> Path:
    """The best-validation checkpoint of the run whose last checkpoint is ``last`` (its ModelCheckpoint state
    names it); ConfigError if that run kept none."""
    run = last.parent.parent if last.parent.name == "checkpoints" else last.parent
    state = model_checkpoint_state(load_checkpoint(last)) or {}
    if state.get("monitor") is None:
        raise ConfigError(
            f"--ckpt_path best: {run} keeps no best checkpoint (it was trained without --checkpoint.monitor or "
            "--early_stopping.enabled true); use --ckpt_path last for its final weights, or give a checkpoint's path"
        )
    recorded = str(state.get("best_model_path") or "")
    if not recorded:
        raise ConfigError(f"--ckpt_path best: {run} has no best checkpoint yet (no validation had run); use --ckpt_path last")
    for candidate in (last.parent / Path(recorded).name, Path(recorded)):  # the run may have been moved
        if candidate.is_file():
            return candidate
    raise ConfigError(f"--ckpt_path best: {run}'s best checkpoint {Path(recorded).name} is missing from {last.parent}")


def settle_monitors(config: Any) -> None:
    """Fit options, before anything is built: ``--early_stopping.enabled true`` without ``--checkpoint.monitor``
    makes the checkpoint keep the best epoch of the early-stopping metric (same mode); ``--test_checkpoint best``
    without any monitored metric is refused."""
    checkpoint, stopping = config.get("checkpoint"), config.get("early_stopping")
    if checkpoint is None:
        return
    if stopping is not None and stopping.get("enabled") and checkpoint.get("monitor") is None:
        checkpoint["monitor"], checkpoint["mode"] = stopping.get("monitor"), stopping.get("mode")
    if config.get("test_checkpoint") == "best" and checkpoint.get("monitor") is None:
        raise ConfigError(
            "--test_checkpoint best needs a monitored validation metric: pass --checkpoint.monitor val/acc "
            "--checkpoint.mode max (or --early_stopping.enabled true, whose metric the checkpoint then follows)"
        )


def check_monitors(config: Any, valid: list[str], method: str) -> None:
    """ConfigError for a monitored metric (--early_stopping.monitor when enabled, --checkpoint.monitor) that the
    model never logs, or with no validation to log it; a warning for a mode against the metric's direction."""
    checkpoint, stopping = config.get("checkpoint") or {}, config.get("early_stopping") or {}
    watched = [("--early_stopping", stopping)] if stopping.get("enabled") else []
    watched.append(("--checkpoint", checkpoint))
    for option, options in watched:
        name, mode = options.get("monitor"), options.get("mode")
        if name is None:
            continue
        if name not in valid:
            raise ConfigError(f"{option}.monitor {name}: {method} logs no such metric; choose one of {', '.join(valid)}")
        better = lookup(str(name).rsplit("/", 1)[-1]).mode  # "val/acc": acc's direction, from the metric registry
        if better is not None and mode != better:
            direction = "higher" if better == "max" else "lower"
            rank_zero_warn(f"{option}.monitor {name} with {option}.mode {mode}: a {direction} {name} is better; {option}.mode {better}?")
        limit = (config.get("trainer") or {}).get("limit_val_batches")
        if limit is not None and limit == 0:
            raise ConfigError(f"{option}.monitor {name} needs validation, but --trainer.limit_val_batches is 0")
