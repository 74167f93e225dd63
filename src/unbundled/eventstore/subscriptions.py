"""Subscriptions: read ``$all`` from any position, then follow it live.

A subscription is a cursor over ``$all``. It reads a batch after its cursor
(the backend returns only events up to the safe position, in position order),
delivers it, and moves the cursor to the last event read. When there is
nothing new it blocks in ``backend.wait_for_events`` until a commit moves the
backend's change token: no busy polling. The token is taken *before* each
read, so a commit that lands between the read and the wait wakes the wait at
once; nothing is missed, and as the cursor only moves forward past events
already delivered, nothing is delivered twice.

A filtered subscription (by category or event type) also moves its cursor
past events it does not want: when a filtered read returns less than a full
batch, every wanted event up to the safe position taken before the read has
been returned, so the cursor may jump there. Its :attr:`Subscription.position`
is therefore the right checkpoint even when no wanted event arrives for a
long time.

Checkpointing is the caller's: store :attr:`Subscription.position` (or the
last handled ``event.position``) wherever you like and pass it back as
``after_position`` to resume. For checkpoints that commit atomically with a
read model, use :mod:`unbundled.eventstore.projections`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from .. import limits
from .._bounds import check_int, check_optional_seconds, check_seconds
from .._ground.waiters import Failure
from ..errors import Error, UsageError
from ._base import EventStoreBase, StoredEvent
from .serialization import Event

# Longest single wait on the backend. A stop() from another thread cannot
# wake ``wait_for_events``; it is seen when the slice ends. Short enough for a
# prompt stop, long enough that an idle subscription costs nothing measurable.
WAIT_SLICE_S = 0.1
BATCH_SIZE = 500

Handler = Callable[[StoredEvent], object]


class Subscription:
    """Events of ``$all`` after ``after_position``: first the stored ones
    (catch-up), then new ones as they commit (live), each exactly once, in
    position order.

    Iterate it (``for event in subscription``: blocks until :meth:`stop`) or
    call :meth:`poll` for one batch at a time. Use one subscription from one
    thread; :meth:`stop` may be called from any thread.
    """

    def __init__(
        self,
        store: EventStoreBase,
        after_position: int = 0,
        *,
        categories: Sequence[str] | None = None,
        types: Sequence[str | type[Event]] | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        store._check_position(after_position)
        check_int("batch_size", batch_size, 1, limits.read_events_max)
        if isinstance(categories, str) or isinstance(types, str):
            raise UsageError("categories and types take a sequence of names, not one string")
        store._check_open()
        self._store = store
        self._backend = store.backend
        self.categories = list(categories) if categories is not None else None
        self.types = store._type_names(types)
        self._filtered = self.categories is not None or self.types is not None
        self._batch_size = batch_size
        self._cursor = after_position  # where the next read starts
        self._position = after_position  # last event handed out (or skipped by the filter)
        self._buffer: list[StoredEvent] = []
        self._next = 0  # index in _buffer of the next event __next__ returns
        self._token: int | None = None
        self._stopped = threading.Event()

    @property
    def position(self) -> int:
        """The checkpoint: every wanted event up to here has been delivered.
        Resuming with ``after_position=position`` continues without a gap or
        a repeat."""
        return self._position

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called (or a worker's handler failed)."""
        return self._stopped.is_set()

    def stop(self) -> None:
        """End the subscription (thread-safe): a blocked iteration ends within
        about 0.1 s. Events already read but not yet delivered are dropped,
        and :attr:`position` stays at the last one delivered."""
        self._stopped.set()

    close = stop

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- reading --------------------------------------------------------------

    def _fetch(self) -> list[StoredEvent]:
        """Read one batch after the cursor and move the cursor past it."""
        backend = self._backend
        safe = backend.safe_position() if self._filtered else 0
        rows = backend.read_all(self._cursor, self._batch_size, self.categories, self.types)
        decode = self._store._decode
        events = [decode(r) for r in rows]  # before moving the cursor: a failure skips nothing
        if rows:
            self._cursor = rows[-1].position
        if self._filtered and len(rows) < self._batch_size and safe > self._cursor:
            self._cursor = safe  # nothing wanted up to there (see the module docstring)
        return events

    def _wait(self, token: int, timeout_s: float) -> int:
        """Block until the change token moves, the time is up, or stop()."""
        deadline = time.monotonic() + timeout_s
        while not self._stopped.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._store._check_open()  # a closed backend returns at once: do not spin
            moved = self._backend.wait_for_events(token, min(remaining, WAIT_SLICE_S))
            if moved != token:
                return moved
        return token

    def poll(self, timeout_s: float = 1.0) -> list[StoredEvent]:
        """The next events, waiting up to ``timeout_s`` for some to commit;
        ``[]`` if none did (or the subscription was stopped)."""
        self._store._check_open()
        check_seconds("timeout_s", timeout_s)
        if self._next < len(self._buffer):  # left over from iteration
            events = self._buffer[self._next :]
            self._buffer, self._next = [], 0
        else:
            events = self._poll(timeout_s)
        self._position = self._cursor  # all read is handed out (or filtered out)
        return events

    def _poll(self, timeout_s: float) -> list[StoredEvent]:
        deadline = time.monotonic() + timeout_s
        while not self._stopped.is_set():
            # The token is taken before the read, so a commit after the read
            # is seen by the wait below: the wait cannot sleep through it.
            token = self._token if self._token is not None else self._backend.events_change_token()
            self._token = None
            events = self._fetch()
            if events:
                return events
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._token = token  # nothing changed since: reuse it next time
                return []
            moved = self._wait(token, remaining)
            if moved == token:  # timed out or stopped: nothing new to read
                self._token = token
                return []
            self._token = moved
        return []

    def __iter__(self) -> Iterator[StoredEvent]:
        return self

    def __next__(self) -> StoredEvent:
        while True:
            if self._stopped.is_set():
                raise StopIteration  # what is buffered is dropped: position stays put
            if self._next < len(self._buffer):
                break
            self._position = self._cursor  # the buffer was all handed out
            self._store._check_open()
            self._buffer, self._next = self._poll(3600.0), 0
        event = self._buffer[self._next]
        self._next += 1
        self._position = event.position
        return event


class SubscriptionWorker:
    """A subscription whose events go to ``handler`` on a thread of its own.

    If the handler raises, the worker stops; :attr:`error` holds the
    exception, :attr:`position` the last event handled successfully (so a
    restart from there retries the failed event), and :meth:`stop` /
    :meth:`join` re-raise it. If reading fails, the worker stops the same
    way: :attr:`error` is the backend's typed error (``Closed``,
    ``CorruptionError``...), or :class:`~unbundled.errors.ThreadFailed`
    naming the cause of anything unexpected.
    """

    def __init__(self, subscription: Subscription, handler: Handler) -> None:
        self.subscription = subscription
        self._handler = handler
        self._handled = subscription.position
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name="unbundled-subscription", daemon=True
        )
        self._thread.start()

    @property
    def position(self) -> int:
        """The last position handled (the checkpoint to resume after)."""
        return self._handled

    @property
    def running(self) -> bool:
        """True while the worker's thread runs: False after :meth:`stop` or once
        the handler raised (then :attr:`error` holds the exception)."""
        return self._thread.is_alive()

    def _run(self) -> None:
        subscription = self.subscription
        try:
            while not subscription.stopped:
                for event in subscription.poll(3600.0):
                    if subscription.stopped:
                        return
                    try:
                        self._handler(event)
                    except BaseException as exc:  # the handler's own: re-raised as it is
                        self.error = exc
                        return
                    self._handled = event.position
                if not subscription.stopped:
                    self._handled = subscription.position  # filtered-out events included
        except Error as exc:  # from the store: typed already
            self.error = exc
        except BaseException as exc:  # unexpected: say which thread, and why
            failure = Failure()
            failure.set(self._thread.name, exc, "the subscription")
            self.error = failure.error()
        finally:
            subscription.stop()

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the worker to end (after :meth:`stop` or a handler error);
        re-raise the handler's error if it had one."""
        self._thread.join(check_optional_seconds("timeout_s", timeout_s))
        if self.error is not None:
            raise self.error

    def stop(self, timeout_s: float | None = 10.0) -> None:
        """Stop after the event being handled, wait for the thread, and
        re-raise the handler's error if it had one."""
        self.subscription.stop()
        self.join(timeout_s)

    def __enter__(self) -> SubscriptionWorker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.stop()
        else:  # do not hide the exception that is already on its way
            self.subscription.stop()
            self._thread.join(10.0)


class AsyncSubscription:
    """The asyncio twin of :class:`Subscription`: ``async for event in sub``.

    The blocking reads and waits run on the subscription's own worker thread
    (as :class:`unbundled.AsyncConsumer` does), so a waiting subscription
    never occupies the event loop's shared executor. Cancelling a task
    blocked in :meth:`poll` loses nothing: the batch being fetched is kept
    and returned by the next :meth:`poll`.
    """

    def __init__(
        self,
        store: EventStoreBase,
        after_position: int = 0,
        *,
        categories: Sequence[str] | None = None,
        types: Sequence[str | type[Event]] | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self._sync = Subscription(
            store, after_position, categories=categories, types=types, batch_size=batch_size
        )
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="unbundled-subscription")
        self._pending: asyncio.Future[list[StoredEvent]] | None = None
        self._position = after_position

    @property
    def position(self) -> int:
        """The checkpoint: every wanted event up to here has been delivered
        (see :attr:`Subscription.position`)."""
        return self._position

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` or :meth:`close` was called."""
        return self._sync.stopped

    def stop(self) -> None:
        """End the subscription; ``async for`` ends within about 0.1 s."""
        self._sync.stop()

    async def close(self) -> None:
        """Stop, and wait for the worker thread to finish its last wait."""
        self._sync.stop()
        pending, self._pending = self._pending, None
        if pending is not None:
            # Its batch was fetched but never delivered: drop it with the subscription.
            await asyncio.wait([pending])
            if not pending.cancelled():
                pending.exception()  # retrieved, so asyncio does not log it
        self._executor.shutdown(wait=False)

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _fetch(self, timeout_s: float) -> tuple[list[StoredEvent], int]:
        """The next batch and the position reached once it is delivered."""
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.run_in_executor(self._executor, self._sync.poll, timeout_s)
        # Shielded: if this await is cancelled the fetch goes on, and its
        # events stay in _pending for the next poll instead of being lost.
        events = await asyncio.shield(self._pending)
        self._pending = None
        return events, self._sync.position  # the worker is idle now: no race

    async def poll(self, timeout_s: float = 1.0) -> list[StoredEvent]:
        """The next events, waiting up to ``timeout_s``; ``[]`` if none."""
        check_seconds("timeout_s", timeout_s)
        events, self._position = await self._fetch(timeout_s)
        return events

    def __aiter__(self) -> AsyncIterator[StoredEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[StoredEvent]:
        while not self._sync.stopped:
            events, reached = await self._fetch(1.0)
            for event in events:
                if self._sync.stopped:
                    return
                self._position = event.position
                yield event
            self._position = reached


def subscribe(
    store: EventStoreBase,
    after_position: int = 0,
    *,
    categories: Sequence[str] | None = None,
    types: Sequence[str | type[Event]] | None = None,
    handler: Handler | None = None,
    batch_size: int = BATCH_SIZE,
) -> Subscription | SubscriptionWorker:
    """A :class:`Subscription`, or with ``handler`` a running :class:`SubscriptionWorker`."""
    subscription = Subscription(
        store, after_position, categories=categories, types=types, batch_size=batch_size
    )
    if handler is None:
        return subscription
    return SubscriptionWorker(subscription, handler)


__all__ = ["AsyncSubscription", "Subscription", "SubscriptionWorker", "subscribe"]
