"""Units of work staged like event appends: no SAVEPOINT, few statements.

Most transactions write records, events, idempotency results and key-value
changes, and nothing else. For those the writer need not run a SAVEPOINT
per transaction: :class:`UnitStage` reads, once per writer transaction, the
idempotency records and key-value entries that all queued units touch
(one ``IN (...)`` lookup each, beside the event stage's), decides each unit
with the same rules as the memory model (``transaction._unit``) -- all of
a unit decided before any of it is queued, in the order every backend
follows -- and writes every unit's rows with the batch's other rows. A
unit that fails is refused alone and leaves nothing queued.

Units with offset commits, SQL or idempotency effects run as calls in a
SAVEPOINT instead (``_unit``): they need the connection in the middle.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from ...consistency.kv import _core as _kv_core
from ...idempotency import _core as _idem_core
from ...idempotency._protocol import IdempotencyRecord
from ...transaction import _unit
from . import _idempotency, _kv
from ._events import EventStage
from ._integrity import corrupt, row_crc
from ._log_stage import Stage
from ._writer import Request

_IN_MAX = 500  # keys per "IN (...)" lookup


def staged(unit: _unit.Unit) -> bool:
    """Whether ``unit`` can take the staged path (see the module docstring)."""
    return not (unit.commits or unit.sql or unit.effects)


class UnitStage:
    """Idempotency and key-value rows of the units in one writer transaction."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        log: Stage,
        events: EventStage,
        clock: Callable[[], int],
        path: str,
    ) -> None:
        self.conn = conn
        self.log = log
        self.events = events
        self.clock = clock
        self.path = path
        # What this transaction read or decided (looked up afresh each time).
        self.records: dict[str, IdempotencyRecord | None] = {}
        self.slots: dict[str, _kv_core.Slot | None] = {}
        # What it will write at flush.
        self.record_rows: dict[str, IdempotencyRecord] = {}
        self.slot_rows: dict[str, _kv_core.Slot] = {}

    def invalidate(self) -> None:
        self.records.clear()
        self.slots.clear()
        self.record_rows.clear()
        self.slot_rows.clear()

    def prepare(self, units: Sequence[_unit.Unit]) -> None:
        keys = {op.key for unit in units for op in unit.idempotency}
        self._read_records(sorted(keys - self.records.keys()))
        names = {op.key for unit in units for op in unit.kv}
        self._read_slots(sorted(names - self.slots.keys()))

    def _read_records(self, keys: list[str]) -> None:
        for chunk in _chunks(keys, _IN_MAX):
            found: dict[str, IdempotencyRecord] = {}
            for row in self.conn.execute(
                f"SELECT {_idempotency._COLUMNS} FROM idempotency WHERE key IN "
                f"({','.join('?' * len(chunk))})",
                chunk,
            ):
                record = _idempotency._verify(self.path, row)
                found[record.key] = record
            for key in chunk:
                self.records[key] = found.get(key)

    def _read_slots(self, keys: list[str]) -> None:
        for chunk in _chunks(keys, _IN_MAX):
            found: dict[str, _kv_core.Slot] = {}
            for key, value, version, crc in self.conn.execute(
                f"SELECT key, value, version, crc FROM kv WHERE key IN "
                f"({','.join('?' * len(chunk))})",
                chunk,
            ):
                if crc != row_crc("kv", key, value, version):
                    raise corrupt(self.path, f"the entry of key {key!r} failed its checksum")
                found[key] = (value, version)
            for key in chunk:
                self.slots[key] = found.get(key)

    def stage(self, unit: _unit.Unit) -> _unit.Committed:
        """Decide all of ``unit``, then queue it; a conflict raises with nothing queued."""
        batch = unit.batch()
        if batch is not None:
            self.log.check(batch)
        plan = self.events.plan(unit.events) if unit.events else None
        records: dict[str, IdempotencyRecord] = {}
        stored = []
        if unit.idempotency:
            known = self.records
            missing = {op.key for op in unit.idempotency if op.key not in known}
            if missing:  # prepared in bulk; only a unit staged after a call needs this
                self._read_records(sorted(missing))
            now = self.clock()
            for op in unit.idempotency:
                record = _unit.apply_idempotency(records.get(op.key, known[op.key]), op, now)
                records[op.key] = record
                stored.append(record)
        slots: dict[str, _kv_core.Slot | None] = {}
        changes: list[int | bool] = []
        if unit.kv:
            missing = {op.key for op in unit.kv if op.key not in self.slots}
            if missing:
                self._read_slots(sorted(missing))
            for change in unit.kv:
                before = slots.get(change.key, self.slots[change.key])
                slot, changed = _unit.apply_kv(before, change)
                slots[change.key] = slot
                changes.append(changed)
        # Decided: nothing below can fail.
        positions = self.log.stage(batch) if batch is not None else []
        appended = self.events.queue(unit.events, plan) if plan is not None else []
        if records:
            self.records.update(records)
            self.record_rows.update(records)
        for key, slot in slots.items():
            if slot is not None and slot != self.slots[key]:
                self.slots[key] = slot
                self.slot_rows[key] = slot
        return _unit.Committed(positions, appended, stored, changes, [])

    def flush(self) -> None:
        if self.record_rows:
            rows = []
            for record in self.record_rows.values():
                raw = _idem_core.encode_record(record)
                crc = row_crc("idempotency", record.key, record.state, record.expires_ms, raw)
                rows.append((record.key, record.state, record.expires_ms, raw, crc))
            self.conn.executemany(_idempotency._UPSERT, rows)
            self.record_rows.clear()
        if self.slot_rows:
            self.conn.executemany(
                _kv._UPSERT,
                [
                    (key, value, version, row_crc("kv", key, value, version))
                    for key, (value, version) in self.slot_rows.items()
                ],
            )
            self.slot_rows.clear()


class WriterStages:
    """The writer's extra stage of the full backend: event appends and
    staged units, in one transaction with the log's records."""

    def __init__(
        self, conn: sqlite3.Connection, log: Stage, clock: Callable[[], int], path: str
    ) -> None:
        self.events = EventStage(conn, clock, path)
        self.units = UnitStage(conn, log, self.events, clock, path)

    def begin(self, changed: bool) -> None:
        self.events.begin(changed)
        self.units.invalidate()  # idempotency records and entries: read afresh

    def prepare(self, requests: list[Request]) -> None:
        writes: list[Any] = []
        units: list[_unit.Unit] = []
        for request in requests:
            work = request.extra
            if work is None:
                continue
            if type(work) is _unit.Unit:
                units.append(work)
                writes.extend(work.events)
            else:
                writes.extend(work)  # type: ignore[arg-type]
        self.events.prepare_writes(writes)
        if units:
            self.units.prepare(units)

    def stage(self, work: object) -> object:
        if type(work) is _unit.Unit:
            return self.units.stage(work)
        return self.events.stage(work)

    def flush(self) -> None:
        self.events.flush()
        self.units.flush()

    def invalidate(self) -> None:
        self.events.invalidate()
        self.units.invalidate()


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
