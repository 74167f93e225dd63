"""Live progress on stderr that never shares a terminal line with records.

A live display (spinner, progress bar) redraws its line on stderr several
times a second. When records go to the same terminal, directly or through a
pipe whose reader prints them (``| tee``, ``| less``), the two interleave:
a record lands after the spinner, or the spinner's redraw lands inside a
record. So by default a display is shown only when stderr is a terminal and
the records go nowhere a person is watching: no records on stdout at all,
or stdout is a file (or ``/dev/null``). ``--progress`` forces it; then, if
stdout is a terminal, the display is cleared before each write of records
and redrawn after it (:meth:`LiveLine.writing`).
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from typing import Protocol

from ._common import is_terminal


class Display(Protocol):
    """What rich's ``Status`` and ``Progress`` have in common."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def stdout_is_file() -> bool:
    """stdout is a regular file or a device that is not a terminal (``/dev/null``)."""
    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False  # not a real file (a test runner's buffer): assume someone reads it
    return stat.S_ISREG(mode) or (stat.S_ISCHR(mode) and not is_terminal(sys.stdout))


def show_progress(asked: bool | None, records_to_stdout: bool) -> bool:
    """Whether to show a live display on stderr: as asked (``--progress`` /
    ``--no-progress``), else when stderr is a terminal and no records go
    to stdout or stdout is a file."""
    if asked is not None:
        return asked
    if not is_terminal(sys.stderr):
        return False
    return not records_to_stdout or stdout_is_file()


class LiveLine:
    """A started live display, paused around writes of records to a terminal stdout."""

    def __init__(self, display: Display | None) -> None:
        self.display = display
        self.pause = display is not None and is_terminal(sys.stdout)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around a write to stdout: the display is off the screen meanwhile
        (stopping a transient display erases it and leaves the cursor at
        the start of its line)."""
        if not self.pause or self.display is None:
            yield
            return
        self.display.stop()
        try:
            yield
        finally:
            self.display.start()

    def stop(self) -> None:
        if self.display is not None:
            self.display.stop()


__all__ = ["Display", "LiveLine", "show_progress", "stdout_is_file"]
