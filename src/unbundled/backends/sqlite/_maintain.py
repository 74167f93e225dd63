"""Retention and compaction in SQL, with the same rules as ``log._core``
(``retention_start`` and ``compaction_victims``); the model-based tests hold
the two to each other.

Retention removes a prefix and moves the partition's start offset.
Compaction leaves the start offset where it is (as Kafka's log start offset,
which only retention and record deletion move) and records the gaps it
leaves in ``removed_ranges``, so a reader can tell them from damage.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from itertools import chain
from typing import NamedTuple

from ...log._protocol import TopicConfig
from ._integrity import rebuild_removed
from ._log_batch import entries
from ._log_read import all_topics, partition_row
from ._schema import BATCHED_FORMAT, records_table

_SIZE = "coalesce(length(key), 0) + coalesce(length(value), 0)"


def maintain(conn: sqlite3.Connection, now: int, path: str) -> dict[str, int]:
    """Apply every topic's retention or compaction; return records removed per topic.

    Raises ``CorruptionError`` (and removes nothing) if a topic or partition
    row it needs is damaged."""
    removed: dict[str, int] = {}
    for tid, name, config, fmt in sorted(all_topics(conn, path)):
        if config.cleanup_policy == "delete" and (
            config.retention_ms is None and config.retention_bytes is None
        ):
            continue
        count = 0
        for partition in range(config.partitions):
            start, end, _, total = partition_row(conn, path, tid, name, partition)
            if config.cleanup_policy == "compact":
                count += _compact(conn, tid, partition, config, now, range(start, end))
            elif fmt == BATCHED_FORMAT:
                where = _Where(conn, path, tid, name, partition)
                count += _retain_batched(where, config, now, (start, end, total))
            else:
                count += _retain(conn, tid, partition, config, now, (start, end, total))
        if count:
            removed[name] = count
    return removed


def _retain(
    conn: sqlite3.Connection,
    tid: int,
    partition: int,
    config: TopicConfig,
    now: int,
    state: tuple[int, int, int],
) -> int:
    table = records_table(tid, partition)
    start, end, total = state
    cut = start
    if config.retention_ms is not None:
        # Scans from the start in offset order and stops at the first young
        # record: the cost is the length of the prefix being removed.
        row = conn.execute(
            f"SELECT offset FROM {table} WHERE ts >= ? ORDER BY offset LIMIT 1",
            (now - config.retention_ms,),
        ).fetchone()
        cut = row[0] if row is not None else end
    if config.retention_bytes is not None:
        remaining = (
            total
            - (
                conn.execute(
                    f"SELECT coalesce(sum({_SIZE}), 0) FROM {table} WHERE offset < ?", (cut,)
                ).fetchone()[0]
            )
        )
        if remaining > config.retention_bytes:
            for offset, size in conn.execute(
                f"SELECT offset, {_SIZE} FROM {table} WHERE offset >= ? ORDER BY offset", (cut,)
            ).fetchall():
                if remaining <= config.retention_bytes:
                    break
                remaining -= size
                cut = offset + 1
            else:
                cut = end
    if cut <= start:
        return 0
    gone, gone_bytes = conn.execute(
        f"SELECT count(*), coalesce(sum({_SIZE}), 0) FROM {table} WHERE offset < ?", (cut,)
    ).fetchone()
    conn.execute(f"DELETE FROM {table} WHERE offset < ?", (cut,))
    conn.execute(
        "UPDATE partitions SET start_offset = ?, records = records - ?, bytes = bytes - ? "
        "WHERE topic_id = ? AND partition = ?",
        (cut, gone, gone_bytes, tid, partition),
    )
    return int(gone)


class _Where(NamedTuple):
    conn: sqlite3.Connection
    path: str
    tid: int
    topic: str
    partition: int

    def sizes(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """``(offset, payload size)`` of the records ``lo .. hi-1``, verified."""
        if lo < hi:
            for offset, _, size in entries(*self, lo, hi):
                yield offset, size

    def span_bytes(self, lo: int, hi: int) -> int:
        """The payload bytes of the records ``lo .. hi-1``: whole batches by
        their ``size``, only the (at most two) cut ones decoded."""
        if lo >= hi:
            return 0
        first, last, whole = self.conn.execute(
            f"SELECT min(base), max(last), coalesce(sum(size), 0) FROM "
            f"{records_table(self.tid, self.partition)} WHERE base >= ? AND last < ?",
            (lo, hi),
        ).fetchone()
        if first is None:
            return sum(size for _, size in self.sizes(lo, hi))
        edges = chain(self.sizes(lo, first), self.sizes(last + 1, hi))
        return int(whole) + sum(size for _, size in edges)


def _retain_batched(
    where: _Where, config: TopicConfig, now: int, state: tuple[int, int, int]
) -> int:
    """:func:`_retain` for a topic of record batches: the same cut, found by
    batch (``ts_max``, ``size``) and decoding only the batches it falls in."""
    conn, table = where.conn, records_table(where.tid, where.partition)
    start, end, total = state
    cut = start
    if config.retention_ms is not None:
        cutoff = now - config.retention_ms
        row = conn.execute(
            f"SELECT base FROM {table} WHERE ts_max >= ? AND last >= ? ORDER BY base LIMIT 1",
            (cutoff, start),
        ).fetchone()
        cut = end
        if row is not None:  # the first young record is in this batch or (if
            # only records before `start` made it young) a later one
            for offset, ts, _ in entries(*where, max(row[0], start), end):
                if ts >= cutoff:
                    cut = offset
                    break
    limit = config.retention_bytes
    if limit is not None:
        remaining = total - where.span_bytes(start, cut)
        batches = conn.execute(
            f"SELECT base, last, size FROM {table} WHERE last >= ? ORDER BY base", (cut,)
        ).fetchall()
        for base, last, size in batches:
            if remaining <= limit:
                break
            if base >= cut and remaining - size > limit:  # all of it goes
                remaining, cut = remaining - size, last + 1
                continue
            for offset, each in where.sizes(max(base, cut), last + 1):
                if remaining <= limit:
                    break
                remaining, cut = remaining - each, offset + 1
        if remaining > limit:
            cut = end
    if cut <= start:
        return 0
    gone_bytes = where.span_bytes(start, cut)
    conn.execute(f"DELETE FROM {table} WHERE last < ?", (cut,))
    conn.execute(
        "UPDATE partitions SET start_offset = ?, records = records - ?, bytes = bytes - ? "
        "WHERE topic_id = ? AND partition = ?",
        (cut, cut - start, gone_bytes, where.tid, where.partition),
    )
    return cut - start


def _compact(
    conn: sqlite3.Connection,
    tid: int,
    partition: int,
    config: TopicConfig,
    now: int,
    offsets: range,
) -> int:
    table = records_table(tid, partition)
    before = conn.total_changes
    conn.execute(
        f"DELETE FROM {table} AS t WHERE offset < "
        f"(SELECT max(offset) FROM {table} AS u WHERE u.key = t.key)"
    )
    # What remains is the latest record per key; expired tombstones go too.
    conn.execute(
        f"DELETE FROM {table} WHERE value IS NULL AND ts < ?",
        (now - config.tombstone_retention_ms,),
    )
    gone = conn.total_changes - before
    if gone:
        records, size = conn.execute(
            f"SELECT count(*), coalesce(sum({_SIZE}), 0) FROM {table}"
        ).fetchone()
        conn.execute(
            "UPDATE partitions SET records = ?, bytes = ? WHERE topic_id = ? AND partition = ?",
            (records, size, tid, partition),
        )
        rebuild_removed(conn, table, tid, partition, offsets.start, offsets.stop)
    return gone
