"""Ctrl-C, noticed: Lightning turns a KeyboardInterrupt inside fit / test into ``sys.exit(1)``, which
looks like any failure; a command that watches SIGINT itself can tell the user what happened and exit
with the shell's status for an interrupt."""

import signal
import threading
from types import FrameType
from typing import Any

#: exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it
INTERRUPTED = 130
#: exit status of a fit / test stopped by SIGTERM (128 + SIGTERM): Lightning stops at the next step and exits 0
TERMINATED = 143


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
