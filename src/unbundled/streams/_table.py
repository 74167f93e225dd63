"""The table sink: upsert items into a SQL table inside the epoch's transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

_json = msgspec.json.Encoder()


def _marker(conn: Any) -> str:
    return "?" if type(conn).__module__.startswith("sqlite3") else "%s"


def upsert(
    table: str, rows: Sequence[tuple[Any, tuple[int, int, str], int]]
) -> Callable[[Any], None]:
    """A ``tx.sql`` call writing ``rows`` (key, (start, end, JSON text), ts) into ``table``
    (created if missing): one row per key, or per key and window for window
    results. ``table`` was checked to be a plain identifier when the sink was made."""

    def write(conn: Any) -> None:
        q = _marker(conn)
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (key TEXT NOT NULL, start BIGINT NOT NULL, "
            '"end" BIGINT NOT NULL, value TEXT NOT NULL, ts BIGINT NOT NULL, '
            'PRIMARY KEY (key, start, "end"))'
        )
        sql = (
            f'INSERT INTO {table} (key, start, "end", value, ts) VALUES ({q}, {q}, {q}, {q}, {q}) '
            'ON CONFLICT (key, start, "end") DO UPDATE SET value = excluded.value, ts = excluded.ts'
        )
        params = []
        for key, (start, end, value), ts in rows:  # encoded by the sink (row_encoder)
            text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            params.append((text, start, end, value, ts))
        cur = conn.cursor()
        cur.executemany(sql, params)

    return write
