"""Where things are in a run directory: the run a checkpoint belongs to (``<run>/checkpoints/<name>.ckpt``),
and removing a run directory that holds no result yet."""

import shutil
from pathlib import Path

from lightning.pytorch.utilities.rank_zero import rank_zero_only


def run_dir_of_checkpoint(ckpt_path: str | Path | None) -> Path | None:
    """The run directory of ``<run>/checkpoints/<name>.ckpt``, else None (another layout, or no path)."""
    if not ckpt_path:
        return None
    path = Path(ckpt_path).expanduser()
    return path.parent.parent if path.parent.name == "checkpoints" else None


@rank_zero_only
def remove_unstarted_run(run_dir: Path, global_step: int) -> None:
    """Remove ``run_dir`` made by a command that failed before training a step and before any checkpoint."""
    if global_step == 0 and run_dir.is_dir() and not any(run_dir.rglob("*.ckpt")) and not (run_dir / "results.json").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
