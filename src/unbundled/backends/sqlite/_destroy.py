"""Destroy a SQLite store: delete its file and the files SQLite keeps beside it.

1. Open the file in ``locking_mode = EXCLUSIVE`` with no busy wait, and take
   its write lock. In WAL mode every open connection holds a shared lock on
   the file for as long as it is open, so the lock is refused while any
   process (this one included) still has the store open: ``UsageError``.
   From here on no one else can open it until we are done.
2. Check it is ours: unbundled's application id, and no table that is not
   unbundled's (your own tables, written with ``tx.sql``, are not ours to
   delete).
3. Switch the journal mode to ``DELETE``: SQLite checkpoints the WAL into the
   file and removes it, so at every later step the remaining files are a
   complete store or nothing (a WAL left beside a deleted file could be
   replayed into a new file created at the same path).
4. Delete ``-wal``, ``-shm``, ``-journal``, then the file; then close.
"""

from __future__ import annotations

import os
import re
import sqlite3

from ...errors import NotFound, UsageError
from .._report import DestroyReport
from ._errors import translated
from ._schema import (
    APPLICATION_ID,
    EVENTS_SCHEMA,
    IDEMPOTENCY_SCHEMA,
    INTEGRITY_SCHEMA,
    KV_SCHEMA,
    SCHEMA,
)
from ._url import sqlite_path

# Every table a version of the format creates; a partition's records table
# (``log_<topic id>_<partition>``) and SQLite's own (``sqlite_sequence``,
# ``sqlite_stat1``) are ours too.
OUR_TABLES = frozenset(
    re.findall(
        r"CREATE TABLE (\w+)",
        SCHEMA + EVENTS_SCHEMA + IDEMPOTENCY_SCHEMA + KV_SCHEMA + INTEGRITY_SCHEMA,
    )
)
_OURS = re.compile(r"log_\d+_\d+|sqlite_\w+")
SIDE_FILES = ("-wal", "-shm", "-journal")


def _not_sqlite(exc: sqlite3.DatabaseError, path: str) -> UsageError | None:
    """The refusal for a file that is not SQLite at all; None for other errors."""
    text = str(exc).lower()
    if "not a database" not in text and "malformed" not in text:
        return None
    return UsageError(f"refusing to destroy {path!r}: it is not an SQLite database", path=path)


def _lock(conn: sqlite3.Connection, path: str) -> None:
    """Take and keep the file's write lock; ``UsageError`` if it is open elsewhere."""
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    try:
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        refusal = _not_sqlite(exc, path)
        if refusal is not None:
            raise refusal from None
        if "locked" not in str(exc).lower() and "busy" not in str(exc).lower():
            raise
        raise UsageError(
            f"refusing to destroy {path!r}: the store is open (in this or another process); "
            "close it first",
            path=path,
        ) from None


def _check_ours(conn: sqlite3.Connection, path: str) -> None:
    """``UsageError`` unless the file is unbundled's and holds only our tables."""
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    if app_id != APPLICATION_ID:
        raise UsageError(
            f"refusing to destroy {path!r}: it is not an unbundled store "
            f"(application id {app_id:#x})",
            path=path,
        )
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    tables = [str(row[0]) for row in rows]
    foreign = [t for t in tables if t not in OUR_TABLES and not _OURS.fullmatch(t)]
    if foreign:
        raise UsageError(
            f"refusing to destroy {path!r}: it also holds tables that are not unbundled's "
            f"({', '.join(foreign)}); drop them first, or delete the file yourself",
            path=path,
            tables=foreign,
        )


def destroy(url: str, *, dry_run: bool) -> DestroyReport:
    """Delete the store's file and its side files (see the module docstring)."""
    path = sqlite_path(url)
    if not os.path.isfile(path):
        raise NotFound(f"no SQLite store at {path!r}: nothing to destroy", path=path)
    files = [p for p in (path, *(path + s for s in SIDE_FILES)) if os.path.exists(p)]
    items = tuple(f"file {p} ({os.path.getsize(p):,} bytes)" for p in files)
    with translated(path):
        conn = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            _lock(conn, path)
            _check_ours(conn, path)
            if not dry_run:
                conn.execute("PRAGMA journal_mode = DELETE").fetchone()
                for name in (*(path + s for s in SIDE_FILES), path):
                    if os.path.exists(name):
                        os.unlink(name)
        finally:
            conn.close()
    return DestroyReport("sqlite", url, path, f"the SQLite store {path!r}", items, dry_run)
