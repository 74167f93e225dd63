"""Ctrl-C and SIGTERM: one behaviour for every command.

While a command runs, both signals raise :class:`Interrupted` (a
``KeyboardInterrupt``) in the main thread, so ``finally`` blocks run: stores
are closed, a consumer leaves its group at once, temporary files go. A
command that reports what it did (``produce``, ``consume``, ``events
subscribe``) catches it, prints its summary and returns; one that does not
is reported as "interrupted" by the root command. Either way the process
exits with 128 + the signal number, 130 after Ctrl-C and 143 after SIGTERM,
the status a shell shows for a process that a signal stopped.

Inside :meth:`Interrupts.protected` a signal waits for the block to end, so
"written out" and "counted as delivered" never come apart; a second signal
does not wait.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_exit_status(signum: int) -> int:
    """The exit status after a stop by ``signum``: 128 + its number, as shells report."""
    return 128 + signum


def signum_of(exc: BaseException) -> int:
    """The signal behind a ``KeyboardInterrupt`` (a bare one is Ctrl-C)."""
    return exc.signum if isinstance(exc, Interrupted) else signal.SIGINT


class Interrupts:
    """The stop signals of this process, turned into :class:`Interrupted`.

    Signal handlers belong to the process, so there is one of these
    (:func:`interrupts`); :meth:`installed` is re-entrant.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None
        self.received: int | None = None  # the first stop signal since installed
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        if self.depth and self.pending is None:
            self.pending = signum  # raised when the protected block ends
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupts]:
        """Handle SIGINT and SIGTERM in this block (a signal the parent set to
        be ignored, as ``nohup`` does, stays ignored)."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            yield self  # already installed, or signals cannot reach this thread
            return
        self.depth = 0
        self.pending = None
        self.received = None
        previous = {}
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, self._handle)
        self._installed = True
        try:
            yield self
        finally:
            self._installed = False
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @contextlib.contextmanager
    def protected(self) -> Iterator[None]:
        """A block that a (first) stop signal does not cut short."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                raise Interrupted(signum)


_INTERRUPTS = Interrupts()


def interrupts() -> Interrupts:
    """The process's one :class:`Interrupts`."""
    return _INTERRUPTS


__all__ = [
    "Interrupted",
    "Interrupts",
    "interrupts",
    "signal_exit_status",
    "signum_of",
]
