"""Completion handles for group commit: how a writer thread wakes its callers.

A sync caller blocks on a plain lock (the cheapest wake-up CPython has). An
asyncio caller holds a future; the writer hands each event loop all of a
batch's results in one ``call_soon_threadsafe``, not one per request, which is
what lets 64 tasks on one loop reach tens of thousands of commits a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from .errors import Timeout


class SyncWaiter:
    """Called once with a result or an exception; ``wait()`` returns or raises it."""

    __slots__ = ("_lock", "_result")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._result: object = None

    def __call__(self, result: object) -> None:
        self._result = result
        self._lock.release()

    def wait(self, timeout_s: float | None = None) -> Any:
        if not self._lock.acquire(timeout=-1 if timeout_s is None else timeout_s):
            raise Timeout(f"no answer from the writer within {timeout_s} s; outcome unknown")
        result = self._result
        if isinstance(result, BaseException):
            raise result
        return result


class AsyncWaiter:
    """Resolves an asyncio future on its own loop, batched per loop."""

    __slots__ = ("future", "loop")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = self.loop.create_future()

    def __call__(self, result: object) -> None:
        # Single completions (rare: errors at submit) take the slow path.
        self.loop.call_soon_threadsafe(_resolve, [(self.future, result)])


def _resolve(items: list[tuple[asyncio.Future[Any], object]]) -> None:
    for future, result in items:
        if future.done():  # the awaiting task was cancelled
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


def complete_all(completions: Iterable[tuple[Any, object]]) -> None:
    """Deliver many results: asyncio waiters grouped per loop, the rest one by one."""
    per_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], object]]] = (
        defaultdict(list)
    )
    for done, result in completions:
        if type(done) is AsyncWaiter:
            per_loop[done.loop].append((done.future, result))
        else:
            done(result)
    for loop, items in per_loop.items():
        # A loop closed while we committed has nobody waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, items)
