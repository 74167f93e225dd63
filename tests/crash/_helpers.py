"""What the crash and multi-process tests share: starting children, reading
their reports, and waiting for a condition, always with a deadline."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from unbundled.testing.child import ChildProcess

ROOT = Path(__file__).resolve().parents[2]


def spawn(role: str, *args: object, stdin: bool = False) -> ChildProcess:
    """Start ``python -m tests.crash._children <role> <args>`` from the repository root."""
    return ChildProcess(
        ["-m", "tests.crash._children", role, *map(str, args)], cwd=ROOT, stdin=stdin
    )


@contextlib.contextmanager
def reaped() -> Iterator[list[ChildProcess]]:
    """A list to put children in; all of them are SIGKILLed and reaped on exit,
    whatever happened, so a failing test leaves no process behind."""
    children: list[ChildProcess] = []
    try:
        yield children
    finally:
        for child in children:
            child.close()


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    pump: Callable[[], None] | None = None,
    *,
    fail: bool = True,
) -> bool:
    """Poll ``condition`` (calling ``pump`` in between) until it holds. After
    ``timeout_s``, fail naming ``what`` (or, with ``fail=False``, return False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if pump is not None:
            pump()
        if condition():
            return True
        if time.monotonic() > deadline:
            if not fail:
                return False
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)


def check_alive(child: ChildProcess, name: str) -> None:
    """Fail with the child's stderr if it died on its own."""
    status = child.proc.poll()
    if status is not None:
        raise AssertionError(f"{name} exited with {status}: {child.stderr_text()}")
