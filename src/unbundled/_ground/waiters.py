"""Completion handles for group commit: how a writer thread wakes its callers.

A sync caller blocks on a plain lock (the cheapest wake-up CPython has). An
asyncio caller holds a future; the writer hands each event loop all of a
batch's results in one ``call_soon_threadsafe``, not one per request, which is
what lets 64 tasks on one loop reach tens of thousands of commits a second.

A caller that stops waiting before the writer takes its request (an asyncio
task cancelled, a sync wait interrupted by a signal) *withdraws* it: the
writer skips it (see :func:`withdrawn`). Once taken, a request commits or
fails with its batch; the caller's cancellation only ends its wait.

A writer or listener thread that fails keeps its reason in a
:class:`Failure`; every caller waiting on it, and every later one, gets a
:class:`~unbundled.errors.ThreadFailed` that names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from ..errors import ThreadFailed


class SyncWaiter:
    """Called once with a result or an exception; ``wait()`` returns or raises it.

    :func:`complete_all` wakes a batch's sync waiters as a chain (baton
    passing): it releases only the first, and each waiter releases the next
    as it wakes. Waking them all at once makes dozens of threads fight for
    the GIL, and that herd, not the disk, limited throughput.
    """

    __slots__ = ("_lock", "_next", "_result", "inline", "withdrawn")

    def __init__(self, *, inline: bool = True) -> None:
        # inline: the writer may run this request on the submitting thread
        # when it is idle (its leader path). A caller that submits while
        # holding a lock other threads need must say False, or they would
        # wait for its whole commit instead of queueing behind it.
        self.inline = inline
        self.withdrawn = False  # the caller stopped waiting (see wait)
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
            # Interrupted (Ctrl-C, or a signal handler that raised, in the main
            # thread) before our turn: withdraw the request if the writer has
            # not taken it yet, and someone must still take the baton, or the
            # waiters after us hang forever.
            self.withdrawn = True
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


def withdrawn(done: object) -> bool:
    """True if the caller of ``done`` stopped waiting before the writer took
    its request: the writer skips it, so nothing of it is written.

    A writer calls this as it takes each request from its queue, and never
    after: a request it took commits (or fails) with its batch.
    """
    if type(done) is AsyncWaiter:
        return done.future.cancelled()
    if type(done) is SyncWaiter:
        return done.withdrawn
    return False


class Failure:
    """Why a background thread stopped, kept for every caller after it.

    The thread calls :meth:`set` once, as it fails; :meth:`check` (at each
    later call) and :meth:`error` (for each waiting caller) build a fresh
    :class:`ThreadFailed` chained from the cause, so callers on many threads
    never share one exception object and its traceback.
    """

    __slots__ = ("cause", "thread", "what")

    def __init__(self) -> None:
        self.cause: BaseException | None = None
        self.thread = ""
        self.what = ""

    def __bool__(self) -> bool:
        return self.cause is not None

    def set(self, thread: str, cause: BaseException, what: str) -> None:
        """Record the failure (the first one wins); ``what`` is the object to reopen."""
        if self.cause is None:
            self.thread, self.what = thread, what
            self.cause = cause

    def error(self) -> ThreadFailed:
        cause = self.cause
        assert cause is not None, "error() before set()"
        error = ThreadFailed(
            f"the background thread {self.thread!r} failed with "
            f"{type(cause).__name__}: {cause}; close {self.what} and open it again",
            thread=self.thread,
            cause=f"{type(cause).__name__}: {cause}",
        )
        error.__cause__ = cause
        return error

    def check(self) -> None:
        """Raise the failure, if there was one."""
        if self.cause is not None:
            raise self.error()


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
