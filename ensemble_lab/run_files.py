"""Files of a run directory: written atomically, earlier ones kept under the first free number, and
the run a checkpoint belongs to (``<run>/checkpoints/<name>.ckpt``)."""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for colleagues to read too
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def first_free_number(taken: Callable[[int], bool]) -> int:
    """The smallest N = 1, 2, ... for which ``taken(N)`` is False (numbered copies: ``x.prev-N``, ``config.test-N.yaml``)."""
    n = 1
    while taken(n):
        n += 1
    return n


def run_dir_of_checkpoint(ckpt_path: str | Path | None) -> Path | None:
    """The run directory of ``<run>/checkpoints/<name>.ckpt``, else None (another layout, or no path)."""
    if not ckpt_path:
        return None
    path = Path(ckpt_path).expanduser()
    return path.parent.parent if path.parent.name == "checkpoints" else None
