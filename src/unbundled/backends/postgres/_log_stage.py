"""The log's writes in one PostgreSQL transaction: the statements, and the
pure work between them (validation, offsets, rows, results).

A transaction that writes records and offsets goes through three steps, the
writer's (``_log_writer``) or a unit of work's (``_unit``):

1. :meth:`LogStage.open` queues the reads, which lock in one order that every
   writer follows (so writers in different processes cannot deadlock):
   the consumer groups whose offsets are committed (``FOR SHARE``, sorted by
   name: a rebalance, which takes them ``FOR UPDATE``, waits for the
   commits), the idempotent producers (``FOR UPDATE``, sorted), then the
   partitions written (``FOR UPDATE``, sorted by topic id and partition);
   then the topics' rows and the producers' remembered sequences.
2. :meth:`LogStage.decide` decides each batch in turn against the state the
   earlier ones left (``log._core`` and ``log._groups``: the rules the memory
   model runs): a batch that is refused (unknown topic, partition out of
   range, stale generation, fenced producer) fails alone and leaves nothing
   queued, so no SAVEPOINT is needed.
3. :meth:`LogStage.write` queues the rows (one statement per table, arrays
   through ``unnest``) and ``pg_notify``; the caller sends ``COMMIT`` next.

Why offsets are dense and in commit order: a partition's row stays locked
from step 1 to COMMIT, so the transactions writing one partition commit one
at a time, each after the one before it, and each takes its offsets from
the end the one before it left. PostgreSQL makes a transaction visible
before it releases its locks, so whatever snapshot a reader takes holds a
prefix of the partition's offsets: a reader never sees offset k+1 without k
(``tests/backends/postgres/test_log_ordering.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import psycopg

from ... import limits
from ...errors import TopicNotFound
from ...log import _core, _groups
from ...log._protocol import Position, ValueRun, WriteBatch
from ._log_rows import TOPIC_COLUMNS, GroupStatements, Topic, encode_headers, load_groups, topic
from ._notify import LOG_PAYLOAD
from ._schema import Conn
from ._stage import Retry

_encode_positions = msgspec.json.encode
_decode_positions = msgspec.json.Decoder(list[tuple[str, int, int]]).decode


class LogStatements:
    """The log writer's SQL for one schema."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        self.groups = GroupStatements(schema)
        self.producers = (
            f"SELECT producer_id, epoch, last_sequence FROM {s}.log_producers "
            "WHERE producer_id = ANY(%s::text[]) ORDER BY producer_id FOR UPDATE"
        )
        self.window = (
            f"SELECT w.producer_id, w.sequence, w.positions FROM {s}.log_producer_window AS w "
            "JOIN unnest(%s::text[], %s::int8[]) AS v(p, q) "
            "ON w.producer_id = v.p AND w.sequence = v.q"
        )
        # ORDER BY, then FOR UPDATE: the rows are locked in sorted order.
        self.partitions = (
            f"SELECT p.topic_id, p.partition, p.end_offset FROM {s}.log_partitions AS p "
            f"JOIN {s}.log_topics AS t ON t.id = p.topic_id "
            "JOIN unnest(%s::text[], %s::int4[]) AS v(name, part) "
            "ON t.name = v.name AND p.partition = v.part "
            "ORDER BY p.topic_id, p.partition FOR UPDATE OF p"
        )
        self.topics = f"SELECT {TOPIC_COLUMNS} FROM {s}.log_topics WHERE name = ANY(%s::text[])"
        self.records = (
            f'INSERT INTO {s}.log_records (topic_id, partition, "offset", key, value, headers, '
            "ts, crc) SELECT * FROM unnest(%b::int8[], %b::int4[], %b::int8[], %b::bytea[], "
            "%b::bytea[], %b::bytea[], %b::int8[], %b::int8[])"
        )
        self.ends = (
            f"UPDATE {s}.log_partitions AS p SET end_offset = v.e, records = p.records + v.n, "
            "bytes = p.bytes + v.b FROM unnest(%b::int8[], %b::int4[], %b::int8[], %b::int8[], "
            "%b::int8[]) AS v(t, q, e, n, b) WHERE p.topic_id = v.t AND p.partition = v.q"
        )
        self.offsets = (
            f"INSERT INTO {s}.log_offsets SELECT * FROM unnest(%s::text[], %s::text[], "
            "%s::int4[], %s::int8[], %s::int8[]) ON CONFLICT (grp, topic, partition) DO UPDATE "
            "SET next_offset = excluded.next_offset, committed_ms = excluded.committed_ms"
        )
        self.sequences = (
            f"UPDATE {s}.log_producers AS p SET last_sequence = v.q "
            "FROM unnest(%s::text[], %s::int8[]) AS v(id, q) WHERE p.producer_id = v.id"
        )
        self.remember = (
            f"INSERT INTO {s}.log_producer_window "
            "SELECT * FROM unnest(%s::text[], %s::int8[], %s::text[])"
        )
        # The window keeps each producer's last N sequences: one scan of
        # its rows (a correlated "OFFSET N" per row cost N rows per row).
        self.forget = f"""
DELETE FROM {s}.log_producer_window AS w USING (
    SELECT producer_id, sequence,
           row_number() OVER (PARTITION BY producer_id ORDER BY sequence DESC) AS newer
    FROM {s}.log_producer_window WHERE producer_id = ANY(%s::text[])
) AS v
WHERE w.producer_id = v.producer_id AND w.sequence = v.sequence AND v.newer > %s"""
        self.notify = f"SELECT pg_notify(%s, '{LOG_PAYLOAD}')"
        self._schema = schema
        self._unlocked: LogStatements | None = None

    def unlocked(self) -> LogStatements:
        """These statements with reads that lock nothing."""
        if self._unlocked is not None:
            return self._unlocked
        sql = self._unlocked = LogStatements(self._schema)
        for name in ("producers", "partitions"):
            setattr(
                sql,
                name,
                getattr(sql, name).replace(" FOR UPDATE OF p", "").replace(" FOR UPDATE", ""),
            )
        sql.groups.share = sql.groups.share.replace(" FOR SHARE", "")
        return sql


class _Producer:
    __slots__ = ("epoch", "last", "window")

    def __init__(self, epoch: int | None, last: int) -> None:
        self.epoch = epoch
        self.last = last
        self.window: dict[int, list[Position]] = {}


class _Reads:
    __slots__ = ("assignments", "groups", "members", "names", "partitions", "producers", "topics")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.groups: psycopg.Cursor[Any] | None = None
        self.members: psycopg.Cursor[Any] | None = None
        self.assignments: psycopg.Cursor[Any] | None = None
        self.producers: psycopg.Cursor[Any] | None = None
        self.partitions: psycopg.Cursor[Any] | None = None
        self.topics: psycopg.Cursor[Any] | None = None


class LogStage:
    """What one transaction locked and read, decided, and will write."""

    def __init__(self, sql: LogStatements, clock: Callable[[], int], where: str) -> None:
        self._sql = sql
        self._clock = clock
        self._where = where
        self._reads = _Reads()
        self._window: psycopg.Cursor[Any] | None = None
        self._stamps: list[tuple[str, int]] = []
        self.topics: dict[str, Topic] = {}
        self.groups: dict[str, _groups.GroupState] = {}
        self.producers: dict[str, _Producer] = {}
        self.ends: dict[tuple[int, int], int] = {}
        # The rows to write, column by column.
        self.tids: list[int] = []
        self.parts: list[int] = []
        self.offsets: list[int] = []
        self.keys: list[bytes | None] = []
        self.values: list[bytes | None] = []
        self.headers: list[bytes | None] = []
        self.timestamps: list[int] = []
        self.crcs: list[int] = []
        self.deltas: dict[tuple[int, int], list[int]] = {}  # slot -> [records, bytes]
        self.committed: dict[tuple[str, str, int], int] = {}
        self.committed_ms = 0
        self.stamped: dict[str, int] = {}  # producer -> its last sequence now
        self.remembered: list[tuple[str, int, str]] = []

    # --- step 1 ---------------------------------------------------------------

    def open(self, conn: Conn, batches: Sequence[WriteBatch], lock: bool = True) -> None:
        """Queue the reads for ``batches`` (inside a pipeline and a transaction);
        without ``lock``, the same reads take no lock (a unit of work's early
        check: its locks are taken right before its COMMIT)."""
        sql = self._sql if lock else self._sql.unlocked()
        reads = self._reads
        groups = sorted({c.group for b in batches for c in b.commits})
        producers = sorted({b.producer.producer_id for b in batches if b.producer is not None})
        slots: set[tuple[str, int]] = set()
        names: set[str] = set()
        for batch in batches:
            for name, items in batch.appends.items():
                names.add(name)
                if type(items) is ValueRun:
                    slots.add((name, items.partition))
                else:
                    slots.update((name, item.partition) for item in items)
            for commit in batch.commits:
                names.update(tp.topic for tp in commit.offsets)
        if groups:
            reads.names = groups
            reads.groups = conn.execute(sql.groups.share, (groups,))
            reads.members = conn.execute(sql.groups.members, (groups,))
            reads.assignments = conn.execute(sql.groups.assignments, (groups,))
        if producers:
            reads.producers = conn.execute(sql.producers, (producers,))
            self._stamps = [
                (b.producer.producer_id, b.producer.sequence)
                for b in batches
                if b.producer is not None
            ]
            self._window = conn.execute(
                sql.window, ([p for p, _ in self._stamps], [q for _, q in self._stamps])
            )
        if slots:
            ordered = sorted(slots)
            reads.partitions = conn.cursor(binary=True).execute(
                sql.partitions, ([n for n, _ in ordered], [p for _, p in ordered])
            )
        if names:
            reads.topics = conn.execute(sql.topics, (sorted(names),))

    def load(self) -> None:
        """After the reads synced: take in what they found. (A topic made
        again between the partitions' lock and the topics' read has no
        locked partition under its new id: :meth:`decide` raises ``Retry``.)"""
        reads = self._reads
        if reads.groups is not None:
            assert reads.members is not None and reads.assignments is not None
            self.groups = load_groups(reads.groups, reads.members, reads.assignments, reads.names)
        if reads.producers is not None:
            for producer_id, epoch, last in reads.producers:
                self.producers[producer_id] = _Producer(int(epoch), int(last))
            assert self._window is not None
            for producer_id, sequence, positions in self._window:
                producer = self.producers.get(producer_id)
                if producer is not None:
                    producer.window[int(sequence)] = [
                        Position(*p) for p in _decode_positions(positions)
                    ]
        if reads.partitions is not None:
            self.ends = {(int(t), int(p)): int(e) for t, p, e in reads.partitions}
        if reads.topics is not None:
            for row in reads.topics:
                found = topic(row, self._where)
                self.topics[found.name] = found

    # --- step 2 ---------------------------------------------------------------

    def _topic(self, name: str) -> Topic:
        found = self.topics.get(name)
        if found is None:
            raise TopicNotFound(f"topic {name!r} does not exist", topic=name)
        return found

    def _end(self, tid: int, partition: int) -> int:
        end = self.ends.get((tid, partition))
        if end is None:  # its row was not there when we locked: the topic was made again
            raise Retry
        return end

    def check(self, batch: WriteBatch) -> list[Position] | None:
        """Everything that can refuse ``batch``, in the memory model's order;
        a list: a producer's retry, answered with the positions it got."""
        stamp = batch.producer
        if stamp is not None:
            producer = self.producers.get(stamp.producer_id) or _Producer(None, -1)
            duplicate = _core.check_sequence(stamp, producer.epoch, producer.last, producer.window)
            if duplicate is not None:
                return duplicate
        for name, items in batch.appends.items():
            config = self._topic(name).config
            _core.check_partition_count(name, batch.partitions, config.partitions)
            if type(items) is ValueRun:
                _core.check_partition(name, items.partition, config.partitions)
                continue
            for item in items:
                _core.check_partition(name, item.partition, config.partitions)
        for commit in batch.commits:
            state = self.groups.get(commit.group) or _groups.GroupState(commit.group)
            _groups.check_commit(state, commit)
            for tp in commit.offsets:
                _core.check_partition(
                    tp.topic, tp.partition, self._topic(tp.topic).config.partitions
                )
        return None

    def decide(self, batch: WriteBatch) -> list[Position]:
        """Decide ``batch`` and queue its rows; raise (queuing nothing) if refused."""
        duplicate = self.check(batch)
        if duplicate is not None:
            return duplicate
        positions: list[Position] = []
        for name, items in batch.appends.items():
            tid = self.topics[name].id
            if type(items) is ValueRun:
                positions.extend(self._queue_run(name, tid, items))
                continue
            for part, key, value, headers, ts in items:
                offset = self._slot(tid, part)
                blob = encode_headers(headers) if headers else None
                self._row(tid, part, offset, key, value, blob, ts)
                delta = self.deltas[(tid, part)]
                delta[0] += 1
                delta[1] += _core.payload_size(key, value)
                self.ends[(tid, part)] = offset + 1
                positions.append(Position(name, part, offset))
        if batch.commits:
            self.committed_ms = self._clock()
        for commit in batch.commits:
            for tp, offset in commit.offsets.items():
                self.committed[(commit.group, tp.topic, tp.partition)] = offset
        stamp = batch.producer
        if stamp is not None:
            producer = self.producers[stamp.producer_id]  # check_sequence found it
            producer.last = stamp.sequence
            producer.window[stamp.sequence] = positions
            self.stamped[stamp.producer_id] = stamp.sequence
            encoded = _encode_positions([(p.topic, p.partition, p.offset) for p in positions])
            self.remembered.append((stamp.producer_id, stamp.sequence, encoded.decode()))
        return positions

    def _slot(self, tid: int, partition: int) -> int:
        end = self._end(tid, partition)
        if (tid, partition) not in self.deltas:
            self.deltas[(tid, partition)] = [0, 0]
        return end

    def _row(
        self,
        tid: int,
        part: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        blob: bytes | None,
        ts: int,
    ) -> None:
        self.tids.append(tid)
        self.parts.append(part)
        self.offsets.append(offset)
        self.keys.append(key)
        self.values.append(value)
        self.headers.append(blob)
        self.timestamps.append(ts)
        self.crcs.append(_core.checksum(offset, ts, key, value, blob))

    def _queue_run(self, name: str, tid: int, run: ValueRun) -> list[Position]:
        part = run.partition
        first = self._slot(tid, part)
        values = run.values
        count = len(values)
        ts = run.timestamp
        offsets = range(first, first + count)
        self.tids.extend([tid] * count)
        self.parts.extend([part] * count)
        self.offsets.extend(offsets)
        self.keys.extend([None] * count)
        self.values.extend(values)
        self.headers.extend([None] * count)
        self.timestamps.extend([ts] * count)
        checksum = _core.checksum
        self.crcs.extend(
            checksum(o, ts, None, v, None) for o, v in zip(offsets, values, strict=True)
        )
        delta = self.deltas[(tid, part)]
        delta[0] += count
        delta[1] += sum(map(len, values))
        self.ends[(tid, part)] = first + count
        return [Position(name, part, o) for o in offsets]

    # --- step 3 ---------------------------------------------------------------

    def __bool__(self) -> bool:
        """Whether there is anything to write."""
        return bool(self.tids or self.committed or self.stamped)

    def write(self, conn: Conn, channel: str) -> None:
        """Queue the rows and the notification; the caller sends COMMIT next."""
        sql = self._sql
        if self.tids:
            conn.execute(
                sql.records,
                (
                    self.tids,
                    self.parts,
                    self.offsets,
                    self.keys,
                    self.values,
                    self.headers,
                    self.timestamps,
                    self.crcs,
                ),
            )
            slots = [s for s, d in self.deltas.items() if d[0]]
            conn.execute(
                sql.ends,
                (
                    [t for t, _ in slots],
                    [p for _, p in slots],
                    [self.ends[s] for s in slots],
                    [self.deltas[s][0] for s in slots],
                    [self.deltas[s][1] for s in slots],
                ),
            )
        if self.committed:
            keys = list(self.committed)
            conn.execute(
                sql.offsets,
                (
                    [g for g, _, _ in keys],
                    [t for _, t, _ in keys],
                    [p for _, _, p in keys],
                    list(self.committed.values()),
                    [self.committed_ms] * len(keys),
                ),
            )
        if self.stamped:
            ids = list(self.stamped)
            conn.execute(sql.sequences, (ids, list(self.stamped.values())))
            rows = self.remembered
            conn.execute(
                sql.remember,
                ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
            )
            conn.execute(sql.forget, (ids, limits.producer_window_requests_max))
        conn.execute(sql.notify, (channel,))
