"""Checkpoint files as the user names them: one line for every way a path fails to be one (missing, a
directory, empty, truncated, not a torch file, no ``state_dict``), and the file read as a dict."""

import errno
import zipfile
from pathlib import Path
from typing import Any

import torch

from ensemble_lab.errors import CheckpointFileError

#: the first bytes of a zip archive: torch.save has written one since torch 1.6 (``_use_new_zipfile_serialization``)
_ZIP_MAGIC = b"PK\x03\x04"
#: the first byte of a pickle (protocol 2 and up): torch's older, non-zip format
_PICKLE_MAGIC = b"\x80"
#: what to do about a file that is no checkpoint at all
_GIVE_ONE = "give a .ckpt file that ensemble-lab fit wrote, e.g. <run>/checkpoints/last.ckpt"


def _checkpoint_inside(directory: Path) -> str:
    """A checkpoint to suggest for a directory given in place of one: its run's last.ckpt if there is one."""
    for candidate in (directory / "checkpoints" / "last.ckpt", directory / "last.ckpt"):
        if candidate.is_file():
            return str(candidate)
    found = sorted([*directory.glob("checkpoints/*.ckpt"), *directory.glob("*.ckpt")])
    return str(found[0]) if found else str(directory / "checkpoints" / "last.ckpt")


def check_checkpoint_file(path: str | Path, what: str = "checkpoint") -> Path:
    """``path`` (``~`` expanded) if it names a non-empty regular file; otherwise CheckpointFileError with one line
    that names it and says what it is instead (missing, a directory, empty, ...) and what to give.

    Args:
        path: the checkpoint path as the user gave it.
        what: how the message names it, e.g. "--ckpt_path" or "teacher checkpoint".
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointFileError(f"{what} {path} is a directory; give a checkpoint file, e.g. {_checkpoint_inside(path)}")
    if not path.exists():
        raise CheckpointFileError(f"{what} {path} does not exist; {_GIVE_ONE}")
    if not path.is_file():
        raise CheckpointFileError(f"{what} {path} is not a regular file; {_GIVE_ONE}")
    if path.stat().st_size == 0:
        raise CheckpointFileError(
            f"{what} {path} is empty (0 bytes): it was never written (a fit stopped while saving it?); give another "
            "checkpoint of the run, or train it again"
        )
    return path


def _unreadable(path: Path, what: str, error: Exception) -> CheckpointFileError:
    """The one-line error for a file torch.load refused: truncated, not a checkpoint, or another reason in words."""
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EIO):  # the disk or permissions
        return CheckpointFileError(f"{what} {path} cannot be read: {error.strerror}")
    with path.open("rb") as f:
        head = f.read(len(_ZIP_MAGIC))
    if head == _ZIP_MAGIC and not zipfile.is_zipfile(path):
        # a zip archive keeps its table of contents at its end: the start is there, the end is not
        size = path.stat().st_size
        return CheckpointFileError(
            f"{what} {path} is truncated (only its first {size:,} bytes are there): it was cut off while being written "
            "or copied; copy it again, or give another checkpoint of the run"
        )
    if head != _ZIP_MAGIC and not head.startswith(_PICKLE_MAGIC):
        return CheckpointFileError(f"{what} {path} is not a checkpoint (not a file torch.save wrote); {_GIVE_ONE}")
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return CheckpointFileError(f"{what} {path} cannot be read as a checkpoint ({reason}); {_GIVE_ONE}")


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """A Lightning checkpoint file as a dict (tensors memory-mapped where the format allows, not read).

    Every way a path can fail to be one (missing, a directory, empty, truncated, not a torch file, no
    ``state_dict``) is a CheckpointFileError whose one line names the file and says which.

    Args:
        path: the .ckpt file.
        what: how the message names the file, e.g. "--ckpt_path" or "member checkpoint".
    """
    path = check_checkpoint_file(path, what)
    try:
        with path.open("rb") as f:
            zipped = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
        # mmap needs torch's zip format; an older pickle-format file is read whole
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as e:  # truncated, a text file, a pickle of objects weights_only refuses, unreadable
        raise _unreadable(path, what, e) from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointFileError(f"{what} {path} holds no 'state_dict', so it is not a Lightning checkpoint; {_GIVE_ONE}")
    return checkpoint
