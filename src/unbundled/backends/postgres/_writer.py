"""Group commit on PostgreSQL: one writer thread per backend turns every
queued append, and every unit of work without SQL or idempotency effects
(records, offset commits, events, idempotency operations, key-value
changes), into part of one transaction (the steps are in ``_batch``).

Units share the event writer's thread and batches rather than a second
writer: a unit and an append commit in the same transaction, the counter
lock is still taken by one transaction at a time (two writers of events
would queue on it anyway), and every lock is taken in one order (streams,
idempotency keys, key-value keys, consumer groups, partitions, counter) by
one thread, so the writer cannot deadlock with itself (nor with the log's
writer, which takes groups and partitions in the same order). Units with
SQL or idempotency effects run on a pooled connection, one transaction
each (``_unit``).

Under load the writer needs one round trip per transaction: the write and
``COMMIT`` of one batch go out in one pipeline with ``BEGIN`` and the reads
of the next batch (the requests queued meanwhile), so while the server
commits one batch it already locks and reads for the next. A batch alone
takes two round trips (reads, then write).

The counter lock is taken by the write statement and held until COMMIT, so
transactions that write events commit one at a time in position order:
positions are dense, and a reader sees a prefix of them (see
docs/how-to/eventstore-postgres.md). The stream row locks make
expected-version checks hold across processes.

When a batch's round trip fails, the writer rolls back, puts the next batch
back in the queue, and replays the batch on the careful path
(:meth:`Writer._replay`): appends together (:meth:`Writer._commit`:
retries, then one request per transaction to isolate the culprit), each
unit in a transaction of its own. If the round trip's answer shows that
the batch's COMMIT went through (what failed were the next batch's reads),
the batch is answered as committed instead. Replaying appends is safe even
if the COMMIT's outcome is unknown (the connection was lost after sending
it): every event id then exists, and the idempotent-retry rule returns the
original results. A unit is not idempotent (a key-value write would apply
twice), so a unit whose COMMIT's outcome is unknown is answered with
:class:`~unbundled.errors.Unavailable`, as its own transaction would be.

A request whose caller stopped waiting before the writer took it (a
cancelled asyncio task) is withdrawn: skipped, never written. An exception
the writer does not expect (a bug) stops it for good: it rolls back, closes
its connection (releasing every lock) and fails the waiting and every later
request with :class:`~unbundled.errors.ThreadFailed`.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from ... import limits
from ..._ground import Waiter, now_ms
from ..._ground.waiters import Failure, complete_all, withdrawn
from ...errors import Closed, Error, Unavailable
from ...eventstore._protocol import StreamWrite
from ...transaction._unit import Unit
from ._batch import (
    BatchStatements,
    Decided,
    Opened,
    Request,
    decide,
    finish,
    open_batch,
    write_batch,
)
from ._schema import Conn, translate
from ._stage import Retry

# Transient failures retried before a batch is split up: a unique violation
# (another process stored one of our event ids after we looked), a deadlock
# or a serialization failure. Each retry reads the state afresh.
_ATTEMPTS = 4
_TRANSIENT = pg_errors.UniqueViolation | pg_errors.DeadlockDetected | pg_errors.SerializationFailure


class Writer:
    """The group-commit thread of one :class:`PostgresBackend`."""

    def __init__(
        self,
        conn: Conn | None,
        connect: Callable[[], Conn],
        schema: str,
        channel: str,
        where: str,
        clock: Callable[[], int],
        on_commit: Callable[[], None],
        on_keys: Callable[[], None],
        on_log: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._connect = connect
        self._sql = BatchStatements(schema, clock, where)
        self._channel = channel
        self._where = where
        self._clock = clock
        # Units' idempotency decisions: the server's clock unless the backend
        # was given one (as ``_idempotency._idem_now``).
        self._unit_clock = None if clock is now_ms else clock
        self._on_commit = on_commit  # events committed
        self._on_keys = on_keys  # idempotency records committed
        self._on_log = on_log  # records or offsets committed
        self._existing: set[str] = set()  # streams known to have a committed row
        self._queue: collections.deque[Request | None] = collections.deque()
        self._wake = threading.Event()
        self._sleeping = False
        self._closed = False
        self._stopping = False  # the writer took close()'s marker from the queue
        self._sent_commit = False  # this attempt's COMMIT went out: its outcome may be unknown
        self.transactions = 0  # committed transactions, for tests and benchmarks
        self._failure = Failure()  # why the thread stopped, if it failed
        self._stopped = False  # the thread has ended: nobody takes from the queue any more
        # Taken from the queue and not yet answered (by id): a failure answers them.
        self._unanswered: dict[int, Request] = {}
        self._drain_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"unbundled-pg-writer:{where}", daemon=True
        )
        self._thread.start()

    # --- the callers' side ----------------------------------------------------

    def submit(self, writes: Sequence[StreamWrite], done: Waiter) -> None:
        self._put(Request(writes, done))

    def submit_unit(self, unit: Unit, done: Waiter) -> None:
        """Queue a unit that ``_unit_stage.staged`` accepts."""
        self._put(Request(unit.events, done, unit))

    def _put(self, request: Request) -> None:
        if self._closed or self._stopped:
            self._failure.check()  # the thread failed: say why
            raise Closed(f"the event store at {self._where} is closed")
        self._queue.append(request)
        if self._stopped:  # the thread ended after the check above: answer it ourselves
            self._drain()
        if self._sleeping:  # waking a busy writer would only cost a futex call
            self._sleeping = False
            self._wake.set()

    def close(self) -> None:
        """Commit what is queued, then stop and close the connection."""
        if not self._closed:
            self._closed = True
            self._queue.append(None)
            self._wake.set()
        self._thread.join()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- the writer thread ----------------------------------------------------

    def _run(self) -> None:
        opened: Opened | None = None
        try:
            while True:
                if opened is None:
                    requests = self._take()
                    if not requests:
                        if self._stopping:
                            break
                        self._sleep()
                        continue
                    opened = self._open(requests)
                else:
                    opened = self._advance(opened)
        except BaseException as exc:  # a bug, not a request's error: stop for good
            self._failure.set(self._thread.name, exc, f"the event store at {self._where}")
            self._rollback()
            if self._conn is not None:  # closing it releases every lock it holds
                self._conn.close()
                self._conn = None
        finally:
            self._stopped = True
            self._drain()

    def _drain(self) -> None:
        """Answer every queued or taken append: the thread has ended (closed or failed)."""
        queue = self._queue
        with self._drain_lock:  # the thread and late submitters may drain at once
            rest = self._unanswered  # empty unless the thread failed
            self._unanswered = {}
            while queue:
                request = queue.popleft()
                if request is not None:
                    rest[id(request)] = request
        if rest:
            failure = self._failure
            complete_all(
                (
                    r.done,
                    failure.error()
                    if failure
                    else Closed(f"the event store at {self._where} was closed"),
                )
                for r in rest.values()
            )

    def _sleep(self) -> None:
        # Announce sleep, then re-check: a submit that saw us awake has
        # already queued, and one that sees us asleep sets the event.
        self._sleeping = True
        if not self._queue:
            self._wake.wait()
        self._sleeping = False
        self._wake.clear()

    def _take(self) -> list[Request]:
        """The next batch from the queue (maybe empty); never waits."""
        queue = self._queue
        batch: list[Request] = []
        events = 0
        while queue and len(batch) < limits.commit_requests_max:
            request = queue.popleft()
            if request is None:
                self._stopping = True
                continue  # appends that raced with close() still commit
            if withdrawn(request.done):  # its caller gave up before we took it
                continue
            batch.append(request)
            self._unanswered[id(request)] = request
            events += request.events()
            if events >= limits.commit_records_max:
                break
        return batch

    def _complete(self, opened: Opened, results: list[object]) -> None:
        unanswered = self._unanswered
        for request in opened.requests:
            unanswered.pop(id(request), None)
        complete_all(zip([r.done for r in opened.requests], results, strict=True))

    def _open(self, requests: list[Request]) -> Opened | None:
        """Begin a batch's transaction and read what it needs (one round trip)."""
        opened = Opened(requests)
        if not opened.valid:
            self._complete(opened, opened.results)
            return None
        try:
            conn = self._connection()
            with conn.pipeline():
                open_batch(conn, self._sql, opened, self._existing)
        except Exception:  # anything: the careful path decides or reports
            self._rollback()
            self._complete(opened, self._replay(requests, uncertain=False))
            return None
        return opened

    def _advance(self, opened: Opened) -> Opened | None:
        """Decide and write ``opened``, and open the next batch in the same
        round trip; complete ``opened``'s callers; return the next batch."""
        following: list[Request] = []
        nxt: Opened | None = None
        decided: Decided | None = None
        cursor = commit = None
        self._sent_commit = False
        try:
            decided = decide(opened, self._existing, self._unit_clock)
            following = self._take()
            nxt = Opened(following) if following else None
            if nxt is not None and not nxt.valid:
                self._complete(nxt, nxt.results)
                following, nxt = [], None
            conn = self._connection()
            with conn.pipeline():
                if decided:
                    cursor = write_batch(conn, self._sql, decided, self._clock(), self._channel)
                    self._sent_commit = True
                    commit = conn.execute("COMMIT")
                else:
                    conn.execute("ROLLBACK")  # only retries and failures: nothing to write
                if nxt is not None:
                    open_batch(conn, self._sql, nxt, self._existing)
        except Exception:  # anything: the careful path decides or reports
            # Results arrive in order: COMMIT's is in even if a later statement failed.
            committed = commit is not None and commit.statusmessage == "COMMIT"
            uncertain = self._sent_commit and not committed and self._lost()
            self._rollback()
            if following:
                self._queue.extendleft(reversed(following))
            if committed:  # what failed was the next batch's reads: this one is done
                assert decided is not None
                self._complete(opened, self._committed(opened, decided, cursor))
            else:
                self._complete(opened, self._replay(opened.requests, uncertain))
                self._on_commit()  # in case the failed round trip committed after all
                self._on_log()
            return None
        if decided:
            self._complete(opened, self._committed(opened, decided, cursor))
        else:
            self._complete(opened, opened.results)
        return nxt

    def _committed(
        self, opened: Opened, decided: Decided, cursor: psycopg.Cursor[Any] | None
    ) -> list[object]:
        """After ``opened``'s COMMIT: tell the waiters, return the results."""
        self.transactions += 1
        base = 0
        if cursor is not None:
            row = cursor.fetchone()
            assert row is not None
            base = int(row[0])
            self._on_commit()
        if decided.keys_changed():
            self._on_keys()
        if decided.log_changed():
            self._on_log()
        return finish(opened, base)

    def _lost(self) -> bool:
        """Whether the connection is gone (a statement's answer may be missing)."""
        conn = self._conn
        return conn is None or conn.closed or conn.broken

    # --- the careful path -------------------------------------------------------

    def _connection(self) -> Conn:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = None
            conn = self._conn = self._connect()
        return conn

    def _rollback(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            if not conn.broken and not conn.closed:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
                return
        except psycopg.Error:
            pass
        conn.close()
        self._conn = None

    def _replay(self, requests: list[Request], uncertain: bool) -> list[object]:
        """The careful path for a batch whose round trip failed: its appends
        through :meth:`_commit`, each unit in a transaction of its own; but
        when the batch's COMMIT may have gone through (``uncertain``), a
        unit is answered with ``Unavailable``: replaying it could apply it
        twice. One result per request."""
        if all(r.unit is None for r in requests):
            return self._commit(requests)
        results: list[object] = [None] * len(requests)
        appends = [i for i, r in enumerate(requests) if r.unit is None]
        if appends:
            done = self._commit([requests[i] for i in appends])
            for i, result in zip(appends, done, strict=True):
                results[i] = result
        for i, request in enumerate(requests):
            if request.unit is None:
                continue
            if uncertain:
                results[i] = Unavailable(
                    f"{self._where}: the connection was lost as the transaction committed: "
                    "it may or may not have committed",
                    url=self._where,
                )
            else:
                (results[i],) = self._commit([request])
        return results

    def _commit(self, requests: list[Request]) -> list[object]:
        """Commit ``requests`` in one transaction, retrying transient failures
        and isolating a request that breaks the statement; one result (a list
        of AppendResult, or an error) per request."""
        for attempt in range(_ATTEMPTS):
            self._sent_commit = False
            try:
                return self._transaction(requests)
            except Error as exc:  # could not connect
                self._rollback()
                return [exc] * len(requests)
            except Retry:
                self._rollback()
                continue
            except psycopg.Error as exc:
                self._rollback()
                broken = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
                if broken and not self._sent_commit and attempt == 0:
                    continue  # the connection died idle (a server restart): nothing was sent
                if isinstance(exc, _TRANSIENT) and attempt < _ATTEMPTS - 1:
                    continue
                if len(requests) > 1 and not broken:
                    return [r for request in requests for r in self._commit([request])]
                # With COMMIT sent and the connection lost, the outcome is
                # unknown: Unavailable tells callers to retry with the same
                # event ids, which is safe (the append is idempotent).
                error = translate(exc, self._where)
                error.__cause__ = exc
                return [error] * len(requests)
        error = Unavailable(f"{self._where}: the stream table changed under the writer; retry")
        return [error] * len(requests)

    def _transaction(self, requests: list[Request]) -> list[object]:
        opened = Opened(requests)
        if not opened.valid:
            return opened.results
        conn = self._connection()
        with conn.pipeline():
            open_batch(conn, self._sql, opened, self._existing)
        decided = decide(opened, self._existing, self._unit_clock)
        if not decided:
            conn.execute("ROLLBACK")
            return opened.results
        with conn.pipeline():
            cursor = write_batch(conn, self._sql, decided, self._clock(), self._channel)
            self._sent_commit = True
            conn.execute("COMMIT")
        return self._committed(opened, decided, cursor)
