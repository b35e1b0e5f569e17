"""Ctrl-C, noticed: Lightning turns a KeyboardInterrupt inside fit / test into ``sys.exit(1)``, which
looks like any failure; a command that watches SIGINT itself can tell the user what happened and exit
with the shell's status for an interrupt."""

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException

#: exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it
INTERRUPTED = 130
#: exit status of a fit / test stopped by SIGTERM (128 + SIGTERM): Lightning stops at the next step and exits 0
TERMINATED = 143
#: what to do after a fit was stopped, whether or not it had saved a checkpoint yet
HOW_TO_CONTINUE = (
    "a fit continues from its last saved checkpoint (checkpoints/last.ckpt) with the same command and "
    "--ckpt_path last; one stopped before its first checkpoint starts again."
)


class InterruptWatch:
    """SIGINT handler for the duration of a command: notes Ctrl-C, then raises KeyboardInterrupt as Python's does.

    Lightning catches the KeyboardInterrupt inside fit and test, shuts down "gracefully" and exits
    with status 1, which cannot be told from a failure; ``interrupted`` can. The previous handler
    comes back on exit; a SIGINT that was ignored when the command started stays ignored.
    """

    def __init__(self) -> None:
        """Nothing is installed until the ``with`` block starts."""
        self.interrupted = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> "InterruptWatch":
        previous = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is threading.main_thread() and previous is not signal.SIG_IGN:
            self._previous, self._installed = previous, True
            signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.interrupted = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C came, whatever a run made of it."""
        if self.interrupted:
            raise KeyboardInterrupt


@contextmanager
def stopped_command_exits() -> Iterator[None]:
    """Run a fit / test command so that Ctrl-C ends it with status 130 and SIGTERM with 143, each saying how
    to go on (not Lightning's status 1, resp. 0, which a script or a study would take for success)."""
    with InterruptWatch() as watch:
        try:
            yield
        except SIGTERMException:  # a SystemExit without a code: Lightning stopped at the next step
            print(f"ensemble-lab: terminated (SIGTERM). {HOW_TO_CONTINUE}", file=sys.stderr)
            raise SystemExit(TERMINATED) from None
        except (SystemExit, KeyboardInterrupt):
            if not watch.interrupted:
                raise
            print(f"ensemble-lab: interrupted. {HOW_TO_CONTINUE}", file=sys.stderr)
            raise SystemExit(INTERRUPTED) from None
