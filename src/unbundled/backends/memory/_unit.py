"""The unit of work in the memory backend: the specification.

Under the backend's one lock, every part of the unit is first decided
against the current state (nothing changes while anything can still fail),
in the order every backend follows (records and offsets, events,
idempotency, key-value), then everything is written at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..._ground import Waiter
from ...consistency.kv import _core as _kv_core
from ...errors import Closed, Error, UsageError
from ...eventstore import _core as _events_core
from ...eventstore._protocol import AppendResult, StreamWrite
from ...idempotency._protocol import IdempotencyRecord
from ...log._protocol import Position, WriteBatch
from ...transaction import _unit


class MemoryUnit:
    """:meth:`submit_unit` of :class:`unbundled.backends.MemoryBackend`."""

    unit_parts = frozenset(
        (_unit.RECORDS, _unit.OFFSETS, _unit.EVENTS, _unit.IDEMPOTENCY, _unit.KV)
    )

    clock: Callable[[], int]
    _lock: threading.RLock
    _closed: bool
    _handler: int | None
    _idem: dict[str, IdempotencyRecord]
    _kv: dict[str, _kv_core.Slot]
    _events_token: int
    _bump: Callable[[], None]
    _check_batch: Callable[[WriteBatch], None]
    _write_batch: Callable[[WriteBatch], list[Position]]
    _plan_events: Callable[[Sequence[StreamWrite]], _events_core.Plan]
    _write_events: Callable[[Sequence[StreamWrite], _events_core.Plan], list[AppendResult]]

    def submit_unit(self, unit: _unit.Unit, done: Waiter) -> None:
        """Apply ``unit`` atomically (see :class:`~unbundled.database._unit.UnitBackend`)."""
        try:
            with self._lock:
                if self._closed:
                    raise Closed("the database is closed")
                if self._handler == threading.get_ident():
                    raise UsageError(
                        "cannot commit a transaction from inside a projection handler: "
                        "write through the handler's transaction"
                    )
                result: object = self._commit_unit(unit)
        except Error as exc:
            result = exc
        done(result)

    def _commit_unit(self, unit: _unit.Unit) -> _unit.Committed:
        _unit.check_parts(unit, self, "memory://")
        views: list[_unit.Effects] = []
        if unit.effects:  # only while every attempt holds its key (StaleToken first)
            now = self.clock()
            for op in unit.idempotency:
                _unit.apply_idempotency(self._idem.get(op.key), op, now)
            views = _unit.run_effects(unit, None, "memory://")
        # Decide everything, in the order every backend checks it.
        batch = unit.batch()
        if batch is not None:
            self._check_batch(batch)
        plan = self._plan_events(unit.events) if unit.events else None
        now = self.clock()
        records: dict[str, IdempotencyRecord] = {}
        stored: list[IdempotencyRecord] = []
        for op in unit.idempotency:
            record = _unit.apply_idempotency(records.get(op.key, self._idem.get(op.key)), op, now)
            records[op.key] = record
            stored.append(record)
        slots: dict[str, _kv_core.Slot | None] = {}
        changes: list[int | bool] = []
        for kv in unit.kv:
            slot, changed = _unit.apply_kv(slots.get(kv.key, self._kv.get(kv.key)), kv)
            slots[kv.key] = slot
            changes.append(changed)
        # Nothing can fail from here on: write it all.
        positions = self._write_batch(batch) if batch is not None else []
        appended = self._write_events(unit.events, plan) if plan is not None else []
        if appended:
            self._events_token += 1
        self._idem.update(records)
        for key, slot in slots.items():
            if slot is not None:
                self._kv[key] = slot
        self._bump()
        committed = _unit.Committed(positions, appended, stored, changes, [])
        for view in views:
            view.fill(committed)
        return committed
