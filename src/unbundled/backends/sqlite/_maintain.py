"""Retention and compaction in SQL, with the same rules as ``log._core``
(``retention_start`` and ``compaction_victims``); the model-based tests hold
the two to each other."""

from __future__ import annotations

import sqlite3

import msgspec

from ...log._protocol import TopicConfig
from ._schema import records_table

_SIZE = "coalesce(length(key), 0) + coalesce(length(value), 0)"


def maintain(conn: sqlite3.Connection, now: int) -> dict[str, int]:
    """Apply every topic's retention or compaction; return records removed per topic."""
    removed: dict[str, int] = {}
    topics = conn.execute("SELECT id, name, config FROM topics ORDER BY id").fetchall()
    for tid, name, raw in topics:
        config = msgspec.json.decode(raw, type=TopicConfig)
        if config.cleanup_policy == "delete" and (
            config.retention_ms is None and config.retention_bytes is None
        ):
            continue
        count = 0
        for partition in range(config.partitions):
            if config.cleanup_policy == "compact":
                count += _compact(conn, tid, partition, config, now)
            else:
                count += _retain(conn, tid, partition, config, now)
        if count:
            removed[name] = count
    return removed


def _retain(
    conn: sqlite3.Connection, tid: int, partition: int, config: TopicConfig, now: int
) -> int:
    table = records_table(tid, partition)
    start, end, total = conn.execute(
        "SELECT start_offset, end_offset, bytes FROM partitions "
        "WHERE topic_id = ? AND partition = ?",
        (tid, partition),
    ).fetchone()
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


def _compact(
    conn: sqlite3.Connection, tid: int, partition: int, config: TopicConfig, now: int
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
    return gone
