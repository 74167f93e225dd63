"""Group commit of the log on PostgreSQL: one writer thread per backend
turns every queued :class:`~unbundled.log.WriteBatch` into part of one
transaction, in two round trips: ``BEGIN`` and the locking reads
(``_log_stage`` step 1), then the rows and ``COMMIT`` (step 3).

Why a thread of its own and not the event writer's: the two never touch
the same rows (records, offsets and producers here; streams, idempotency
keys and key-value keys there), so they cannot block or deadlock each
other, and neither batch waits for the other's round trips. A unit of work
that writes both runs in a transaction of its own (``_unit``), taking the
log's locks first and the event store's after, in the same orders.

A batch that is refused (unknown topic, partition out of range, stale
generation, fenced producer) is decided in Python before anything is
queued, so it fails alone and the others commit. When the transaction
itself fails (a deadlock, a serialization failure, a topic made again
between the reads: ``Retry``), it is rolled back and run again, up to
``_ATTEMPTS`` times; a statement error that is not transient splits the
batch so each request gets its own answer. If the connection is lost
after ``COMMIT`` was sent, the outcome is unknown: the callers get
``Unavailable`` (an idempotent producer's retry is then answered from its
window, never written twice).

An exception the writer does not expect (a bug) stops it for good: it
rolls back, closes its connection and fails the waiting and every later
request with :class:`~unbundled.errors.ThreadFailed`.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

import psycopg
from psycopg import errors as pg_errors

from ... import limits
from ..._ground import Waiter
from ..._ground.waiters import Failure, complete_all, withdrawn
from ...errors import Closed, Error, Unavailable
from ...log._protocol import WriteBatch
from ._log_stage import LogStage, LogStatements
from ._schema import Conn, translate
from ._stage import Retry

_ATTEMPTS = 4
_TRANSIENT = pg_errors.UniqueViolation | pg_errors.DeadlockDetected | pg_errors.SerializationFailure
_Request = tuple[WriteBatch, Waiter]


class LogWriter:
    """The log's group-commit thread of one :class:`PostgresBackend`."""

    def __init__(
        self,
        connect: Callable[[], Conn],
        schema: str,
        channel: str,
        where: str,
        clock: Callable[[], int],
        on_commit: Callable[[], None],
    ) -> None:
        self._connect = connect
        self._conn: Conn | None = None
        self._sql = LogStatements(schema)
        self._channel = channel
        self._where = where
        self._clock = clock
        self._on_commit = on_commit
        self._queue: collections.deque[_Request | None] = collections.deque()
        self._wake = threading.Condition()
        self._closed = False
        self._stopped = False
        self._failure = Failure()
        self._sent_commit = False
        self.transactions = 0  # committed transactions, for tests and benchmarks
        self._thread = threading.Thread(
            target=self._run, name=f"unbundled-pg-log-writer:{where}", daemon=True
        )
        self._thread.start()

    def submit(self, batch: WriteBatch, done: Waiter) -> None:
        with self._wake:
            if self._closed or self._stopped:
                self._failure.check()
                raise Closed(f"the log at {self._where} is closed")
            self._queue.append((batch, done))
            self._wake.notify()

    def close(self) -> None:
        """Commit what is queued, then stop and close the connection. Idempotent."""
        with self._wake:
            if not self._closed:
                self._closed = True
                self._queue.append(None)
                self._wake.notify()
        self._thread.join()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- the thread -------------------------------------------------------------

    def _run(self) -> None:
        taken: list[_Request] = []
        try:
            while True:
                taken, stop = self._take()
                if taken:
                    results = self._commit([b for b, _ in taken])
                    complete_all(zip([d for _, d in taken], results, strict=True))
                    taken = []
                if stop:
                    break
        except BaseException as exc:  # a bug, not a request's error: stop for good
            self._failure.set(self._thread.name, exc, f"the log at {self._where}")
            self._rollback()
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        finally:
            with self._wake:
                self._stopped = True
                rest = [r for r in self._queue if r is not None]
                self._queue.clear()
            rest = taken + rest
            if rest:
                error = (
                    self._failure.error()
                    if self._failure
                    else Closed(f"the log at {self._where} was closed")
                )
                complete_all((done, error) for _, done in rest)

    def _take(self) -> tuple[list[_Request], bool]:
        """The next requests (waiting for one); True when close() was called."""
        with self._wake:
            while not self._queue:
                self._wake.wait()
            taken: list[_Request] = []
            records = 0
            stop = False
            queue = self._queue
            while queue and len(taken) < limits.commit_requests_max:
                request = queue.popleft()
                if request is None:
                    stop = True
                    continue  # appends that raced with close() still commit
                if withdrawn(request[1]):
                    continue
                taken.append(request)
                records += sum(len(items) for items in request[0].appends.values())
                if records >= limits.commit_records_max:
                    break
            return taken, stop

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

    def _commit(self, batches: list[WriteBatch]) -> list[object]:
        """Commit ``batches`` in one transaction; one result (positions or an
        error) per batch."""
        for attempt in range(_ATTEMPTS):
            self._sent_commit = False
            try:
                return self._transaction(batches)
            except Error as exc:  # could not connect, or a damaged row
                self._rollback()
                return [exc] * len(batches)
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
                if len(batches) > 1 and not broken:
                    return [r for batch in batches for r in self._commit([batch])]
                error = translate(exc, self._where)
                if broken and self._sent_commit:
                    error = Unavailable(
                        f"{self._where}: the connection was lost as the transaction committed: "
                        "it may or may not have committed",
                        url=self._where,
                    )
                error.__cause__ = exc
                return [error] * len(batches)
        error = Unavailable(f"{self._where}: the log's topics changed under the writer; retry")
        return [error] * len(batches)

    def _transaction(self, batches: list[WriteBatch]) -> list[object]:
        conn = self._connection()
        stage = LogStage(self._sql, self._clock, self._where)
        with conn.pipeline():
            conn.execute("BEGIN")
            stage.open(conn, batches)
        stage.load()
        results: list[object] = []
        for batch in batches:
            try:
                results.append(stage.decide(batch))
            except Error as exc:
                results.append(exc)
        if not stage:
            conn.execute("ROLLBACK")
            return results
        with conn.pipeline():
            stage.write(conn, self._channel)
            self._sent_commit = True
            commit = conn.execute("COMMIT")
        if commit.statusmessage != "COMMIT":
            raise Unavailable(f"{self._where}: the transaction did not commit", url=self._where)
        self.transactions += 1
        self._on_commit()
        return results
