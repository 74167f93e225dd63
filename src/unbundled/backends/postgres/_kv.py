"""The key-value store on PostgreSQL (table ``kv``): one statement per operation.

Each operation is one autocommit statement on the primary, so it is atomic
and takes effect at one instant inside the call:

* ``kv_write`` is ``INSERT ... ON CONFLICT DO UPDATE SET version = version + 1``,
  which PostgreSQL guarantees to end in exactly one of insert or update,
  with the row locked: concurrent writes of one key queue on the row.
* ``kv_compare_and_set`` is a conditional ``UPDATE ... WHERE key = ... AND
  version = ...`` (or ``AND value = ...``). At read committed, an UPDATE
  that finds its row changed by a transaction that committed while it
  waited for the row lock evaluates its WHERE again on the newest version
  of the row (the "EvalPlanQual" recheck), so the comparison and the write
  are one step on the latest state; a key expected absent is an ``INSERT
  ... ON CONFLICT DO UPDATE ... WHERE value IS NULL`` (a tombstone may be
  revived, a live key may not).
* ``kv_read`` is a ``SELECT``, whose snapshot holds every transaction that
  committed before the statement began.

A change's linearization point is the moment its commit became visible
(before the server answered); a read's, the moment it took its snapshot.
This holds for clients of one primary. A read served by an asynchronous
replica may be stale (the replica replays the primary's WAL late): this
backend never reads from one, and a URL naming a replica gets no guarantee.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

from ...consistency.kv._protocol import Expect, Versioned
from ._schema import Conn


class _KvSql:
    """The statements of one schema."""

    def __init__(self, schema: str) -> None:
        t = f'"{schema}".kv'
        self.read = f"SELECT value, version FROM {t} WHERE key = %(key)s"
        self.write = (
            f"INSERT INTO {t} AS t (key, value, version) VALUES (%(key)s, %(new)s, 1) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = t.version + 1 "
            "RETURNING t.version"
        )
        self.create = (
            f"INSERT INTO {t} AS t (key, value, version) VALUES (%(key)s, %(new)s, 1) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = t.version + 1 "
            "WHERE t.value IS NULL RETURNING t.version"
        )
        self.swap_version = (
            f"UPDATE {t} SET value = %(new)s, version = version + 1 "
            "WHERE key = %(key)s AND version = %(version)s AND value IS NOT NULL "
            "RETURNING version"
        )
        self.swap_value = (
            f"UPDATE {t} SET value = %(new)s, version = version + 1 "
            "WHERE key = %(key)s AND value = %(value)s RETURNING version"
        )
        self.delete = (
            f"UPDATE {t} SET value = NULL, version = version + 1 "
            "WHERE key = %(key)s AND value IS NOT NULL RETURNING version"
        )


class PostgresKV:
    """The key-value methods of :class:`unbundled.backends.postgres.PostgresBackend`."""

    schema: str
    _run: Callable[[Callable[[Conn], Any]], Any]

    @cached_property
    def _kvsql(self) -> _KvSql:
        return _KvSql(self.schema)

    def _kv_row(self, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        def one(conn: Conn) -> tuple[Any, ...] | None:
            return conn.execute(sql, params).fetchone()

        row: tuple[Any, ...] | None = self._run(one)
        return row

    def kv_read(self, key: str) -> Versioned | None:
        row = self._kv_row(self._kvsql.read, {"key": key})
        if row is None or row[0] is None:
            return None
        return Versioned(bytes(row[0]), int(row[1]))

    def kv_write(self, key: str, value: bytes) -> int:
        row = self._kv_row(self._kvsql.write, {"key": key, "new": value})
        assert row is not None  # an upsert always returns its row
        return int(row[0])

    def kv_compare_and_set(self, key: str, expected: Expect, new: bytes) -> int | None:
        params: dict[str, Any] = {"key": key, "new": new}
        if expected.version == 0 or (expected.version is None and expected.value is None):
            sql = self._kvsql.create
        elif expected.version is not None:
            sql, params["version"] = self._kvsql.swap_version, expected.version
        else:
            sql, params["value"] = self._kvsql.swap_value, expected.value
        row = self._kv_row(sql, params)
        return None if row is None else int(row[0])

    def kv_delete(self, key: str) -> bool:
        return self._kv_row(self._kvsql.delete, {"key": key}) is not None
