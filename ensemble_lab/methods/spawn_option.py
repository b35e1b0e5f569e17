"""The ``spawn_from`` option's record: which parent checkpoint a spawned run started from, and at which epoch
(the conversion itself is methods/spawn.py, called by the CLI before a fit)."""

from pathlib import Path
from typing import Any

from ensemble_lab.errors import EnsembleLabError
from ensemble_lab.runs.callbacks import SPAWN_CHECKPOINT
from ensemble_lab.runs.checkpoint_files import load_checkpoint

__all__ = ["SPAWN_CHECKPOINT", "SpawnOption", "spawn_epoch"]


def spawn_epoch(path: str | Path) -> int:
    """The epochs the parent had finished when ``path`` (an epoch-end checkpoint) was written."""
    return int(load_checkpoint(path, "--model.spawn_from").get("epoch", -1)) + 1


class SpawnOption:
    """Mix into a method with ``spawn_from``: results.json says which parent checkpoint it spawned from, at which epoch."""

    spawn_from: str | None = None

    def spawn_description(self) -> dict[str, Any]:
        """``{"spawn_from": path, "spawn_epoch": t}`` for a spawned run (t None if the parent is gone); {} otherwise."""
        if not self.spawn_from:
            return {}
        try:
            epoch: int | None = spawn_epoch(self.spawn_from)
        except (OSError, ValueError, EnsembleLabError):
            epoch = None
        return {"spawn_from": self.spawn_from, "spawn_epoch": epoch}
