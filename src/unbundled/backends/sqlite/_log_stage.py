"""The log's part of the SQLite writer's transaction: records and counters.

:class:`Stage` assigns offsets and CRCs to the records of each request and
queues their rows in memory (all or nothing per request, so it needs no
SAVEPOINT); at :meth:`Stage.flush` it writes them with one multi-row INSERT
per partition and chunk, and the partitions' counters with one UPDATE. The
group-commit writer (``_writer``) owns the connection and the transaction.
"""

from __future__ import annotations

import sqlite3
from functools import lru_cache
from itertools import chain, repeat
from typing import Any

import msgspec

from ..._ground import crc32 as _crc32
from ...errors import CorruptionError
from ...log import _core
from ...log._protocol import Position, TopicConfig, ValueRun, WriteBatch
from . import _log_batch, _log_read
from ._schema import BATCHED_FORMAT, records_table

_encode_headers = msgspec.msgpack.encode

# Rows per multi-row INSERT. One statement per chunk, not per row: the sqlite3
# module releases the GIL on every step, and with many threads waiting for the
# GIL each release can cost the writer a whole time slice.
_CHUNK_MAX = 512 if sqlite3.sqlite_version_info >= (3, 32) else 128
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33)


@lru_cache(maxsize=2048)
def _insert_sql(tid: int, part: int, count: int) -> str:
    return f"INSERT INTO {records_table(tid, part)} VALUES " + ",".join(["(?,?,?,?,?,?)"] * count)


class Stage:
    """The records and counters of the transaction being built.

    Topic ids and partition end offsets are cached across transactions and
    trusted only while ``PRAGMA data_version`` shows no commit from another
    connection (another process) since our last one. Rows are inserted at
    :meth:`flush`, one multi-row INSERT per partition (up to ``_CHUNK_MAX``
    rows each); sqlite3's statement cache keeps the few sizes in use prepared.
    """

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.conn = conn
        self.path = path
        self.topics: dict[str, tuple[int, TopicConfig]] = {}
        self.ends: dict[tuple[int, int], int] = {}
        self.deltas: dict[tuple[int, int], list[int]] = {}
        self.rows: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
        self.batched: set[int] = set()  # ids of topics that store record batches
        self._version = -1

    def begin(self) -> bool:
        """Called right after BEGIN IMMEDIATE: drop caches another process made
        stale; True if it did."""
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self.invalidate()
            self._version = version
            return True
        return False

    def invalidate(self) -> None:
        self.topics.clear()
        self.batched.clear()
        self.ends.clear()
        self.deltas.clear()
        self.rows.clear()

    def topic(self, name: str) -> tuple[int, TopicConfig]:
        found = self.topics.get(name)
        if found is None:
            # Verified as a read's: a damaged row is CorruptionError here too,
            # never a decoding error escaping from the writer.
            topic = _log_read.topic_row(self.conn, self.path, name)
            found = (topic.id, topic.config)
            self.topics[name] = found
            if topic.records_format == BATCHED_FORMAT:
                self.batched.add(topic.id)
        return found

    def end(self, key: tuple[int, int]) -> int:
        end = self.ends.get(key)
        if end is None:
            row = self.conn.execute(
                "SELECT end_offset FROM partitions WHERE topic_id = ? AND partition = ?", key
            ).fetchone()
            if row is None:
                raise CorruptionError(f"partition row {key} is missing", key=key)
            end = self.ends[key] = row[0]
        if key not in self.rows:
            self.deltas[key] = [0, 0]
            self.rows[key] = []
        return end

    def check(self, batch: WriteBatch) -> None:
        """What :meth:`stage` would refuse ``batch`` for, without staging it."""
        for name, items in batch.appends.items():
            _, config = self.topic(name)
            _core.check_partition_count(name, batch.partitions, config.partitions)
            if type(items) is ValueRun:
                _core.check_partition(name, items.partition, config.partitions)
                continue
            for item in items:
                _core.check_partition(name, item.partition, config.partitions)

    def stage(self, batch: WriteBatch) -> list[Position]:
        """Assign offsets and queue rows; all-or-nothing for this batch."""
        appends = batch.appends
        if len(appends) == 1:
            # The common request, one topic's bare values: checked and staged
            # in one pass (the general loops below cost a per-record share).
            for name, items in appends.items():
                if type(items) is ValueRun:
                    tid, config = self.topic(name)
                    _core.check_partition_count(name, batch.partitions, config.partitions)
                    _core.check_partition(name, items.partition, config.partitions)
                    return self._stage_run(name, tid, items)
        self.check(batch)  # all of it before any of it is staged
        positions: list[Position] = []
        for name, items in batch.appends.items():
            tid, _ = self.topic(name)
            if type(items) is ValueRun:
                positions.extend(self._stage_run(name, tid, items))
                continue
            batched = tid in self.batched
            for part, key, value, headers, ts in items:
                slot = (tid, part)
                off = self.end(slot)
                if batched:  # checked as a batch at flush
                    self.rows[slot].append((off, key, value, headers or (), ts))
                else:
                    hblob = _encode_headers(headers) if headers else None
                    crc = _crc32(hblob or b"", (off ^ ts) & 0xFFFFFFFF)
                    if key is not None:
                        crc = _crc32(key, crc)
                    if value is not None:
                        crc = _crc32(value, crc)
                    self.rows[slot].append((off, key, value, hblob, ts, crc))
                self.ends[slot] = off + 1
                delta = self.deltas[slot]
                delta[0] += 1
                delta[1] += _core.payload_size(key, value)
                positions.append(Position(name, part, off))
        return positions

    def _stage_run(self, name: str, tid: int, run: ValueRun) -> list[Position]:
        slot = (tid, run.partition)
        first = self.end(slot)
        values = run.values
        ts = run.timestamp
        offsets = range(first, first + len(values))
        if tid in self.batched:
            self.rows[slot].extend(
                zip(offsets, repeat(None), values, repeat(()), repeat(ts), strict=False)
            )
        else:
            crcs = [_crc32(v, (o ^ ts) & 0xFFFFFFFF) for o, v in zip(offsets, values, strict=True)]
            self.rows[slot].extend(
                zip(offsets, repeat(None), values, repeat(None), repeat(ts), crcs, strict=False)
            )
        self.ends[slot] = first + len(values)
        delta = self.deltas[slot]
        delta[0] += len(values)
        delta[1] += sum(map(len, values))
        part = run.partition
        return [Position(name, part, o) for o in offsets]

    def mark(
        self,
    ) -> tuple[
        dict[tuple[int, int], int], dict[tuple[int, int], list[int]], dict[tuple[int, int], int]
    ]:
        return (
            dict(self.ends),
            {k: list(v) for k, v in self.deltas.items()},
            {k: len(v) for k, v in self.rows.items()},
        )

    def reset(
        self,
        mark: tuple[
            dict[tuple[int, int], int], dict[tuple[int, int], list[int]], dict[tuple[int, int], int]
        ],
    ) -> None:
        ends, deltas, lengths = mark
        self.ends = ends
        self.deltas = deltas
        for key in list(self.rows):
            if key not in lengths:
                del self.rows[key]
            else:
                del self.rows[key][lengths[key] :]

    def flush(self) -> None:
        conn = self.conn
        for (tid, part), rows in self.rows.items():
            if tid in self.batched:
                if rows:
                    table = records_table(tid, part)
                    conn.executemany(
                        f"INSERT INTO {table} VALUES (?,?,?,?,?,?)", _log_batch.encode(table, rows)
                    )
                    rows.clear()
                continue
            total = len(rows)
            done = 0
            while done < total:
                # One statement per partition up to the chunk size: each
                # extra statement is one more GIL round trip under load.
                count = min(_CHUNK_MAX, total - done)
                conn.execute(
                    _insert_sql(tid, part, count),
                    list(chain.from_iterable(rows[done : done + count])),
                )
                done += count
            rows.clear()
        updates = [
            (tid, part, self.ends[(tid, part)], delta[0], delta[1])
            for (tid, part), delta in self.deltas.items()
            if delta[0]
        ]
        if len(updates) > 1 and _UPDATE_FROM:
            conn.execute(
                "UPDATE partitions SET end_offset = v.column3, records = records + v.column4, "
                "bytes = bytes + v.column5 FROM (VALUES "
                + ",".join(["(?,?,?,?,?)"] * len(updates))
                + ") AS v WHERE partitions.topic_id = v.column1 "
                "AND partitions.partition = v.column2",
                list(chain.from_iterable(updates)),
            )
        else:
            for tid, part, end, records, size in updates:
                conn.execute(
                    "UPDATE partitions SET end_offset = ?, records = records + ?, "
                    "bytes = bytes + ? WHERE topic_id = ? AND partition = ?",
                    (end, records, size, tid, part),
                )
        for delta in self.deltas.values():
            delta[0] = delta[1] = 0

    def forget_topics(self) -> None:
        """After DDL or maintenance: re-read topics and counters on next use."""
        self.flush()
        self.invalidate()


__all__ = ["Stage"]
