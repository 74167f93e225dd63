"""Group commit on PostgreSQL: one writer thread per backend turns every
queued append into part of one transaction (the steps are in ``_stage``).

Under load the writer needs one round trip per transaction: the write and
``COMMIT`` of one batch go out in one pipeline with ``BEGIN`` and the reads
of the next batch (the appends queued meanwhile), so while the server
commits one batch it already locks and reads for the next. A batch alone
takes two round trips (reads, then write).

The counter lock is taken by the write statement and held until COMMIT, so
transactions that write events commit one at a time in position order:
positions are dense, and a reader sees a prefix of them (see
docs/how-to/eventstore-postgres.md). The stream row locks make
expected-version checks hold across processes.

When anything fails, the writer rolls back, puts the next batch back in the
queue, and replays the batch on the careful path (:meth:`Writer._commit`:
retries, then one request per transaction to isolate the culprit). The
replay is safe even if the failed round trip did commit: every event id
then exists, and the idempotent-retry rule returns the original results.

An append whose caller stopped waiting before the writer took it (a
cancelled asyncio task) is withdrawn: skipped, never written. An exception
the writer does not expect (a bug) stops it for good: it rolls back, closes
its connection (releasing every lock) and fails the waiting and every later
append with :class:`~unbundled.errors.ThreadFailed`.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence

import psycopg
from psycopg import errors as pg_errors

from ... import limits
from ..._ground import Waiter
from ..._ground.waiters import Failure, complete_all, withdrawn
from ...errors import Closed, Error, Unavailable
from ...eventstore._protocol import StreamWrite
from ._schema import Conn, translate
from ._stage import Opened, Request, Retry, Statements, decide, finish, open_batch

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
    ) -> None:
        self._conn = conn
        self._connect = connect
        self._sql = Statements(schema)
        self._channel = channel
        self._where = where
        self._clock = clock
        self._on_commit = on_commit
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
        if self._closed or self._stopped:
            self._failure.check()  # the thread failed: say why
            raise Closed(f"the event store at {self._where} is closed")
        self._queue.append(Request(writes, done))
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
            self._complete(opened, self._commit(requests))
            return None
        return opened

    def _advance(self, opened: Opened) -> Opened | None:
        """Decide and write ``opened``, and open the next batch in the same
        round trip; complete ``opened``'s callers; return the next batch."""
        following: list[Request] = []
        nxt: Opened | None = None
        try:
            rows = decide(opened, self._existing)
            following = self._take()
            nxt = Opened(following) if following else None
            if nxt is not None and not nxt.valid:
                self._complete(nxt, nxt.results)
                following, nxt = [], None
            conn = self._connection()
            cursor = None
            with conn.pipeline():
                if rows.ids:
                    cursor = conn.execute(
                        self._sql.write, rows.params(self._clock(), self._channel)
                    )
                    conn.execute("COMMIT")
                else:
                    conn.execute("ROLLBACK")  # only retries and failures: nothing to write
                if nxt is not None:
                    open_batch(conn, self._sql, nxt, self._existing)
        except Exception:  # anything: the careful path decides or reports
            self._rollback()
            if following:
                self._queue.extendleft(reversed(following))
            self._complete(opened, self._commit(opened.requests))
            self._on_commit()  # in case the failed round trip committed after all
            return None
        if cursor is not None:
            row = cursor.fetchone()
            assert row is not None
            self.transactions += 1
            self._on_commit()
            self._complete(opened, finish(opened, int(row[0])))
        else:
            self._complete(opened, opened.results)
        return nxt

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
        rows = decide(opened, self._existing)
        if not rows.ids:
            conn.execute("ROLLBACK")
            return opened.results
        with conn.pipeline():
            cursor = conn.execute(self._sql.write, rows.params(self._clock(), self._channel))
            self._sent_commit = True
            conn.execute("COMMIT")
        row = cursor.fetchone()
        assert row is not None
        self.transactions += 1
        self._on_commit()
        return finish(opened, int(row[0]))
