"""The unit of work on PostgreSQL.

A unit without SQL or idempotency effects -- records, offset commits,
events, idempotency results or phases, key-value changes -- goes to the
event writer's queue and is group-committed with the other units and
appends queued meanwhile (``_batch``, ``_unit_stage``, ``_log_stage``).
A unit with SQL or idempotency effects runs in one transaction of its own
on a pooled connection, as described next: it needs the connection in the
middle, for the caller's code.

The parts go in the order every backend follows. Events are staged with the
event store's own steps (stream rows locked, expected versions and ids
checked at once); idempotency results and phases are the fenced statements
``complete`` uses; key-value changes are the KV store's statements, whose
row locks hold to COMMIT; then the caller's SQL; and last, right before
COMMIT, the log's locks (consumer groups, partitions: ``_log_stage``) and
the event counter's lock (so offsets and positions stay dense and in commit
order, and those locks are held for one round trip).

Records and offset commits are decided first, as every backend decides
them, with the log's rules on rows read without locks (so a unit that the
log refuses is refused before its other parts are looked at); they are
decided again, for good, on the rows locked right before COMMIT.

A unit runs on the caller's thread; an asyncio caller's runs on a worker
thread of the backend's, so the event loop never blocks on the server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from ..._ground import Waiter
from ..._ground.waiters import AsyncWaiter
from ...errors import Closed, CompareFailed, Unavailable, UsageError
from ...idempotency import _core as _idem_core
from ...idempotency._protocol import IdempotencyRecord
from ...log._protocol import Position, WriteBatch
from ...transaction import _unit
from ._idempotency import _record
from ._kv import _KvSql
from ._log_stage import LogStage, LogStatements
from ._schema import Conn, translated
from ._stage import Retry, Staging, Statements
from ._unit_stage import staged
from ._writer import Writer

T = TypeVar("T")
_IDLE = psycopg.pq.TransactionStatus.IDLE
_INTRANS = psycopg.pq.TransactionStatus.INTRANS


class _Passed(BaseException):
    """Carries an exception of the caller's SQL past our error translation, as it is."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class PostgresUnit:
    """:meth:`submit_unit` of :class:`unbundled.backends.postgres.PostgresBackend`."""

    unit_parts = frozenset(_unit.PARTS)

    channel: str
    clock: Callable[[], int]
    _where: str
    _closed: bool
    _handling: threading.local
    _pool: Any
    _notifier: Any
    _writer: Writer
    _idem_now: Callable[[], int | None]
    _read_key: Callable[..., tuple[IdempotencyRecord | None, int]]
    _stale: Callable[..., Exception]
    if TYPE_CHECKING:  # the other parts' statements, cached properties there

        @property
        def _events_sql(self) -> Statements: ...

        @property
        def _isql(self) -> Any: ...

        @property
        def _kvsql(self) -> _KvSql: ...

    _unit_pool: ThreadPoolExecutor | None = None
    _unit_log_sql_cached: LogStatements | None = None
    schema: str
    _unit_lock = threading.Lock()  # only guards creating the pool, rarely taken

    def submit_unit(self, unit: _unit.Unit, done: Waiter) -> None:
        """Run ``unit`` in one transaction (see
        :class:`~unbundled.database._unit.UnitBackend`)."""
        if self._closed:
            raise Closed(f"the database at {self._where} is closed")
        _unit.check_parts(unit, self, self._where)
        if getattr(self._handling, "name", None) is not None:
            done(UsageError("cannot commit a transaction from inside a projection handler"))
            return
        if staged(unit):
            self._writer.submit_unit(unit, done)
            return
        if type(done) is AsyncWaiter:
            self._workers().submit(self._answer, unit, done)
        else:
            self._answer(unit, done)

    def _workers(self) -> ThreadPoolExecutor:
        with self._unit_lock:
            if self._unit_pool is None:
                self._unit_pool = ThreadPoolExecutor(8, thread_name_prefix="unbundled-unit")
            return self._unit_pool

    def _close_units(self) -> None:
        if self._unit_pool is not None:
            self._unit_pool.shutdown(wait=True)

    def _answer(self, unit: _unit.Unit, done: Waiter) -> None:
        try:
            result: object = self.commit_unit_now(unit)
        except Exception as exc:  # typed errors, and what the caller's SQL raised, as it is
            result = exc
        done(result)

    def commit_unit_now(self, unit: _unit.Unit) -> _unit.Committed:
        """Commit ``unit`` on this thread: what ``submit_unit`` does, as a call."""
        try:
            return self._commit_unit(unit)
        except _Passed as passed:
            error = passed.error
        raise error  # outside the except block: its own cause and context stay

    def _commit_unit(self, unit: _unit.Unit) -> _unit.Committed:
        if self._closed:
            raise Closed(f"the database at {self._where} is closed")
        with translated(self._where), self._pool.connection() as conn:
            try:
                committed, staging, written, views = self._run_unit(conn, unit)
            except BaseException:
                if not conn.broken and conn.info.transaction_status != _IDLE:
                    conn.execute("ROLLBACK")
                raise
        if unit.appends or unit.commits:
            self._notifier.bump_log()
        if written is not None:
            base = written.fetchone()
            assert base is not None
            staging.finish(int(base[0]))
            self._notifier.bump()
        else:
            staging.finish(0)
        if unit.idempotency:
            self._notifier.bump_keys()
        for view in views:
            view.fill(committed)
        return committed

    def _run_unit(
        self, conn: Conn, unit: _unit.Unit
    ) -> tuple[_unit.Committed, Staging, psycopg.Cursor[Any] | None, list[_unit.Effects]]:
        conn.execute("BEGIN")
        views: list[_unit.Effects] = []
        stored: list[IdempotencyRecord] = []
        if unit.effects:
            # The fenced updates first: they lock the keys' rows, so no
            # take-over can happen before COMMIT, and a stale token runs no
            # effects (StaleToken before anything else, as on every backend).
            stored = [self._idempotency_op(conn, op) for op in unit.idempotency]
            views = _passing(lambda: _unit.run_effects(unit, conn, self._where))
            _check_status(conn)
        batch = unit.batch()
        if batch is not None:  # decided first, as every backend does (nothing locked yet)
            self._log_stage(conn, batch, lock=False).check(batch)
        staging = Staging(conn, self._events_sql)
        appended = staging.append(unit.events) if unit.events else []
        if not unit.effects:
            stored = [self._idempotency_op(conn, op) for op in unit.idempotency]
        changes = [self._kv_op(conn, op) for op in unit.kv]
        results: list[object] = []
        for call in unit.sql:
            results.append(_passing(lambda call=call: call(conn)))  # type: ignore[misc]
            _check_status(conn)
        positions = []
        if batch is not None:  # the log's locks, then the event counter's, then COMMIT
            log = self._log_stage(conn, batch, lock=True)
            positions = _log_decide(log, batch, self._where)
        try:
            with conn.pipeline():
                if batch is not None:
                    log.write(conn, self.channel)
                written = staging.write(self.clock(), self.channel)
                commit = conn.execute("COMMIT")
        except pg_errors.UniqueViolation as exc:
            # Another process stored one of the event ids after we looked:
            # a retry sees it and the idempotent-append rule answers it.
            raise Unavailable(f"{self._where}: an event id was stored meanwhile; retry") from exc
        if commit.statusmessage != "COMMIT":
            raise Unavailable(f"{self._where}: the transaction did not commit")
        committed = _unit.Committed(positions, appended, stored, changes, results)
        return committed, staging, written, views

    def _log_stage(self, conn: Conn, batch: WriteBatch, lock: bool) -> LogStage:
        """The log's reads for ``batch`` (one round trip); ``lock``: taking
        the rows' locks, as the writer does, to hold them until COMMIT."""
        stage = LogStage(self._unit_log_sql, self.clock, self._where)
        with conn.pipeline():
            stage.open(conn, [batch], lock=lock)
        stage.load()
        return stage

    @property
    def _unit_log_sql(self) -> LogStatements:
        sql = self._unit_log_sql_cached
        if sql is None:
            sql = self._unit_log_sql_cached = LogStatements(self.schema)
        return sql

    def _idempotency_op(self, conn: Conn, op: _unit.IdemOp) -> IdempotencyRecord:
        now = self._idem_now()
        if op.kind == "complete":
            params = {
                "key": op.key,
                "token": op.token,
                "result": op.output,
                "error": op.error,
                "retention": op.retention_ms,
                "channel": self.channel,
                "now": now,
            }
            row = conn.execute(self._isql.complete, params).fetchone()
            if row is None:
                raise self._stale(op.key, op.token, _decide(op), conn)
            record = _record(row[:-1])
            assert record is not None
            return record
        import msgspec

        params = {
            "key": op.key,
            "token": op.token,
            "phase": op.phase,
            "output": msgspec.json.encode(op.output)[1:-1].decode(),
            "now": now,
        }
        if conn.execute(self._isql.phase, params).rowcount == 0:
            raise self._stale(op.key, op.token, _decide(op), conn)
        record, _ = self._read_key(op.key, conn)
        assert record is not None
        return record

    def _kv_op(self, conn: Conn, op: _unit.KvOp) -> int | bool:
        sql = self._kvsql
        params: dict[str, Any] = {"key": op.key, "new": op.value}
        if op.kind == "write":
            row = conn.execute(sql.write, params).fetchone()
            assert row is not None
            return int(row[0])
        if op.kind == "delete":
            return conn.execute(sql.delete, params).fetchone() is not None
        expected = op.expected
        assert expected is not None
        if expected.version == 0 or (expected.version is None and expected.value is None):
            statement = sql.create
        elif expected.version is not None:
            statement, params["version"] = sql.swap_version, expected.version
        else:
            statement, params["value"] = sql.swap_value, expected.value
        row = conn.execute(statement, params).fetchone()
        if row is not None:
            return int(row[0])
        found = conn.execute(sql.read, {"key": op.key}).fetchone()
        slot = None if found is None else (_bytes(found[0]), int(found[1]))
        _unit.apply_kv(slot, op)  # raises CompareFailed with the memory model's details
        raise CompareFailed(f"compare-and-set on key {op.key!r} did not match", key=op.key)


def _log_decide(stage: LogStage, batch: WriteBatch, where: str) -> list[Position]:
    try:
        return stage.decide(batch)
    except Retry as exc:
        raise Unavailable(f"{where}: a topic was deleted and made again meanwhile; retry") from exc


def _passing(call: Callable[[], T]) -> T:
    """``call()``; what it raises is the caller's own: passed on as it is."""
    try:
        return call()
    except Exception as exc:
        raise _Passed(exc) from exc


def _check_status(conn: Conn) -> None:
    """After the caller's code ran on the connection: still in our transaction?"""
    status = conn.info.transaction_status
    if status == _INTRANS:
        return
    raise _Passed(
        UsageError(
            "SQL in a transaction "
            + (
                "caught an SQL error and went on: the transaction is aborted"
                if status == psycopg.pq.TransactionStatus.INERROR
                else "ended the transaction itself: never commit or roll back in it"
            )
            + "; nothing was written"
        )
    )


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _decide(op: _unit.IdemOp) -> Callable[[IdempotencyRecord | None, int], object]:
    def decide(record: IdempotencyRecord | None, now: int) -> object:
        if op.kind == "complete":
            return _idem_core.decide_complete(
                record, op.key, op.token, op.output, op.error, now, op.retention_ms
            )
        return _idem_core.decide_phase(record, op.key, op.token, op.phase, op.output, now)

    return decide
