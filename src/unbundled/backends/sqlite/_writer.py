"""Group commit: one writer thread owns the write connection and turns every
queued request into part of one transaction and one sync.

Callers enqueue and block (or await); while the writer commits one batch the
next one accumulates, so under load each fsync carries many requests. Each
request is atomic on its own: requests that can fail after validation run in
a SAVEPOINT, so one failure rolls back that request alone. Across processes
on the same file, SQLite's write lock serialises the writers' batches.

A request whose caller stopped waiting before the writer took it (a
cancelled asyncio task) is withdrawn: skipped, never written. Anything the
writer does not expect (a bug, a failure in the maintenance it runs between
batches) stops it for good: it rolls back, which releases the file's write
lock for other processes, and fails the waiting and every later request with
:class:`~unbundled.errors.ThreadFailed` (see :class:`~unbundled._waiters.Failure`).
"""

from __future__ import annotations

import collections
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Protocol

import msgspec

from ... import limits
from ..._ground import Waiter
from ..._ground.waiters import Failure, SyncWaiter, complete_all, withdrawn
from ...errors import Closed, Error, UsageError
from ...log._protocol import WriteBatch
from ._errors import translate
from ._log_stage import Stage
from ._schema import BUSY_TIMEOUT_MS

_encode_headers = msgspec.msgpack.encode

Call = Callable[[sqlite3.Connection, Stage], object]


class Request:
    """One unit of work for the writer: a log batch, a call run inside a
    SAVEPOINT, or ``extra`` work for the extra stage (event appends)."""

    __slots__ = ("batch", "call", "done", "extra")

    def __init__(
        self, batch: WriteBatch | None, call: Call | None, done: Waiter, extra: object = None
    ) -> None:
        self.batch = batch
        self.call = call
        self.done = done
        self.extra = extra

    def records(self) -> int:
        """How many records it appends (counted by the writer, off the callers' path)."""
        if self.batch is None:
            return 1
        appends = self.batch.appends
        if len(appends) == 1:  # the common case, without a generator
            for items in appends.values():
                return len(items)
        return sum(len(items) for items in appends.values())


class ExtraStage(Protocol):
    """A second stage sharing the writer's transactions (the event store's).

    Like :class:`Stage` it validates and queues a request's rows in memory
    (all or nothing per request, so it needs no SAVEPOINT) and writes them
    at :meth:`flush`.
    """

    def begin(self, changed: bool) -> None:
        """After BEGIN; ``changed`` if another process committed since our last transaction."""

    def prepare(self, requests: list[Request]) -> None:
        """Read what this transaction's requests need, in as few statements as possible."""

    def stage(self, work: object) -> object:
        """Validate and queue one request's work; return its result or raise."""

    def flush(self) -> None:
        """Write everything queued."""

    def invalidate(self) -> None:
        """Forget cached state (after a rollback, or a call that changed it)."""


# Sharing the file's write lock with writers in other processes. SQLite's busy
# handler naps up to 100 ms between tries, and a busy writer frees the lock
# only for moments between transactions: a process waiting that way starved
# for seconds (long enough for its consumer-group lease to run out). So a
# waiting writer polls every millisecond or so, and a writer that has held
# the lock back to back for _STREAK_S lets go of it for _YIELD_S.
_LOCK_POLL_S = 0.001
_STREAK_S = 0.1
_YIELD_S = 0.002
_SQLITE_BUSY = 5


ApplyFull = Callable[[sqlite3.Connection, Stage, WriteBatch], object]


class Writer:
    """The group-commit thread of one process for one database file."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: str,
        apply_full: ApplyFull,
        on_commit: Callable[[], None],
        idle: Callable[[], None] | None = None,
        extra_stage: Callable[[sqlite3.Connection, Stage], ExtraStage] | None = None,
    ) -> None:
        self._conn = conn
        self._path = path
        self._apply_full = apply_full
        self._on_commit = on_commit
        self._idle = idle
        self._queue: collections.deque[Request | None] = collections.deque()
        self._wake = threading.Event()
        self._sleeping = False
        self._closed = False
        self.transactions = 0  # committed transactions, for tests and benchmarks
        self._stage = Stage(conn, path)
        self._extra = extra_stage(conn, self._stage) if extra_stage is not None else None
        self._unannounced: list[tuple[Waiter, object]] = []
        # Held while a transaction runs, by the writer thread or by a caller
        # that found the writer idle and commits its own request (see submit).
        self._commit_lock = threading.Lock()
        self._leader: threading.Thread | None = None  # a caller committing its own request
        conn.execute("PRAGMA busy_timeout = 0")  # _begin waits for the lock itself
        self._streak_start = time.monotonic()  # since when we hold the lock back to back
        self._failure = Failure()  # why the thread stopped, if it failed
        self._stopped = False  # the thread has ended: nobody takes from the queue any more
        self._batch: list[Request] = []  # the batch being committed ...
        self._answered = 0  # ... and how many of it (a prefix) have their result
        self._thread = threading.Thread(
            target=self._run, name=f"unbundled-writer:{path}", daemon=True
        )
        self._thread.start()

    def submit(self, request: Request) -> None:
        if self._closed or self._stopped:
            self._failure.check()  # the thread failed: say why
            raise Closed(f"the log at {self._path} is closed")
        if threading.current_thread() in (self._thread, self._leader):
            # From code the writer runs (a projection handler): it would wait
            # for itself forever.
            raise UsageError(
                "cannot write through the store from inside a write it is running "
                "(a projection handler): write through the handler's transaction"
            )
        if (
            self._sleeping
            and not self._queue
            and type(request.done) is SyncWaiter
            and request.done.inline
            and self._commit_lock.acquire(blocking=False)
        ):
            # Leader path: the writer is idle and nobody waits, so commit here
            # and spare the two thread hand-offs (there and back) that make a
            # lone caller's append cost twice a raw commit. Under load the
            # writer is busy and requests queue as usual, so batching is kept.
            try:
                if self._sleeping and not self._queue:
                    self._commit_alone(request)
                    return
            finally:
                self._commit_lock.release()
        self._queue.append(request)
        if self._stopped:  # the thread ended after the checks above: answer it ourselves
            self._drain()
        if self._sleeping:  # waking a busy writer would only cost a futex call
            # Clear it ourselves: until the writer runs again, the submitters
            # after us need not set the event too.
            self._sleeping = False
            self._wake.set()

    def _commit_alone(self, request: Request) -> None:
        """Commit one request on the caller's thread (the commit lock held)."""
        self._leader = threading.current_thread()
        try:
            self._commit([request])
        except BaseException as exc:  # as _run does: the caller must hear of it
            self._rollback()
            self._announce()
            complete_all([(request.done, exc)])
            raise
        finally:
            self._leader = None
        self._announce()
        self._streak_start = time.monotonic()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.append(None)
            self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # not a request's error (those go to its caller): ours
            self._fail(exc)
        finally:
            self._stopped = True
            self._drain()

    def _serve(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                # Announce sleep, then re-check: a submit that saw us awake
                # has already queued its request, and one that sees us
                # sleeping sets the event, so no wake-up is lost.
                self._sleeping = True
                if not queue:
                    self._wake.wait(1.0 if self._idle else None)
                self._sleeping = False
                self._wake.clear()
                self._streak_start = time.monotonic()
                if not queue:
                    if self._idle is not None:
                        with self._commit_lock:
                            self._idle()
                    continue
            with self._commit_lock:
                batch: list[Request] = []
                records = 0
                stop = False
                skipped: list[Request] = []
                while queue and len(batch) < limits.commit_requests_max:
                    request = queue.popleft()
                    if request is None:
                        stop = True
                        break
                    if withdrawn(request.done):  # its caller gave up before we took it
                        skipped.append(request)
                        continue
                    batch.append(request)
                    records += request.records()
                    if records >= limits.commit_records_max:
                        break
                if skipped:  # an interrupted sync waiter's rescue thread waits for its turn
                    complete_all((r.done, None) for r in skipped)
                if batch:
                    self._batch, self._answered = batch, 0
                    self._commit(batch)
                    self._batch = []
                yielding = False
                if not queue or stop:
                    self._announce()
                elif time.monotonic() - self._streak_start >= _STREAK_S:
                    self._announce()
                    yielding = True
            if yielding:
                time.sleep(_YIELD_S)  # other processes' writers get a turn
                self._streak_start = time.monotonic()
            if stop:
                return
            if self._idle is not None:
                with self._commit_lock:
                    self._idle()

    def _fail(self, exc: BaseException) -> None:
        """Stop for good after an unexpected exception: roll back (releasing
        the file's write lock), give the decided results to their callers,
        and fail the rest of the batch being committed."""
        self._failure.set(self._thread.name, exc, f"the database {self._path}")
        with self._commit_lock:  # a leader (see submit) may still be committing
            self._rollback()
            self._announce()
            unanswered, self._batch = self._batch[self._answered :], []
            complete_all((r.done, self._failure.error()) for r in unanswered)

    def _drain(self) -> None:
        """Answer every queued request: the thread has ended (closed or failed)."""
        queue = self._queue
        rest: list[Request] = []
        while queue:
            try:
                request = queue.popleft()
            except IndexError:  # a submitter drained it meanwhile
                break
            if request is not None:
                rest.append(request)
        if rest:
            failure = self._failure
            complete_all(
                (
                    r.done,
                    failure.error() if failure else Closed(f"the log at {self._path} was closed"),
                )
                for r in rest
            )

    def _announce(self) -> None:
        """Wake the callers of the last committed batch (it is durable)."""
        if self._unannounced:
            done, self._unannounced = self._unannounced, []
            complete_all(done)

    def _commit(self, batch: list[Request]) -> None:
        """Commit ``batch``; its callers are woken later, by :meth:`_announce`.

        The previous batch's callers are woken just before this batch's
        COMMIT, so they run (and queue their next requests) while the commit
        waits for the disk, instead of fighting the writer for the GIL on
        every statement of this batch.
        """
        try:
            results = self._transaction(batch)
            self._announce()
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            self._announce()
            if len(batch) > 1:  # isolate the request that broke the transaction
                for request in batch:
                    self._commit([request])
                    self._announce()
                return
            error = translate(exc, self._path)
            error.__cause__ = exc
            results = [error]
        except Error as exc:
            self._rollback()
            self._announce()
            results = [exc] * len(batch)
        else:
            self.transactions += 1
        self._on_commit()
        self._unannounced.extend(zip([r.done for r in batch], results, strict=True))
        self._answered += len(batch)

    def _rollback(self) -> None:
        self._stage.invalidate()  # counters may have moved past what was rolled back
        if self._extra is not None:
            self._extra.invalidate()
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _begin(self) -> None:
        """BEGIN IMMEDIATE, polling for the write lock (see ``_LOCK_POLL_S``);
        after ``BUSY_TIMEOUT_MS`` the busy error goes to the callers."""
        conn = self._conn
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        pause = _LOCK_POLL_S / 8
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != _SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(2 * pause, _LOCK_POLL_S)
            self._streak_start = time.monotonic()  # another process has had a turn

    def _transaction(self, batch: list[Request]) -> list[object]:
        conn = self._conn
        self._begin()
        stage = self._stage
        changed = stage.begin()
        extra = self._extra
        if extra is not None:
            extra.begin(changed)
            extra.prepare(batch)
        results: list[object] = []
        for index, request in enumerate(batch):
            if request.extra is not None:
                assert extra is not None
                try:
                    results.append(extra.stage(request.extra))
                except Exception as exc:
                    results.append(exc)
                continue
            simple = (
                request.batch is not None
                and request.batch.producer is None
                and not request.batch.commits
            )
            if simple:
                assert request.batch is not None
                try:
                    results.append(stage.stage(request.batch))
                except Exception as exc:
                    results.append(exc)
                continue
            stage.flush()
            if extra is not None:
                extra.flush()
            mark = stage.mark()
            conn.execute("SAVEPOINT request")
            try:
                if request.call is not None:
                    result = request.call(conn, stage)
                else:
                    assert request.batch is not None
                    result = self._apply_full(conn, stage, request.batch)
            except Exception as exc:
                conn.execute("ROLLBACK TO request")
                conn.execute("RELEASE request")
                stage.reset(mark)
                results.append(exc)
            else:
                conn.execute("RELEASE request")
                results.append(result)
            if extra is not None:
                # The call may have changed what the extra stage caches (or,
                # rolled back, left it ahead of the file); the event appends
                # after it in this batch need their state read again.
                extra.invalidate()
                extra.prepare(batch[index + 1 :])
        stage.flush()
        if extra is not None:
            extra.flush()
        return results
