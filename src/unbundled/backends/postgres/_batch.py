"""One batch of the writer: event appends and units of work, one transaction.

A request is an append (stream writes) or a unit of work without SQL or
idempotency effects (``_unit_stage.staged``). Both share the batch's three
steps, which ``_writer`` sends:

1. :func:`open_batch`: ``BEGIN``, the event stage's reads (stream
   placeholders, stream row locks, the batch's event ids; ``_stage``), then
   the units' reads (the server's clock, idempotency rows and key-value
   rows ``FOR UPDATE``; ``_unit_stage``), then the log's for the units'
   records and offset commits (consumer groups ``FOR SHARE``, partitions
   ``FOR UPDATE``; ``_log_stage``). The locks are taken in one order by
   every writer: streams, idempotency keys, key-value keys, groups,
   partitions, each sorted, and the event counter last, in step 3. The
   log's own writer takes groups and partitions only, in the same order,
   so it and this writer cannot deadlock either.
2. :func:`decide`: each request in queue order against the state the
   earlier ones leave. An append is decided and queued as before. A unit is
   decided whole before any of it is queued -- its records and offset
   commits (the log's rules), its events (planned with ``plan_append``),
   then its idempotency operations, then its key-value changes, the order
   every backend checks them in -- so a unit that conflicts is answered
   with that error and leaves nothing (its records take no offset), while
   the batch's other requests commit (no SAVEPOINT needed).
3. :func:`write_batch`: the units' rows, their records and offsets, then
   the events' statement (which takes the counter lock, held to
   ``COMMIT``, so positions stay dense and in commit order), then the
   caller's ``COMMIT``. :func:`finish` turns the events' stand-in positions
   into real ones once the base is known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from ..._ground import Waiter
from ...errors import Error
from ...eventstore import _core
from ...eventstore._protocol import RecordedEvent, StreamState, StreamWrite
from ...log._protocol import Position, WriteBatch
from ...transaction import _unit
from ._log_stage import LogStage, LogStatements
from ._schema import Conn
from ._stage import EXISTING_MAX, EventBatch, Retry, Statements, check_text, placed
from ._unit_stage import UnitReads, UnitStage, UnitStatements, open_units


class Request:
    """One caller's work: stream writes, or a unit (whose events are ``writes``)."""

    __slots__ = ("done", "unit", "writes")

    def __init__(
        self, writes: Sequence[StreamWrite], done: Waiter, unit: _unit.Unit | None = None
    ) -> None:
        self.writes = writes
        self.done = done
        self.unit = unit

    def events(self) -> int:
        return sum(len(w.events) for w in self.writes)


class BatchStatements:
    """The writer's SQL for one schema, and what its log stage needs (the
    clock that stamps offset commits, the database's name for errors)."""

    def __init__(self, schema: str, clock: Callable[[], int], where: str) -> None:
        self.events = Statements(schema)
        self.units = UnitStatements(schema)
        self.log = LogStatements(schema)
        self.clock = clock
        self.where = where


class Opened:
    """A batch whose transaction has begun: its reads are queued on the connection."""

    __slots__ = (
        "created",
        "found",
        "locked",
        "log",
        "requests",
        "results",
        "streams",
        "units",
        "unknown",
        "valid",
    )

    def __init__(self, requests: list[Request]) -> None:
        self.requests = requests
        self.results: list[object] = [None] * len(requests)
        self.valid: list[int] = []
        for i, request in enumerate(requests):
            try:
                for write in request.writes:
                    _core.check_write(write)
                    check_text(write)
            except Error as exc:
                self.results[i] = exc
            else:
                self.valid.append(i)
        self.streams: list[str] = []
        self.unknown: list[str] = []
        self.created: psycopg.Cursor[Any] | None = None
        self.locked: psycopg.Cursor[Any] | None = None
        self.found: psycopg.Cursor[Any] | None = None
        self.units: UnitReads | None = None
        self.log: LogStage | None = None


def open_batch(conn: Conn, sql: BatchStatements, opened: Opened, existing: set[str]) -> None:
    """Queue BEGIN and the batch's reads (step 1); the caller syncs."""
    requests = opened.requests
    valid = [requests[i] for i in opened.valid]
    opened.streams = sorted({w.stream for r in valid for w in r.writes})
    opened.unknown = [s for s in opened.streams if s not in existing]
    ids = [e.id for r in valid for w in r.writes for e in w.events]
    conn.execute("BEGIN")
    if opened.unknown:
        opened.created = conn.execute(sql.events.placeholders, (opened.unknown,))
    if opened.streams:
        opened.locked = conn.execute(sql.events.lock, (opened.streams,))
    if ids:
        opened.found = conn.cursor(binary=True).execute(sql.events.existing, (ids,))
    units = [r.unit for r in valid if r.unit is not None]
    if units:
        opened.units = open_units(conn, sql.units, units)
        batches = [b for b in (unit.batch() for unit in units) if b is not None]
        if batches:  # the log's locks after the units' (the order every writer takes)
            opened.log = LogStage(sql.log, sql.clock, sql.where)
            opened.log.open(conn, batches)


class Decided:
    """What step 2 decided to write: the events' rows, the units' rows and
    the units' records and offset commits."""

    __slots__ = ("events", "log", "units")

    def __init__(self, events: EventBatch, units: UnitStage | None, log: LogStage | None) -> None:
        self.events = events
        self.units = units
        self.log = log

    def __bool__(self) -> bool:
        """Whether there is anything to write (else the batch rolls back)."""
        return bool(self.events.rows.ids) or bool(self.units) or bool(self.log)

    def log_changed(self) -> bool:
        """Whether records or offsets were written (this process's readers are told)."""
        return bool(self.log)

    def keys_changed(self) -> bool:
        """Whether an idempotency record was written (this process's waiters are told)."""
        return self.units is not None and bool(self.units.record_rows)


def decide(opened: Opened, existing: set[str], clock: Callable[[], int] | None) -> Decided:
    """Step 2: read the synced results of :func:`open_batch`, decide every
    request (into ``opened.results``) and return what to write. ``clock``:
    the backend's explicit clock, or None for the server's."""
    events = EventBatch()
    if opened.created is not None:
        events.placeholders = {row[0] for row in opened.created}
    if opened.locked is not None:
        events.states = {
            stream: StreamState(stream, version, deleted, tombstoned)
            for stream, version, deleted, tombstoned in opened.locked
        }
    if len(events.states) != len(opened.streams):
        # A stream we knew had a row has none: the schema was dropped and
        # made again under us. Forget what we knew and start over.
        existing.clear()
        raise Retry
    if len(existing) > EXISTING_MAX:
        existing.clear()
    existing.update(s for s in opened.unknown if s not in events.placeholders)
    if opened.found is not None:
        events.known = {row[0]: RecordedEvent(*row) for row in opened.found}
    units = UnitStage(opened.units, clock) if opened.units is not None else None
    log = opened.log
    if log is not None:
        log.load()
    for i in opened.valid:
        request = opened.requests[i]
        try:
            if request.unit is None:
                opened.results[i] = events.stage(request.writes)
            else:
                assert units is not None
                opened.results[i] = _decide_unit(request.unit, events, units, log)
        except Error as exc:
            opened.results[i] = exc
    return Decided(events, units, log)


def _decide_unit(
    unit: _unit.Unit, events: EventBatch, units: UnitStage, log: LogStage | None
) -> _unit.Committed:
    """All of ``unit`` decided, in the order every backend checks the parts
    (records and offset commits, events, idempotency, key-value), before any
    of it is queued."""
    batch = unit.batch()
    if batch is not None:
        assert log is not None
        log.check(batch)
    plan = events.plan(unit.events) if unit.events else None
    decided = units.decide(unit)
    # Decided: nothing below can refuse the unit. (The log's Retry, a topic
    # made again under the writer, fails the whole batch, which is replayed.)
    positions = _log_queue(log, batch)
    appended = events.queue(unit.events, plan) if plan is not None else []
    units.queue(unit, decided)
    _, stored, _, changes = decided
    return _unit.Committed(positions, appended, stored, changes, [])


def _log_queue(log: LogStage | None, batch: WriteBatch | None) -> list[Position]:
    if batch is None:
        return []
    assert log is not None
    return log.decide(batch)


def write_batch(
    conn: Conn, sql: BatchStatements, decided: Decided, now: int, channel: str
) -> psycopg.Cursor[Any] | None:
    """Queue step 3 but ``COMMIT`` (send it next, in the same pipeline): a
    cursor whose row holds the events' base position, or None if no event
    is new."""
    if decided.units is not None:
        decided.units.write(conn, sql.units, channel)
    if decided.log:
        assert decided.log is not None
        decided.log.write(conn, channel)
    return decided.events.write(conn, sql.events, now, channel)


def finish(opened: Opened, base: int) -> list[object]:
    """The results, with the batch's k-th event at position ``base + k``."""
    results = opened.results
    for i in opened.valid:
        result = results[i]
        if isinstance(result, list):
            results[i] = placed(result, base)
        elif type(result) is _unit.Committed and result.events:
            positions, events, stored, changes, sql = result
            results[i] = _unit.Committed(positions, placed(events, base), stored, changes, sql)
    return results
