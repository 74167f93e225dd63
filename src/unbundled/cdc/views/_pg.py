"""A read model in PostgreSQL: one table of rows by (topic, key), offsets beside it.

Tables (in ``schema``, named after the view): ``<name>`` (topic, key, row jsonb,
position) and ``<name>_offsets`` (topic, partition, next_offset). A batch's rows and its
offsets commit in one transaction; the offset update is conditional on the offset the
batch was read from, so a second runner's copy of a batch is refused, not applied twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ...errors import ConflictError, Unavailable, UsageError
from .._change import UNAVAILABLE_TEXT
from .._replay import Event, merge, row_ops
from ._base import TopicPartition, check_name


class PostgresReadModel:
    """Rows of the topics it follows (see `follow`) in a PostgreSQL table."""

    def __init__(self, url: str, *, schema: str = "public", name: str = "cdc_read_model") -> None:
        try:
            import psycopg
            from psycopg import sql
        except ImportError as exc:  # pragma: no cover - the extra is part of dev
            raise UsageError(
                "a PostgreSQL read model needs: pip install 'unbundled[postgres]'"
            ) from exc
        self.name = check_name(name)
        self.schema = schema
        # A test hook: called after a batch is applied and before its commit.
        self.before_commit: Callable[[], None] | None = None
        try:
            self._conn = psycopg.connect(url, autocommit=False, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise Unavailable(f"cannot connect to the read model's database: {exc}") from exc
        self._rows = sql.Identifier(schema, name)
        self._offsets = sql.Identifier(schema, f"{name}_offsets")
        self._conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (topic text NOT NULL, key text NOT NULL, "
                "row jsonb NOT NULL, position text NOT NULL, PRIMARY KEY (topic, key))"
            ).format(self._rows)
        )
        self._conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (topic text NOT NULL, partition int NOT NULL, "
                "next_offset bigint NOT NULL, PRIMARY KEY (topic, partition))"
            ).format(self._offsets)
        )
        self._conn.commit()

    def offsets(self) -> dict[TopicPartition, int]:
        """The stored offsets: (topic, partition) -> the next offset to apply."""
        from psycopg import sql

        rows = self._conn.execute(
            sql.SQL("SELECT topic, partition, next_offset FROM {}").format(self._offsets)
        ).fetchall()
        self._conn.commit()
        return {(t, p): int(o) for t, p, o in rows}

    def apply(
        self,
        batch: Sequence[Event],
        start: dict[TopicPartition, int],
        end: dict[TopicPartition, int],
    ) -> None:
        """Apply one batch of change events and store the offsets after it, atomically."""
        from psycopg import sql

        conn = self._conn
        try:
            for (topic, partition), at in start.items():
                # Insert-if-absent, then a conditional move: a concurrent runner's update
                # of the same row waits for ours and then finds the offset moved.
                conn.execute(
                    sql.SQL("INSERT INTO {} VALUES (%s, %s, 0) ON CONFLICT DO NOTHING").format(
                        self._offsets
                    ),
                    (topic, partition),
                )
                moved = conn.execute(
                    sql.SQL(
                        "UPDATE {} SET next_offset = %s WHERE topic = %s AND partition = %s "
                        "AND next_offset = %s"
                    ).format(self._offsets),
                    (end[(topic, partition)], topic, partition, at),
                )
                if moved.rowcount != 1:
                    raise ConflictError(
                        f"view {self.name}: {topic}[{partition}] is no longer at {at}: "
                        "another runner applied it"
                    )
            self._write(batch)
            if self.before_commit is not None:
                self.before_commit()
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    def _write(self, batch: Sequence[Event]) -> None:
        """The batch's row operations, in order; runs of plain puts go as one pipeline."""
        from psycopg import sql
        from psycopg.types.json import Jsonb

        conn = self._conn
        upsert = sql.SQL(
            "INSERT INTO {} VALUES (%s, %s, %s, %s) ON CONFLICT (topic, key) "
            "DO UPDATE SET row = EXCLUDED.row, position = EXCLUDED.position"
        ).format(self._rows)
        puts: list[tuple[Any, ...]] = []

        def flush() -> None:
            if puts:
                with conn.cursor() as cur:
                    cur.executemany(upsert, puts)
                puts.clear()

        for event in batch:
            for op in row_ops(event):
                if op.op == "put" and op.row is not None:
                    row = op.row
                    if UNAVAILABLE_TEXT in row.values():  # keep the values held
                        flush()
                        old = conn.execute(
                            sql.SQL("SELECT row FROM {} WHERE topic = %s AND key = %s").format(
                                self._rows
                            ),
                            (event.topic, op.key),
                        ).fetchone()
                        row = merge(None if old is None else old[0], row)
                    puts.append((event.topic, op.key, Jsonb(row), str(event.position)))
                    continue
                flush()
                if op.op == "clear":
                    conn.execute(
                        sql.SQL("DELETE FROM {} WHERE topic = %s").format(self._rows),
                        (event.topic,),
                    )
                else:
                    conn.execute(
                        sql.SQL("DELETE FROM {} WHERE topic = %s AND key = %s").format(self._rows),
                        (event.topic, op.key),
                    )
        flush()

    def rows(self, topic: str) -> dict[str, dict[str, Any]]:
        """Every row the view holds, keyed like the change events' keys."""
        from psycopg import sql

        got = self._conn.execute(
            sql.SQL("SELECT key, row FROM {} WHERE topic = %s").format(self._rows), (topic,)
        ).fetchall()
        self._conn.commit()
        return {k: r for k, r in got}

    def drop(self) -> None:
        """Drop the view's tables (to rebuild it from the log)."""
        from psycopg import sql

        self._conn.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(self._rows, self._offsets))
        self._conn.commit()

    def close(self) -> None:
        """Close the view's connection."""
        self._conn.close()
