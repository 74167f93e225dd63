"""The log on PostgreSQL: topics, records, idempotent producers, waiting.

* Appends and offset commits are group-committed by a writer thread of
  their own (``_log_writer``; the steps and the locks are in ``_log_stage``):
  offsets per partition are dense and in commit order.
* A read is one statement, so one snapshot: the topic's row, the
  partition's bounds and the records, each record's CRC-32 verified
  (``CorruptionError`` rather than a damaged record).
* Topics are made and deleted, producers registered, one short transaction
  each on a pooled connection.
* Waiting for records uses LISTEN/NOTIFY (``_notify``: the log's own
  token, so event subscribers do not wake for records, nor readers for events).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ... import limits
from ..._ground import Waiter
from ...errors import (
    Closed,
    CorruptionError,
    LimitExceeded,
    OffsetOutOfRange,
    TopicExists,
    TopicNotFound,
)
from ...log import _core
from ...log._protocol import (
    MaintenanceReport,
    PartitionInfo,
    Record,
    TopicConfig,
    TopicInfo,
    TopicPartition,
    WriteBatch,
)
from ._log_maintain import maintain_partitions
from ._log_rows import TOPIC_COLUMNS, Topic, decode_headers, topic
from ._log_writer import LogWriter
from ._notify import LOG_PAYLOAD, Notifier
from ._schema import Conn, Pool, translated

_T = ", ".join(f"t.{c}" for c in TOPIC_COLUMNS.split(", "))


class LogSql:
    """The log's reads and calls, for one schema."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        self.next_id = (
            f"UPDATE {s}.meta SET value = (value::int8 + 1)::text "
            "WHERE key = 'topic_ids' RETURNING value::int8"
        )
        self.exists = f"SELECT count(*), count(*) FILTER (WHERE name = %s) FROM {s}.log_topics"
        self.create = f"INSERT INTO {s}.log_topics VALUES (%s, %s, %s, %s, %s)"
        self.create_partitions = (
            f"INSERT INTO {s}.log_partitions SELECT %s, generate_series(0, %s - 1), 0, 0, 0, 0"
        )
        self.topic = f"SELECT {TOPIC_COLUMNS} FROM {s}.log_topics WHERE name = %s FOR UPDATE"
        self.lock_partitions = (
            f"SELECT partition FROM {s}.log_partitions WHERE topic_id = %s "
            "ORDER BY partition FOR UPDATE"
        )
        self.drop = [
            f"DELETE FROM {s}.log_records WHERE topic_id = %(id)s",
            f"DELETE FROM {s}.log_partitions WHERE topic_id = %(id)s",
            f"DELETE FROM {s}.log_topics WHERE id = %(id)s",
            f"DELETE FROM {s}.log_offsets WHERE topic = %(name)s",
        ]
        self.names = f"SELECT name FROM {s}.log_topics ORDER BY name"
        self.topics = f"SELECT {TOPIC_COLUMNS} FROM {s}.log_topics ORDER BY name"
        self.describe = (
            f"SELECT {_T}, p.partition, p.start_offset, p.end_offset, p.records, p.bytes "
            f"FROM {s}.log_topics AS t LEFT JOIN {s}.log_partitions AS p ON p.topic_id = t.id "
            "WHERE t.name = ANY(%s::text[]) ORDER BY t.name, p.partition"
        )
        # One statement, one snapshot: the topic, the partition's bounds and
        # the records. Rows past bytes_max stay on the server (the first
        # always comes); "fetched" tells whether the table's end was reached.
        self.read = f"""
SELECT {_T}, p.start_offset, p.end_offset, r."offset", r.key, r.value, r.headers, r.ts, r.crc,
       r.fetched
FROM {s}.log_topics AS t
LEFT JOIN {s}.log_partitions AS p ON p.topic_id = t.id AND p.partition = %(p)s
LEFT JOIN LATERAL (
    SELECT * FROM (
        SELECT x.*, count(*) OVER () AS fetched,
               sum(coalesce(length(x.key), 0) + coalesce(length(x.value), 0))
                   OVER (ORDER BY x."offset") AS running,
               row_number() OVER (ORDER BY x."offset") AS n
        FROM (SELECT "offset", key, value, headers, ts, crc FROM {s}.log_records
              WHERE topic_id = t.id AND partition = %(p)s AND "offset" >= %(o)s
              ORDER BY "offset" LIMIT %(n)s) AS x
    ) AS y WHERE y.running <= %(b)s OR y.n = 1
) AS r ON p.partition IS NOT NULL
WHERE t.name = %(t)s
ORDER BY r."offset\""""
        self.init_producer = (
            f"INSERT INTO {s}.log_producers VALUES (%s, 1, -1) ON CONFLICT (producer_id) "
            f"DO UPDATE SET epoch = {s}.log_producers.epoch + 1 RETURNING epoch, last_sequence"
        )
        self.notify = f"SELECT pg_notify(%s, '{LOG_PAYLOAD}')"


class PostgresLog:
    """The log's records and producers of :class:`unbundled.backends.PostgresBackend`."""

    url: str
    schema: str
    channel: str
    clock: Callable[[], int]
    _where: str
    _closed: bool
    _pool: Pool
    _notifier: Notifier
    _connect_new: Callable[[], Conn]
    _run: Callable[[Callable[[Conn], Any]], Any]

    _log_writer_lock = threading.Lock()  # only guards starting and stopping the writer
    _log_writer_started: LogWriter | None = None
    _log_closing = False
    _log_sql_cached: LogSql | None = None

    @property
    def _log_sql(self) -> LogSql:
        sql = self._log_sql_cached
        if sql is None:
            sql = self._log_sql_cached = LogSql(self.schema)
        return sql

    def _log_writer(self) -> LogWriter:
        """The writer, started on the first append (a backend that serves
        only the event store never opens its connection)."""
        writer = self._log_writer_started
        if writer is None:
            with self._log_writer_lock:
                writer = self._log_writer_started
                if writer is None:
                    if self._closed or self._log_closing:
                        raise Closed(f"the log at {self._where} is closed")
                    writer = LogWriter(
                        self._connect_new,
                        self.schema,
                        self.channel,
                        self._where,
                        self.clock,
                        self._notifier.bump_log,
                    )
                    self._log_writer_started = writer
        return writer

    def _close_log(self) -> None:
        with self._log_writer_lock:
            self._log_closing = True  # no writer starts after this one stopped
            writer = self._log_writer_started
        if writer is not None:
            writer.close()

    def _log_call(self, fn: Callable[[Conn], Any], notify: bool = True) -> Any:
        """``fn(conn)`` in one transaction that tells waiters when it commits
        (``notify``: a bool, or a function of the result saying whether to)."""
        told = False

        def call(conn: Conn) -> Any:
            nonlocal told
            with conn.transaction():
                result = fn(conn)
                told = notify(result) if callable(notify) else notify
                if told:
                    conn.execute(self._log_sql.notify, (self.channel,))
            return result

        result = self._run(call)
        if told:
            self._notifier.bump_log()
        return result

    # --- topics ---------------------------------------------------------------

    def create_topic(self, name: str, config: TopicConfig) -> None:
        sql = self._log_sql

        def create(conn: Conn) -> None:
            row = conn.execute(sql.next_id).fetchone()  # also orders concurrent creators
            assert row is not None
            count, taken = conn.execute(sql.exists, (name,)).fetchone() or (0, 0)
            if taken:
                raise TopicExists(f"topic {name!r} already exists", topic=name)
            if count >= limits.topics_max:
                raise LimitExceeded(f"at most {limits.topics_max} topics", topic=name)
            raw = msgspec.json.encode(config).decode()
            tid = int(row[0])
            conn.execute(sql.create, (tid, name, config.partitions, raw, self.clock()))
            conn.execute(sql.create_partitions, (tid, config.partitions))

        self._log_call(create)

    def delete_topic(self, name: str) -> None:
        sql = self._log_sql

        def delete(conn: Conn) -> None:
            row = conn.execute(sql.topic, (name,)).fetchone()
            if row is None:
                raise TopicNotFound(f"topic {name!r} does not exist", topic=name)
            tid = int(row[0])
            # The partitions' locks first: appends in flight commit before.
            conn.execute(sql.lock_partitions, (tid,))
            for statement in sql.drop:
                conn.execute(statement, {"id": tid, "name": name})

        self._log_call(delete)

    def list_topics(self) -> list[str]:
        rows: list[tuple[Any, ...]] = self._run(lambda c: c.execute(self._log_sql.names).fetchall())
        return [r[0] for r in rows]

    def _topics(self, names: Sequence[str]) -> dict[str, tuple[Topic, dict[int, tuple[int, ...]]]]:
        """The topics ``names`` with their partitions' rows, in one snapshot."""
        rows: list[tuple[Any, ...]] = self._run(
            lambda c: c.execute(self._log_sql.describe, (list(names),)).fetchall()
        )
        out: dict[str, tuple[Topic, dict[int, tuple[int, ...]]]] = {}
        for row in rows:
            name = row[1]
            if name not in out:
                out[name] = (topic(row[:4], self._where), {})
            if row[4] is not None:
                out[name][1][int(row[4])] = tuple(int(v) for v in row[5:])
        return out

    def _topic_of(
        self, found: dict[str, tuple[Topic, dict[int, tuple[int, ...]]]], name: str
    ) -> tuple[Topic, dict[int, tuple[int, ...]]]:
        entry = found.get(name)
        if entry is None:
            raise TopicNotFound(f"topic {name!r} does not exist", topic=name)
        if set(entry[1]) != set(range(entry[0].config.partitions)):
            raise CorruptionError(
                f"{self._where}: the partition rows of topic {name!r} are damaged",
                url=self._where,
                topic=name,
            )
        return entry

    def topic_config(self, name: str) -> TopicConfig:
        return self._topic_of(self._topics([name]), name)[0].config

    def describe_topic(self, name: str) -> TopicInfo:
        found, parts = self._topic_of(self._topics([name]), name)
        infos = tuple(PartitionInfo(p, *parts[p]) for p in sorted(parts))
        return TopicInfo(name, found.config, infos)

    def offset_bounds(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        found = self._topics(sorted({tp.topic for tp in tps}))
        out: dict[TopicPartition, tuple[int, int]] = {}
        for tp in tps:
            entry, parts = self._topic_of(found, tp.topic)
            _core.check_partition(tp.topic, tp.partition, entry.config.partitions)
            start, end = parts[tp.partition][:2]
            out[TopicPartition(*tp)] = (start, end)
        return out

    # --- writing and reading --------------------------------------------------

    def submit(self, batch: WriteBatch, done: Waiter) -> None:
        if self._closed:
            raise Closed(f"the log at {self._where} is closed")
        self._log_writer().submit(batch, done)

    def read(
        self, topic: str, partition: int, offset: int, records_max: int, bytes_max: int
    ) -> list[Record]:
        params = {"t": topic, "p": partition, "o": offset, "n": records_max, "b": bytes_max}

        def read(conn: Conn) -> list[tuple[Any, ...]]:
            return conn.cursor(binary=True).execute(self._log_sql.read, params).fetchall()

        rows: list[tuple[Any, ...]] = self._run(read)
        if not rows:
            raise TopicNotFound(f"topic {topic!r} does not exist", topic=topic)
        found = topic_of_row(rows[0], self._where)
        _core.check_partition(topic, partition, found.config.partitions)
        start, end = rows[0][4], rows[0][5]
        if start is None:
            raise CorruptionError(
                f"{self._where}: the row of {topic}[{partition}] is missing",
                url=self._where,
                topic=topic,
            )
        if offset < start or offset > end:
            raise OffsetOutOfRange(
                f"offset {offset} is outside {topic}[{partition}]'s range {start}..{end}",
                topic=topic,
                partition=partition,
                offset=offset,
                start_offset=start,
                end_offset=end,
            )
        compact = found.config.cleanup_policy == "compact"
        records = _records(self._where, topic, partition, rows, offset, bytes_max, compact)
        fetched = rows[0][12] or 0
        if not compact and len(records) == fetched < records_max:
            # The table's end was reached: it must be the partition's end.
            last = records[-1].offset + 1 if records else offset
            if last != end:
                raise _damaged(self._where, topic, partition, last, f"is missing (end {end})")
        return records

    def change_token(self) -> int:
        return self._notifier.log_token()

    def wait_for_change(self, token: int, timeout_s: float) -> int:
        return self._notifier.wait_log(token, timeout_s)

    # --- producers and maintenance -------------------------------------------

    def init_producer(self, producer_id: str) -> tuple[int, int]:
        row: tuple[Any, ...] = self._log_call(
            lambda c: c.execute(self._log_sql.init_producer, (producer_id,)).fetchone()
        )
        return int(row[0]), int(row[1])

    def maintain(self) -> MaintenanceReport:
        rows: list[tuple[Any, ...]] = self._run(
            lambda c: c.execute(self._log_sql.topics).fetchall()
        )
        topics = [topic(row, self._where) for row in rows]
        if self._closed:
            raise Closed(f"the log at {self._where} is closed")
        with translated(self._where), self._pool.connection() as conn:
            removed = maintain_partitions(conn, self.schema, topics, self.clock(), self.channel)
        if removed:
            self._notifier.bump_log()
        return MaintenanceReport(removed)


def topic_of_row(row: Sequence[Any], where: str) -> Topic:
    return topic(row[:4], where)


def _damaged(where: str, topic: str, partition: int, offset: int, what: str) -> CorruptionError:
    return CorruptionError(
        f"{where}: record {topic}[{partition}]@{offset} {what}: the log is damaged",
        url=where,
        topic=topic,
        partition=partition,
        offset=offset,
    )


def _records(
    where: str,
    topic: str,
    partition: int,
    rows: list[tuple[Any, ...]],
    offset: int,
    bytes_max: int,
    compact: bool,
) -> list[Record]:
    """Verify each row (offset order, density outside compaction, CRC) and
    build the records, at most ``bytes_max`` of keys and values (at least one).

    Damage after the first record ends the read there, as on SQLite (and
    Kafka's consumer): the records before it are returned, and the next
    read, which starts at the damage, raises ``CorruptionError``."""
    out: list[Record] = []
    expected = offset
    size = 0
    for row in rows:
        off, key, value, blob, ts, crc = row[6:12]
        if off is None:  # no record: the LEFT JOIN's one row
            break
        damage = None
        if off < expected or (off != expected and not compact):
            damage = _damaged(where, topic, partition, expected, f"is missing (found {off})")
        elif (key is None and compact) or (value is None and not compact):
            damage = _damaged(where, topic, partition, off, "has a NULL it cannot have")
        elif _core.checksum(off, ts, key, value, blob) != crc:
            damage = _damaged(where, topic, partition, off, "failed its checksum")
        if damage is not None:
            if out:
                return out
            raise damage
        size += _core.payload_size(key, value)
        if out and size > bytes_max:
            break
        headers = () if blob is None else tuple(decode_headers(blob))
        out.append(Record(topic, partition, off, key, value, headers, ts))
        expected = off + 1
    return out
