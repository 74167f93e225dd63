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


class SyncWaiter:
    """Called once with a result or an exception; ``wait()`` returns or raises it.

    :func:`complete_all` wakes a batch's sync waiters as a chain (baton
    passing): it releases only the first, and each waiter releases the next
    as it wakes. Waking them all at once makes dozens of threads fight for
    the GIL, and that herd, not the disk, limited throughput.
    """

    __slots__ = ("_lock", "_next", "_result", "inline")

    def __init__(self, *, inline: bool = True) -> None:
        # inline: the writer may run this request on the submitting thread
        # when it is idle (its leader path). A caller that submits while
        # holding a lock other threads need must say False, or they would
        # wait for its whole commit instead of queueing behind it.
        self.inline = inline
        self._lock = threading.Lock()
        self._lock.acquire()
        self._result: object = None
        self._next: SyncWaiter | None = None

    def __call__(self, result: object) -> None:
        self._result = result
        self._lock.release()

    def _pass_on(self) -> None:
        following = self._next
        if following is not None:
            self._next = None
            following._lock.release()

    def wait(self) -> Any:
        try:
            self._lock.acquire()
        except BaseException:
            # Interrupted (Ctrl-C in the main thread) before our turn: someone
            # must still take the baton, or the waiters after us hang forever.
            threading.Thread(target=self._rescue, daemon=True).start()
            raise
        self._pass_on()
        result = self._result
        if isinstance(result, BaseException):
            raise result
        return result

    def _rescue(self) -> None:
        self._lock.acquire()
        self._pass_on()


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
    head: SyncWaiter | None = None
    last: SyncWaiter | None = None
    for done, result in completions:
        kind = type(done)
        if kind is SyncWaiter:
            done._result = result
            if last is None:
                head = done
            else:
                last._next = done
            last = done
        elif kind is AsyncWaiter:
            per_loop[done.loop].append((done.future, result))
        else:
            done(result)
    if head is not None:
        head._lock.release()  # the rest follow, each woken by the one before
    for loop, items in per_loop.items():
        # A loop closed while we committed has nobody waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, items)
