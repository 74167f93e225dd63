"""The unit of work in the SQLite backend.

A unit is one request to the group-commit writer, so many units from many
callers share one COMMIT and one fsync, and a unit that fails is refused
alone. Most units are staged with the batch's other rows (``_unit_stage``);
one with offset commits, SQL or idempotency effects runs here, as a call in
the writer's transaction inside its own SAVEPOINT.
Inside, the parts go in the order every backend follows: records and offset
commits (the log's staging, fenced by generation), events (the event
stage: expected versions, idempotent ids), idempotency results (fenced by
token), key-value changes (compare-and-set), then the caller's SQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from ..._ground import Waiter
from ...errors import Closed
from ...eventstore._protocol import AppendResult
from ...log._protocol import Position, WriteBatch
from ...transaction import _unit
from . import _idempotency, _kv
from ._log_stage import Stage
from ._unit_stage import WriterStages, staged
from ._writer import Request, Writer


class SqliteUnit:
    """:meth:`submit_unit` of :class:`unbundled.backends.SqliteBackend`."""

    unit_parts = frozenset(_unit.PARTS)

    path: str
    clock: Callable[[], int]
    _closed: bool
    _writer: Writer
    _apply_full: Callable[[sqlite3.Connection, Stage, WriteBatch], object]

    def submit_unit(self, unit: _unit.Unit, done: Waiter) -> None:
        """Queue ``unit`` for the writer, as one request (see
        :class:`~unbundled.database._unit.UnitBackend`)."""
        if self._closed:
            raise Closed(f"the database at {self.path} is closed")
        _unit.check_parts(unit, self, self.path)

        if staged(unit):  # staged with the batch's other rows (no SAVEPOINT)
            self._writer.submit(Request(None, None, done, unit))
            return

        def apply(conn: sqlite3.Connection, stage: Stage) -> _unit.Committed:
            return self._apply_unit(conn, stage, unit)

        self._writer.submit(Request(None, apply, done))

    def _apply_unit(
        self, conn: sqlite3.Connection, stage: Stage, unit: _unit.Unit
    ) -> _unit.Committed:
        # Runs in the writer's SAVEPOINT: any exception rolls all of it back.
        views: list[_unit.Effects] = []
        if unit.effects:  # only while every attempt holds its key (StaleToken first)
            now = self.clock()
            for op in unit.idempotency:
                _unit.apply_idempotency(_idempotency._load(conn, self.path, op.key), op, now)
            views = _unit.run_effects(unit, conn, self.path)
        batch = unit.batch()
        positions: list[Position] = []
        if batch is not None:
            positions = self._apply_full(conn, stage, batch)  # type: ignore[assignment]
        appended: list[AppendResult] = []
        if unit.events:
            stages = self._writer._extra
            assert isinstance(stages, WriterStages)
            stages.events.prepare_writes(unit.events)
            appended = stages.events.stage(unit.events)
            stages.events.flush()
        now = self.clock()
        stored = []
        for op in unit.idempotency:
            record = _unit.apply_idempotency(_idempotency._load(conn, self.path, op.key), op, now)
            _idempotency._store(conn, record)
            stored.append(record)
        changes: list[int | bool] = []
        for kv in unit.kv:
            before = _kv._slot(conn, self.path, kv.key)
            slot, changed = _unit.apply_kv(before, kv)
            if slot is not None and slot != before:
                _kv._put(conn, kv.key, slot[0], slot[1])
            changes.append(changed)
        results: list[Any] = [call(conn) for call in unit.sql]
        committed = _unit.Committed(positions, appended, stored, changes, results)
        for view in views:
            view.fill(committed)
        return committed
