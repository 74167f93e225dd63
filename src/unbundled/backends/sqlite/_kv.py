"""The key-value store in the SQLite backend (table ``kv``, format version 4).

Why every operation is linearizable (docs/explanation/consistency.md
has the long form):

* A change (write, compare-and-set, delete) runs inside the group-commit
  writer's transaction (``_call``): it reads the key's row, decides with
  ``consistency.kv._core`` and writes, all under SQLite's one write lock
  (``BEGIN IMMEDIATE``, which also serialises the writers of other
  processes on the same file). The caller is woken only after ``COMMIT``
  returned, so the change became visible — its linearization point — at
  the commit, between the call and the return.
* A read is one ``SELECT`` on this thread's reader connection, outside any
  explicit transaction: SQLite starts a read transaction for it, which in
  WAL mode sees the last transaction committed before it started (the
  wal-index's commit mark), and ends it when the statement finishes
  (``fetchall``). So a read sees every change that returned before the read
  was called, and its linearization point is the start of its snapshot.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from ...consistency.kv import _core
from ...consistency.kv._protocol import Expect, Versioned
from ._integrity import corrupt, row_crc
from ._log_stage import Stage

_SELECT = "SELECT key, value, version, crc FROM kv WHERE key = ?"
_UPSERT = (
    "INSERT INTO kv(key, value, version, crc) VALUES (?, ?, ?, ?) ON CONFLICT(key) "
    "DO UPDATE SET value = excluded.value, version = excluded.version, crc = excluded.crc"
)


def _slot(conn: sqlite3.Connection, path: str, key: str) -> _core.Slot | None:
    """The key's value (None: deleted) and version, its row's crc verified."""
    rows = conn.execute(_SELECT, (key,)).fetchall()
    if not rows:
        return None
    found, value, version, crc = rows[0]
    # The crc covers the key: a damaged index entry that led to another row fails it.
    if crc != row_crc("kv", key, value, version) or found != key:
        raise corrupt(path, f"the entry of key {key!r} failed its checksum", key=key)
    return value, version


def _put(conn: sqlite3.Connection, key: str, value: bytes | None, version: int) -> None:
    conn.execute(_UPSERT, (key, value, version, row_crc("kv", key, value, version)))


class SqliteKV:
    """The key-value methods of :class:`unbundled.backends.SqliteBackend`."""

    path: str
    _reading: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _call: Callable[[Callable[[sqlite3.Connection, Stage], Any]], Any]

    def kv_read(self, key: str) -> Versioned | None:
        with self._reading() as conn:
            # fetchall() steps the statement to its end, which ends the
            # implicit read transaction: the next read takes a fresh snapshot.
            slot = _slot(conn, self.path, key)
        if slot is None or slot[0] is None:
            return None
        return Versioned(slot[0], slot[1])

    def kv_write(self, key: str, value: bytes) -> int:
        def write(conn: sqlite3.Connection, stage: Stage) -> int:
            version = _core.next_version(_slot(conn, self.path, key))
            _put(conn, key, value, version)
            return version

        result: int = self._call(write)
        return result

    def kv_compare_and_set(self, key: str, expected: Expect, new: bytes) -> int | None:
        def swap(conn: sqlite3.Connection, stage: Stage) -> int | None:
            slot = _slot(conn, self.path, key)
            if not _core.matches(slot, expected):
                return None
            version = _core.next_version(slot)
            _put(conn, key, new, version)
            return version

        result: int | None = self._call(swap)
        return result

    def kv_delete(self, key: str) -> bool:
        def delete(conn: sqlite3.Connection, stage: Stage) -> bool:
            slot = _slot(conn, self.path, key)
            if slot is None or slot[0] is None:
                return False
            _put(conn, key, None, _core.next_version(slot))  # a tombstone keeps the version
            return True

        result: bool = self._call(delete)
        return result
