"""Where things are in a run directory: the run a checkpoint belongs to (``<run>/checkpoints/<name>.ckpt``)."""

from pathlib import Path


def run_dir_of_checkpoint(ckpt_path: str | Path | None) -> Path | None:
    """The run directory of ``<run>/checkpoints/<name>.ckpt``, else None (another layout, or no path)."""
    if not ckpt_path:
        return None
    path = Path(ckpt_path).expanduser()
    return path.parent.parent if path.parent.name == "checkpoints" else None
