"""Units of work in the writer's batches: their idempotency and key-value rows.

A unit without SQL or idempotency effects (:func:`staged`) is
group-committed by the event writer, in one transaction with the batch's
other units and appends (``_batch``; its records and offset commits go
through ``_log_stage``, as the log writer's do); a unit with SQL or
idempotency effects keeps a transaction of its own (``_unit``), since it
needs the connection in the middle. This module is the idempotency and
key-value share of a batch, in the writer's three steps:

1. Reads, queued in the round trip that locks the batch's streams:

   * the row of every idempotency key, ``SELECT ... FOR UPDATE``, one key
     after another in sorted order (like the streams, so that writers lock
     in one order), and in the same statement the server's clock
     (``now()``: the transaction's start), which decides unless the backend
     was given a clock (see ``_idempotency``): one reading for the batch,
     as a unit's own transaction reads one. A key with no row is not
     locked: no attempt holds it, so its completion fails with
     ``StaleToken``, and a claim that inserts the row afterwards is simply
     ordered after this transaction;
   * the row of every key-value key, ``FOR UPDATE`` (sorted), after inserting a
     placeholder ``(key, NULL, 0)`` for each key that has no row (``ON
     CONFLICT DO NOTHING``, in key order, so two writers inserting the same
     new keys cannot deadlock).

   Why a placeholder row rather than ``pg_advisory_xact_lock(hashtext(key))``:
   every other writer of a key (``kv_write``, ``kv_compare_and_set``,
   ``kv_delete``, units with SQL, other processes) locks the key's *row*;
   none takes an advisory lock, so only a row lock keeps them out between
   our read and our write. The placeholder reads as absent everywhere: a
   NULL value is a tombstone to every statement (``kv_read`` returns None,
   a compare-and-set expecting absence matches, a delete changes nothing,
   an expected version or value never matches it) and version 0 gives the
   next write version 1, as for a key that never existed; here it is read
   as no row at all. It never commits: the write deletes the placeholders
   no unit wrote, as the event writer does with its stream placeholders.

2. Decisions (:meth:`UnitStage.decide`): a unit's idempotency operations,
   then its key-value changes, with ``transaction._unit.apply_idempotency``
   and ``apply_kv`` (the memory model's rules), on the state the batch's
   earlier units left. A conflict raises with nothing queued; else
   :meth:`UnitStage.queue` keeps the unit's rows.

3. Writes (:meth:`UnitStage.write`), queued before the events' statement
   (which takes the counter lock, so it goes last) and ``COMMIT``: one
   ``UPDATE`` for the idempotency records, with the keys' notification when
   a result was stored (as ``complete`` sends it), one for the key-value
   rows, and a ``DELETE`` of the unused placeholders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import psycopg

from ...consistency.kv._core import Slot
from ...idempotency._protocol import IdempotencyRecord
from ...transaction import _unit
from ._idempotency import _columns, _record
from ._notify import KEYS_PAYLOAD
from ._schema import Conn
from ._stage import Retry

_encode = msgspec.json.encode


def staged(unit: _unit.Unit) -> bool:
    """Whether ``unit`` goes through the writer's batches (see the module docstring)."""
    return not (unit.sql or unit.effects)


class UnitStatements:
    """The SQL of the units' share of a batch, for one schema."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        # The rows are locked one key at a time in the order of the given
        # (sorted) keys, each through the primary key: "key = ANY(...)"
        # let the planner scan the whole table while it had no statistics
        # (0.58 ms against 0.19 ms for 36 of 3,000 keys), and more as the
        # table grows. The server's clock comes in the same statement: one
        # row with NULLs when no key has a row.
        self.records = f"""
WITH n AS (SELECT floor(extract(epoch FROM now()) * 1000)::int8 AS ms),
r AS MATERIALIZED (
    SELECT i.* FROM unnest(%b::text[]) AS k(key), LATERAL (
        SELECT {_columns("")} FROM {s}.idempotency AS t WHERE t.key = k.key FOR UPDATE
    ) AS i
)
SELECT n.ms, r.* FROM n LEFT JOIN r ON true"""
        self.placeholders = (
            f"INSERT INTO {s}.kv (key, value, version) SELECT unnest(%b::text[]), NULL, 0 "
            "ON CONFLICT DO NOTHING RETURNING key"
        )
        self.slots = f"""
SELECT i.* FROM unnest(%b::text[]) AS k(key), LATERAL (
    SELECT t.key, t.value, t.version FROM {s}.kv AS t WHERE t.key = k.key FOR UPDATE
) AS i"""
        # The records go as one JSON array: msgspec encodes them in C (36
        # records: 9 us; an array per column took psycopg 145 us binary,
        # 394 us as text), bytes as base64 as msgspec writes them, phases
        # in their stored form. The LIMIT (the number of records) is there
        # for the planner: it takes json_to_recordset for 100 rows and then
        # joined a seq scan of the whole table by hash (twice the server's
        # CPU time of probing the primary key per record, at 3,000 keys).
        self.write_records = f"""
WITH u AS (
UPDATE {s}.idempotency AS t SET fingerprint = v.fingerprint, state = v.state, token = v.token,
    lease_until_ms = v.lease_until_ms, expires_ms = v.expires_ms, created_ms = v.created_ms,
    updated_ms = v.updated_ms, result = decode(v.result, 'base64'), error = v.error,
    phases = v.phases
FROM (SELECT * FROM json_to_recordset(%s::json) AS v(key text, fingerprint text, state text,
        token int8, lease_until_ms int8, expires_ms int8, created_ms int8, updated_ms int8,
        result text, error bool, phases jsonb)
      LIMIT %s) AS v
WHERE t.key = v.key
)
SELECT pg_notify(%s, '{KEYS_PAYLOAD}') WHERE %s"""
        self.write_slots = f"""
UPDATE {s}.kv AS t SET value = v.value, version = v.version
FROM unnest(%(keys)b::text[], %(values)b::bytea[], %(versions)b::int8[]) AS v(key, value, version)
WHERE t.key = v.key"""
        self.unused = f"DELETE FROM {s}.kv WHERE key = ANY(%b::text[]) AND version = 0"


class UnitReads:
    """The cursors of step 1 for a batch's units (results arrive at sync)."""

    __slots__ = ("created", "keys", "names", "records", "slots")

    def __init__(self, keys: list[str], names: list[str]) -> None:
        self.keys = keys  # idempotency keys, sorted
        self.names = names  # key-value keys, sorted
        self.records: psycopg.Cursor[Any] | None = None
        self.created: psycopg.Cursor[Any] | None = None
        self.slots: psycopg.Cursor[Any] | None = None


def open_units(conn: Conn, sql: UnitStatements, units: Sequence[_unit.Unit]) -> UnitReads:
    """Queue step 1 for ``units`` on ``conn``, inside the batch's transaction."""
    reads = UnitReads(
        sorted({op.key for unit in units for op in unit.idempotency}),
        sorted({op.key for unit in units for op in unit.kv}),
    )
    if reads.keys:
        reads.records = conn.execute(sql.records, (reads.keys,))
    if reads.names:
        reads.created = conn.execute(sql.placeholders, (reads.names,))
        reads.slots = conn.execute(sql.slots, (reads.names,))
    return reads


Decided = tuple[
    dict[str, IdempotencyRecord], list[IdempotencyRecord], dict[str, Slot | None], list[int | bool]
]


class UnitStage:
    """What a batch's units read, decided and will write (steps 2 and 3).

    ``clock`` is the backend's explicit clock, or None when the server's
    clock (read in step 1) decides.
    """

    __slots__ = (
        "_clock",
        "_now",
        "completed",
        "created",
        "record_rows",
        "records",
        "slot_rows",
        "slots",
    )

    def __init__(self, reads: UnitReads, clock: Callable[[], int] | None) -> None:
        self._clock = clock
        self._now: int | None = None
        self.records: dict[str, IdempotencyRecord | None] = dict.fromkeys(reads.keys)
        if reads.records is not None:
            for row in reads.records:
                self._now = int(row[0])
                record = _record(row[1:])
                if record is not None:  # else no key has a row: the clock's row alone
                    self.records[record.key] = record
        self.slots: dict[str, Slot | None] = {}
        self.created: set[str] = set()
        if reads.slots is not None:
            assert reads.created is not None
            self.created = {row[0] for row in reads.created}
            for key, value, version in reads.slots:
                absent = value is None and version == 0  # our placeholder
                self.slots[key] = None if absent else (_bytes(value), int(version))
            if len(self.slots) != len(reads.names):
                # Every key had a row or got a placeholder, yet one has none:
                # the schema was dropped and made again under us.
                raise Retry
        self.record_rows: dict[str, IdempotencyRecord] = {}  # to write, by key
        self.slot_rows: dict[str, Slot] = {}
        self.completed = False  # a result is stored: other processes are told (pg_notify)

    def decide(self, unit: _unit.Unit) -> Decided:
        """Decide ``unit``'s idempotency operations and key-value changes on
        the state so far; raise its first conflict. Nothing is queued."""
        records: dict[str, IdempotencyRecord] = {}
        stored: list[IdempotencyRecord] = []
        if unit.idempotency:
            now = self._clock() if self._clock is not None else self._now
            assert now is not None  # step 1 read the server's clock
            for op in unit.idempotency:
                before = records[op.key] if op.key in records else self.records[op.key]
                record = _unit.apply_idempotency(before, op, now)
                if op.kind == "phase":
                    record = _jsonb_order(record)
                records[op.key] = record
                stored.append(record)
        slots: dict[str, Slot | None] = {}
        changes: list[int | bool] = []
        for change in unit.kv:
            before_slot = slots[change.key] if change.key in slots else self.slots[change.key]
            slot, result = _unit.apply_kv(before_slot, change)
            slots[change.key] = slot
            changes.append(result)
        return records, stored, slots, changes

    def queue(self, unit: _unit.Unit, decided: Decided) -> None:
        """Keep the rows of ``unit`` as :meth:`decide` decided them."""
        records, _, slots, _ = decided
        if records:
            self.records.update(records)
            self.record_rows.update(records)
            self.completed = self.completed or any(op.kind == "complete" for op in unit.idempotency)
        for key, slot in slots.items():
            if slot is not None and slot != self.slots[key]:
                self.slots[key] = slot
                self.slot_rows[key] = slot

    def __bool__(self) -> bool:
        """Whether there is anything to write."""
        return bool(self.record_rows or self.slot_rows)

    def write(self, conn: Conn, sql: UnitStatements, channel: str) -> None:
        """Queue step 3 (the caller queues the events' statement and COMMIT next)."""
        if self.record_rows:
            records = _encode(list(self.record_rows.values())).decode()
            params = (records, len(self.record_rows), channel, self.completed)
            conn.execute(sql.write_records, params)
        if self.slot_rows:
            slots = self.slot_rows
            conn.execute(
                sql.write_slots,
                {
                    "keys": list(slots),
                    "values": [value for value, _ in slots.values()],
                    "versions": [version for _, version in slots.values()],
                },
            )
        unused = sorted(self.created - self.slot_rows.keys())
        if unused:
            conn.execute(sql.unused, (unused,))


def _jsonb_order(record: IdempotencyRecord) -> IdempotencyRecord:
    """``record`` with its phases in jsonb's key order (shortest first, then
    by their bytes): the order a record read back has, which is what a
    unit's own transaction returns, so both paths give equal dicts that
    also iterate alike."""
    ordered = dict(sorted(record.phases.items(), key=lambda item: _jsonb_key(item[0])))
    return msgspec.structs.replace(record, phases=ordered)


def _jsonb_key(name: str) -> tuple[int, bytes]:
    raw = name.encode()
    return len(raw), raw


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)
