"""Retention and compaction of the log on PostgreSQL, in SQL, with the rules
of ``log._core`` (``retention_start`` and ``compaction_victims``); the
model-based tests hold the two to each other.

One short transaction per partition, which locks the partition's row as an
append does: appends to that partition wait for it (and it for them), the
other partitions go on. Retention removes a prefix and moves the start
offset; compaction leaves the start offset where it is (readers of a
compacted topic expect gaps).
"""

from __future__ import annotations

from collections.abc import Sequence

from ._log_rows import Topic
from ._notify import LOG_PAYLOAD
from ._schema import Conn

_SIZE = "coalesce(length(key), 0) + coalesce(length(value), 0)"


class _Sql:
    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        where = "topic_id = %(t)s AND partition = %(p)s"
        self.lock = (
            f"SELECT start_offset, end_offset FROM {s}.log_partitions WHERE {where} FOR UPDATE"
        )
        # Time: the first record young enough stays, with all after it.
        self.young = (
            f'SELECT "offset" FROM {s}.log_records WHERE {where} AND ts >= %(cutoff)s '
            'ORDER BY "offset" LIMIT 1'
        )
        # Size: the first record from which the rest fits in retention_bytes.
        self.fits = f"""
SELECT "offset" FROM (
    SELECT "offset", sum({_SIZE}) OVER (ORDER BY "offset" DESC) AS rest
    FROM {s}.log_records WHERE {where} AND "offset" >= %(cut)s
) AS x WHERE rest <= %(bytes)s ORDER BY "offset" LIMIT 1"""
        self.cut = f"""
WITH d AS (DELETE FROM {s}.log_records WHERE {where} AND "offset" < %(cut)s
           RETURNING {_SIZE} AS size)
UPDATE {s}.log_partitions SET start_offset = %(cut)s,
    records = records - (SELECT count(*) FROM d),
    bytes = bytes - (SELECT coalesce(sum(size), 0) FROM d)
WHERE {where} RETURNING (SELECT count(*) FROM d)"""
        # Every record with a later one of the same key, and the latest
        # tombstones older than the cutoff.
        self.compact = f"""
WITH v AS (
    SELECT "offset", row_number() OVER (PARTITION BY key ORDER BY "offset" DESC) AS newer,
           value IS NULL AS tombstone, ts
    FROM {s}.log_records WHERE {where}
), d AS (
    DELETE FROM {s}.log_records AS r USING v
    WHERE r.topic_id = %(t)s AND r.partition = %(p)s AND r."offset" = v."offset"
      AND (v.newer > 1 OR (v.tombstone AND v.ts < %(cutoff)s))
    RETURNING coalesce(length(r.key), 0) + coalesce(length(r.value), 0) AS size
)
UPDATE {s}.log_partitions SET records = records - (SELECT count(*) FROM d),
    bytes = bytes - (SELECT coalesce(sum(size), 0) FROM d)
WHERE {where} RETURNING (SELECT count(*) FROM d)"""
        self.notify = f"SELECT pg_notify(%s, '{LOG_PAYLOAD}')"


def maintain_partitions(
    conn: Conn, schema: str, topics: Sequence[Topic], now: int, channel: str
) -> dict[str, int]:
    """Apply every topic's retention or compaction; records removed per topic."""
    sql = _Sql(schema)
    removed: dict[str, int] = {}
    for found in topics:
        config = found.config
        compact = config.cleanup_policy == "compact"
        if not compact and config.retention_ms is None and config.retention_bytes is None:
            continue
        count = 0
        for partition in range(config.partitions):
            params: dict[str, object] = {"t": found.id, "p": partition}
            with conn.transaction():
                row = conn.execute(sql.lock, params).fetchone()
                if row is None:  # the topic was deleted meanwhile
                    break
                if compact:
                    params["cutoff"] = now - config.tombstone_retention_ms
                    gone = conn.execute(sql.compact, params).fetchone()
                else:
                    gone = _retain(conn, sql, params, found, now, (int(row[0]), int(row[1])))
                if gone and gone[0]:
                    conn.execute(sql.notify, (channel,))
                    count += int(gone[0])
        if count:
            removed[found.name] = count
    return removed


def _retain(
    conn: Conn,
    sql: _Sql,
    params: dict[str, object],
    found: Topic,
    now: int,
    bounds: tuple[int, int],
) -> tuple[int] | None:
    config = found.config
    start, end = bounds
    cut = start
    if config.retention_ms is not None:
        params["cutoff"] = now - config.retention_ms
        row = conn.execute(sql.young, params).fetchone()
        cut = int(row[0]) if row is not None else end
    if config.retention_bytes is not None and cut < end:
        params["cut"] = cut
        params["bytes"] = config.retention_bytes
        row = conn.execute(sql.fits, params).fetchone()
        cut = int(row[0]) if row is not None else end
    if cut <= start:
        return None
    params["cut"] = cut
    gone = conn.execute(sql.cut, params).fetchone()
    return (int(gone[0]),) if gone is not None else None
