"""Which exceptions are the user's to fix, and the one line that says so (``ensemble-lab: error: ...``)."""

import errno

from lightning.fabric.utilities.exceptions import MisconfigurationException

from ensemble_lab.errors import EnsembleLabError

#: errno values that say the disk or the permissions, not the program, stopped a write
UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}


def unwritable(error: BaseException) -> str | None:
    """A one-line message for a file that could not be written (permissions, read-only, disk full), else None."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in UNWRITABLE:
            target = current.filename2 or current.filename  # a rename's destination, not its temporary file
            where = f" {target}" if target else ""
            return (
                f"cannot write{where}: {current.strerror}. Free some space or make the directory writable, "
                "or write elsewhere (--trainer.default_root_dir DIR; study: --out DIR)"
            )
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def find_user_error(error: BaseException) -> Exception | None:
    """The EnsembleLabError behind ``error`` (jsonargparse and Lightning wrap exceptions), if any, or
    Lightning's MisconfigurationException: its message names the bad trainer / callback value."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, (EnsembleLabError, MisconfigurationException)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def user_message(error: BaseException) -> str | None:
    """The one-line message for an error the user can fix (a bad option, an unwritable disk), else None."""
    found = find_user_error(error)
    return str(found) if found is not None else unwritable(error)
