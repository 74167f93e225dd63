"""Opening a database file read-only (``sqlite:///path.db?mode=ro``).

For programs and commands that only read: nothing is created, migrated or
written, and it works where writing cannot, on a read-only file system or
mount. The file is in WAL mode, and reading a WAL database needs its
``-shm`` index, which SQLite creates next to the file:

1. If the file and its directory are writable, connections are the usual
   ones with ``PRAGMA query_only`` (SQLite may create the index, and removes
   it on close, as for any reader).
2. Otherwise ``mode=ro``: SQLite reads the index if it exists (a writer is
   active, or the last one did not close cleanly).
3. If that cannot open the file and the file system is read-only, the file
   is opened ``immutable``: no process can be changing it, and with no
   ``-wal`` file beside it everything committed is in the file itself. With
   a ``-wal`` file left there (an unclean shutdown) that would ignore
   committed data, so it is refused instead: a clear error, never a stale read.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from urllib.parse import quote

from ...errors import BackendError, CorruptionError, NotFound, NotSupported, UsageError
from ._errors import translated
from ._schema import FORMAT_VERSION, READABLE_FROM, check_existing, connect, read_header

Connector = Callable[[], sqlite3.Connection]


def read_only_connector(path: str, sync: str) -> Connector:
    """How to open each read-only connection to ``path`` (see the module's steps)."""
    if not os.path.isfile(path):
        raise NotFound(f"no database at {path!r}", path=path)
    directory = os.path.dirname(path) or "."
    if os.access(path, os.W_OK) and os.access(directory, os.W_OK):
        return lambda: connect(path, sync, readonly=True)
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    try:
        _probe(uri)
    except sqlite3.OperationalError as exc:
        if not _on_read_only_file_system(directory):
            raise BackendError(
                f"{path}: cannot open it read-only: {exc} (its -shm index cannot be "
                "created here; open it once where it can be written)",
                path=path,
            ) from exc
        wal = f"{path}-wal"
        if os.path.exists(wal) and os.path.getsize(wal) > 0:
            raise BackendError(
                f"{path}: its write-ahead log ({wal}) holds commits that were never "
                "checkpointed, and on a read-only file system SQLite cannot read it; "
                "open the file once where it can be written",
                path=path,
            ) from exc
        uri = f"file:{quote(os.path.abspath(path))}?mode=ro&immutable=1"
        _probe(uri)
    return lambda: _connect_uri(uri, path)


def _probe(uri: str) -> None:
    conn = sqlite3.connect(uri, uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        conn.close()


def _connect_uri(uri: str, path: str) -> sqlite3.Connection:
    with translated(path):
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA query_only = 1")
        return conn


def _on_read_only_file_system(directory: str) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_read_only_file(conn: sqlite3.Connection, path: str) -> None:
    """What ``open_file`` checks of an existing file (ours, header sound, not
    newer than this code), without creating or migrating anything. A file of
    an older format is refused: its reads need the tables and checksums the
    upgrade adds, and the upgrade writes. ``details["upgrade"]`` says so, and
    the CLI, which chose read-only by itself, then opens it writable."""
    with translated(path):
        header = read_header(conn)
    if header.app_id == 0 and not header.tables:
        raise CorruptionError(f"{path} is not an unbundled database (it is empty)", path=path)
    check_existing(header, path)
    if header.version < READABLE_FROM:
        raise NotSupported(
            f"{path} has format version {header.version}; reading it needs the upgrade to "
            f"version {FORMAT_VERSION}, which writes: open it once without mode=ro",
            path=path,
            upgrade=True,
        )


class ReadOnlyWriter:
    """Stands in for the group-commit writer of a read-only backend: every
    write is refused before anything happens."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self._path = path
        self._extra = None
        self.transactions = 0

    def submit(self, request: object) -> None:
        raise UsageError(
            f"{self._path} was opened read-only (mode=ro): it cannot be written",
            path=self._path,
        )

    def close(self) -> None:
        """Nothing queued, nothing to finish."""


__all__ = ["ReadOnlyWriter", "check_read_only_file", "read_only_connector"]
