"""Projections on PostgreSQL: checkpoints and documents, and the projection's
own SQL, all in one transaction on one pooled connection.

``project`` locks the projection's checkpoint row (``SELECT ... FOR UPDATE``)
before checking it, so two runners of one projection in different processes
cannot both apply a batch: the second waits, then sees the moved checkpoint
and gets ``ProjectionConflict`` with nothing applied.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from ...errors import ProjectionConflict
from ...eventstore import _core
from ...eventstore._protocol import ProjectionTxn
from ._notify import Notifier
from ._schema import Conn


class _HandlerFailed(BaseException):
    """Carries a projection handler's exception past our error translation."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class _PostgresProjectionTxn:
    """Documents and SQL on the projection transaction's connection."""

    def __init__(self, conn: Conn, schema: str) -> None:
        self._conn = conn
        self._documents = f'"{schema}".documents'

    def get(self, collection: str, key: str) -> bytes | None:
        row = self._conn.execute(
            f"SELECT value FROM {self._documents} WHERE collection = %s AND key = %s",
            (collection, key),
        ).fetchone()
        return bytes(row[0]) if row is not None else None

    def put(self, collection: str, key: str, value: bytes) -> None:
        _core.check_document(collection, key, value)
        self._conn.execute(
            f"INSERT INTO {self._documents} VALUES (%s, %s, %s) "
            "ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value",
            (collection, key, value),
        )

    def delete(self, collection: str, key: str) -> None:
        self._conn.execute(
            f"DELETE FROM {self._documents} WHERE collection = %s AND key = %s", (collection, key)
        )

    def clear(self, collection: str) -> None:
        self._conn.execute(f"DELETE FROM {self._documents} WHERE collection = %s", (collection,))

    @property
    def sql(self) -> Conn:
        """The psycopg connection, inside the projection's transaction: run
        your own SQL here and it commits with the checkpoint, or not at all.
        Do not commit or roll back yourself."""
        return self._conn


class PostgresProjections:
    """Checkpoints and documents of :class:`unbundled.backends.PostgresBackend`."""

    schema: str
    channel: str
    _where: str
    _notifier: Notifier
    _handling: threading.local
    _run: Callable[[Callable[[Conn], Any]], Any]
    _rows: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]

    def _lock_checkpoint(self, conn: Conn, name: str) -> int:
        table = f'"{self.schema}".projection_checkpoints'
        conn.execute(
            f"INSERT INTO {table} VALUES (%s, 0) ON CONFLICT DO NOTHING", (name,)
        )  # a new projection starts at 0; rolled back with the rest if nothing commits
        row = conn.execute(
            f"SELECT position FROM {table} WHERE name = %s FOR UPDATE", (name,)
        ).fetchone()
        assert row is not None
        return int(row[0])

    def project(
        self,
        name: str,
        expected_checkpoint: int,
        new_checkpoint: int,
        apply: Callable[[ProjectionTxn], None],
    ) -> None:
        def run(conn: Conn) -> None:
            with conn.transaction():
                current = self._lock_checkpoint(conn, name)
                if current != expected_checkpoint:
                    raise ProjectionConflict(
                        f"projection {name!r} is at {current}, not {expected_checkpoint}: "
                        "another runner moved it",
                        projection=name,
                        expected=expected_checkpoint,
                        actual=current,
                    )
                self._apply(conn, name, apply)
                conn.execute(
                    f'UPDATE "{self.schema}".projection_checkpoints SET position = %s '
                    "WHERE name = %s",
                    (new_checkpoint, name),
                )

        self._run_handler(run)

    def _apply(self, conn: Conn, name: str, apply: Callable[[ProjectionTxn], None]) -> None:
        self._handling.name = name
        try:
            apply(_PostgresProjectionTxn(conn, self.schema))
        except Exception as exc:
            # Roll back, and hand the handler's error back as it is:
            # a psycopg error from its own SQL is not ours to translate.
            raise _HandlerFailed(exc) from exc
        finally:
            self._handling.name = None

    def _run_handler(self, run: Callable[[Conn], None]) -> None:
        """``run`` on a pooled connection; a handler's error comes out as it was raised."""
        try:
            self._run(run)
            return
        except _HandlerFailed as failed:
            error = failed.error
        raise error  # outside the except block: its own cause and context stay as they were

    def checkpoints(self) -> dict[str, int]:
        rows = self._rows(f'SELECT name, position FROM "{self.schema}".projection_checkpoints', ())
        return {str(name): int(position) for name, position in rows}

    def reset_projection(
        self,
        name: str,
        collections: Sequence[str],
        apply: Callable[[ProjectionTxn], None] | None = None,
    ) -> None:
        def reset(conn: Conn) -> None:
            with conn.transaction():
                self._lock_checkpoint(conn, name)
                conn.execute(
                    f'DELETE FROM "{self.schema}".documents WHERE collection = ANY(%s::text[])',
                    (list(collections),),
                )
                if apply is not None:
                    self._apply(conn, name, apply)
                conn.execute(
                    f'UPDATE "{self.schema}".projection_checkpoints SET position = 0 '
                    "WHERE name = %s",
                    (name,),
                )
                # Runners waiting for events in other processes: start over.
                conn.execute("SELECT pg_notify(%s, 'reset')", (self.channel,))

        self._run_handler(reset)
        self._notifier.bump()

    def get_document(self, collection: str, key: str) -> bytes | None:
        rows = self._rows(
            f'SELECT value FROM "{self.schema}".documents WHERE collection = %s AND key = %s',
            (collection, key),
        )
        return bytes(rows[0][0]) if rows else None

    def list_documents(self, collection: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        rows = self._rows(
            f'SELECT key, value FROM "{self.schema}".documents WHERE collection = %s '
            "AND key > %s ORDER BY key LIMIT %s",
            (collection, after, limit),
        )
        return [(str(k), bytes(v)) for k, v in rows]
