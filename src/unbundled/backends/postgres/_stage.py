"""The event appends of one transaction: the statements, and the pure work
between them (validation, decisions, rows, results).

A writer's batch goes through three steps (``_batch`` holds the batch,
``_writer`` decides when each step is sent):

1. ``_batch.open_batch`` queues ``BEGIN``, a placeholder row for each written
   stream that may have none (``ON CONFLICT DO NOTHING``), a lock on every
   written stream's row (``SELECT ... ORDER BY stream FOR UPDATE``: sorted,
   so writers in different processes lock in one order and cannot deadlock),
   and a lookup of the batch's event ids.
2. ``_batch.decide`` reads those results and decides each append with
   ``eventstore._core.plan_append`` (the code the memory model runs), one
   after another against the state as the earlier ones leave it: a failing
   append fails alone and needs no SAVEPOINT (:class:`EventBatch`).
3. The write statement: a CTE that takes the row lock on the ``positions``
   counter (``UPDATE ... SET last = last + n``), inserts the events at
   ``last - n + 1 .. last``, moves the streams' versions, drops the
   placeholders no append used and sends ``pg_notify``; then ``COMMIT``.

:class:`Staging` runs the same steps inside a transaction that is not the
writer's (a unit of work with SQL or effects, ``_unit``): steps 1
and 2 at each ``append_events`` call, step 3 right before that COMMIT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from ...errors import Unavailable, UsageError
from ...eventstore import _core
from ...eventstore._protocol import (
    AppendResult,
    RecordedEvent,
    StreamState,
    StreamWrite,
    category_of,
)
from ._schema import Conn

EVENT_COLUMNS = (
    "id::text, stream, version, position, type, schema_version, data, metadata, recorded_ms"
)
# Streams known to have a committed row (such a row is never deleted), for
# which the placeholder INSERT is skipped.
EXISTING_MAX = 100_000


class Retry(Exception):
    """Roll back and run the batch again (state we relied on was stale)."""


class Statements:
    """The writer's SQL for one schema."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        self.placeholders = (
            f"INSERT INTO {s}.streams SELECT unnest(%b::text[]), -1, 0, false, false "
            "ON CONFLICT DO NOTHING RETURNING stream"
        )
        self.lock = (
            f"SELECT stream, version, deleted, tombstoned FROM {s}.streams "
            "WHERE stream = ANY(%b::text[]) ORDER BY stream FOR UPDATE"
        )
        self.existing = f"SELECT {EVENT_COLUMNS} FROM {s}.events WHERE id = ANY(%b::text[]::uuid[])"
        self.write = f"""
WITH c AS (
    UPDATE {s}.positions SET last = last + %(n)s::int8 WHERE id = 1
    RETURNING last - %(n)s::int8 AS base
), e AS (
    INSERT INTO {s}.events (position, id, stream, version, category, type, schema_version,
                            data, metadata, recorded_ms)
    SELECT c.base + v.o, v.id::uuid, v.stream, v.version, v.category, v.type, v.sv,
           v.data, v.metadata, %(now)s::int8
    FROM c, unnest(%(ids)b::text[], %(streams)b::text[], %(versions)b::int8[],
                   %(categories)b::text[], %(types)b::text[], %(svs)b::int4[],
                   %(data)b::bytea[], %(metadata)b::bytea[])
            WITH ORDINALITY AS v(id, stream, version, category, type, sv, data, metadata, o)
), u AS (
    UPDATE {s}.streams AS t SET version = v.version, deleted = false
    FROM unnest(%(heads)b::text[], %(head_versions)b::int8[]) AS v(stream, version)
    WHERE t.stream = v.stream
), d AS (
    DELETE FROM {s}.streams WHERE stream = ANY(%(unused)b::text[])
    AND version = -1 AND NOT deleted AND NOT tombstoned
)
SELECT base, pg_notify(%(channel)s, (base + %(n)s::int8)::text) FROM c"""
        self.unused = (
            f"DELETE FROM {s}.streams WHERE stream = ANY(%b::text[]) "
            "AND version = -1 AND NOT deleted AND NOT tombstoned"
        )


def check_text(write: StreamWrite) -> None:
    """PostgreSQL text cannot hold NUL: refuse it here, for this append alone,
    rather than fail the whole batch's statement."""
    names = [write.stream, *(e.id for e in write.events), *(e.type for e in write.events)]
    if any("\x00" in name for name in names):
        raise UsageError(
            f"stream names, event ids and types cannot contain NUL on PostgreSQL "
            f"(stream {write.stream!r})",
            stream=write.stream,
        )


class Rows:
    """The rows of one transaction, column by column (they go to ``unnest``)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.streams: list[str] = []
        self.versions: list[int] = []
        self.categories: list[str] = []
        self.types: list[str] = []
        self.schema_versions: list[int] = []
        self.data: list[bytes] = []
        self.metadata: list[bytes] = []
        self.heads: dict[str, int] = {}  # stream -> its new version
        self.unused: list[str] = []  # placeholders no append used

    def params(self, now: int, channel: str) -> dict[str, Any]:
        return {
            "n": len(self.ids),
            "now": now,
            "ids": self.ids,
            "streams": self.streams,
            "versions": self.versions,
            "categories": self.categories,
            "types": self.types,
            "svs": self.schema_versions,
            "data": self.data,
            "metadata": self.metadata,
            "heads": list(self.heads),
            "head_versions": list(self.heads.values()),
            "unused": self.unused,
            "channel": channel,
        }


class EventBatch:
    """The stream states and event ids one transaction locked and read, and
    the rows it will write: the decisions between the reads and the write.

    :meth:`plan` decides an append without queuing anything (a unit of work
    decides its other parts before any of it is queued); :meth:`queue` then
    adds its rows, and the state as it leaves it, for the appends after it.
    """

    __slots__ = ("known", "placeholders", "rows", "states")

    def __init__(self) -> None:
        self.states: dict[str, StreamState] = {}
        self.known: dict[str, RecordedEvent] = {}
        self.placeholders: set[str] = set()  # stream rows this transaction inserted
        self.rows = Rows()

    def plan(self, writes: Sequence[StreamWrite]) -> _core.Plan:
        """Decide ``writes`` (raising a conflict); nothing is queued."""
        known = self.known
        existing = {
            e.id: found for w in writes for e in w.events if (found := known.get(e.id)) is not None
        }
        return _core.plan_append(writes, self.states, existing)

    def queue(self, writes: Sequence[StreamWrite], plan: _core.Plan) -> list[AppendResult]:
        """Queue the rows of planned ``writes`` (nothing here can fail)."""
        if plan.duplicate is not None:
            return plan.duplicate
        rows = self.rows
        out = []
        for write, first in zip(writes, plan.first_versions, strict=True):
            stream = write.stream
            category = category_of(stream)
            positions = []
            for n, event in enumerate(write.events):
                rows.ids.append(event.id)
                rows.streams.append(stream)
                rows.versions.append(first + n)
                rows.categories.append(category)
                rows.types.append(event.type)
                rows.schema_versions.append(event.schema_version)
                rows.data.append(event.data)
                rows.metadata.append(event.metadata)
                # Positions are known only after the write: -k stands for the
                # transaction's k-th event until then (see :func:`placed`).
                ordinal = -len(rows.ids)
                self.known[event.id] = RecordedEvent(
                    event.id,
                    stream,
                    first + n,
                    ordinal,
                    event.type,
                    event.schema_version,
                    event.data,
                    event.metadata,
                    0,
                )
                positions.append(ordinal)
            last = first + len(write.events) - 1
            self.states[stream] = StreamState(stream, last, False, False)
            rows.heads[stream] = last
            out.append(AppendResult(stream, first, last, tuple(positions)))
        return out

    def stage(self, writes: Sequence[StreamWrite]) -> list[AppendResult]:
        return self.queue(writes, self.plan(writes))

    def write(
        self, conn: Conn, sql: Statements, now: int, channel: str
    ) -> psycopg.Cursor[Any] | None:
        """Queue step 3 (the counter lock: send ``COMMIT`` next); a cursor
        whose row holds the base position, or None if no event is new (then
        only the placeholders no append used are deleted, if any)."""
        rows = self.rows
        rows.unused = sorted(self.placeholders - rows.heads.keys())
        if rows.ids:
            return conn.execute(sql.write, rows.params(now, channel))
        if rows.unused:
            conn.execute(sql.unused, (rows.unused,))
        return None


def placed(results: list[AppendResult], base: int) -> list[AppendResult]:
    """``results`` with the transaction's k-th event at position ``base + k``."""
    return [
        AppendResult(
            r.stream,
            r.first_version,
            r.last_version,
            tuple(base - p if p < 0 else p for p in r.positions),
        )
        for r in results
    ]


class Staging:
    """Appends inside a transaction someone else runs on ``conn`` (a unit of
    work that runs SQL or effects, ``_unit``): the writer's steps spread over
    several calls. :meth:`append` takes step 1 and 2 at once for the streams
    it has not seen yet (each stream is locked once, its state then follows
    the staged appends); :meth:`write` queues step 3, which the caller must
    send right before its ``COMMIT`` so the counter lock is held briefly.
    """

    def __init__(self, conn: Conn, sql: Statements) -> None:
        self._conn = conn
        self._sql = sql
        self._batch = EventBatch()
        self._results: list[tuple[list[AppendResult], list[AppendResult]]] = []

    def append(self, writes: Sequence[StreamWrite]) -> list[AppendResult]:
        """Decide ``writes`` now (raising ``WrongExpectedVersion`` and the
        like at once); the list returned is filled when :meth:`finish` runs."""
        for write in writes:
            _core.check_write(write)
            check_text(write)
        batch = self._batch
        streams = sorted({w.stream for w in writes} - batch.states.keys())
        ids = [e.id for w in writes for e in w.events if e.id not in batch.known]
        if streams or ids:  # one round trip; none when every stream and id is known
            conn = self._conn
            with conn.pipeline():
                created = conn.execute(self._sql.placeholders, (streams,))
                locked = conn.execute(self._sql.lock, (streams,))
                found = conn.cursor(binary=True).execute(self._sql.existing, (ids,))
            batch.placeholders.update(row[0] for row in created)
            states = {s: StreamState(s, v, d, t) for s, v, d, t in locked}
            if len(states) != len(streams):  # the schema was made again under us
                raise Unavailable("the stream table changed during the transaction; retry")
            batch.states.update(states)
            batch.known.update((row[0], RecordedEvent(*row)) for row in found)
        staged = batch.stage(writes)
        out: list[AppendResult] = []
        self._results.append((out, staged))
        return out

    def write(self, now: int, channel: str) -> psycopg.Cursor[Any] | None:
        """Queue step 3 (see :meth:`EventBatch.write`)."""
        return self._batch.write(self._conn, self._sql, now, channel)

    def finish(self, base: int) -> None:
        """After ``COMMIT``: fill the lists :meth:`append` returned."""
        for out, staged in self._results:
            out.extend(placed(staged, base))
