"""The SQLite file format: schema, format checks, connection setup, and the
translation of ``sqlite3`` errors into unbundled's typed errors.

See docs/reference/format.md for the on-disk format this creates.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from ...errors import BackendError, CorruptionError, Error, NotSupported, Unavailable

# 'unbd' in the SQLite header: tools like `file` and our open() recognise it.
APPLICATION_ID = 0x756E6264
FORMAT_VERSION = 5
BUSY_TIMEOUT_MS = 60_000

SYNC_PRAGMA = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}

SCHEMA = """
CREATE TABLE meta(
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE topics(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL,
    config TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE partitions(
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    records INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition)
) WITHOUT ROWID;
CREATE TABLE producers(
    producer_id TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    last_sequence INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE producer_window(
    producer_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    positions TEXT NOT NULL,
    PRIMARY KEY (producer_id, sequence)
) WITHOUT ROWID;
CREATE TABLE groups(
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE group_members(
    grp TEXT NOT NULL,
    member_id TEXT NOT NULL,
    topics TEXT NOT NULL,
    lease_ms INTEGER NOT NULL,
    lease_until_ms INTEGER NOT NULL,
    acked_generation INTEGER NOT NULL,
    PRIMARY KEY (grp, member_id)
) WITHOUT ROWID;
CREATE TABLE group_assignments(
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    owner TEXT NOT NULL,
    generation INTEGER NOT NULL,
    prev_owner TEXT,
    prev_generation INTEGER,
    PRIMARY KEY (grp, topic, partition)
) WITHOUT ROWID;
CREATE TABLE group_offsets(
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    committed_ms INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)
) WITHOUT ROWID;
"""

# Version 2: the event store. Files of version 1 are upgraded when opened.
EVENTS_SCHEMA = """
CREATE TABLE events(
    position INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    stream TEXT NOT NULL,
    version INTEGER NOT NULL,
    category TEXT NOT NULL,
    type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    data BLOB NOT NULL,
    metadata BLOB NOT NULL,
    recorded_ms INTEGER NOT NULL,
    crc INTEGER NOT NULL
);
CREATE UNIQUE INDEX events_stream ON events(stream, version);
CREATE INDEX events_category ON events(category, position);
CREATE TABLE streams(
    stream TEXT PRIMARY KEY,
    category TEXT NOT NULL,
    start_version INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    tombstoned INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX streams_category ON streams(category, stream);
CREATE TABLE snapshots(
    stream TEXT NOT NULL,
    version INTEGER NOT NULL,
    type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    data BLOB NOT NULL,
    recorded_ms INTEGER NOT NULL,
    PRIMARY KEY (stream, version)
) WITHOUT ROWID;
CREATE TABLE projection_checkpoints(
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE documents(
    collection TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (collection, key)
) WITHOUT ROWID;
CREATE TABLE subject_keys(
    subject TEXT PRIMARY KEY,
    key BLOB
) WITHOUT ROWID;
"""

# Version 3: idempotency keys.
IDEMPOTENCY_SCHEMA = """
CREATE TABLE idempotency(
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    record BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_expiry ON idempotency(expires_ms);
"""

# Version 4: the linearizable key-value store (consistency.kv). A NULL value
# is a tombstone: a deleted key keeps its version, so versions never repeat.
# A rowid table: values may be large, and WITHOUT ROWID suits small rows only.
KV_SCHEMA = """
CREATE TABLE kv(
    key TEXT PRIMARY KEY,
    value BLOB,
    version INTEGER NOT NULL
);
"""


def _add_group_instance_id(conn: sqlite3.Connection) -> None:
    """Version 5: static group membership (issue 9, item 7). The stable
    instance id a member joined with; NULL for a dynamic member (and for the
    members of an older file, which had none). Skipped if the column exists:
    a file whose version number was lowered by hand keeps its columns."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(group_members)")}
    if "instance_id" not in columns:
        conn.execute("ALTER TABLE group_members ADD COLUMN instance_id TEXT")


MIGRATIONS: dict[int, str | Callable[[sqlite3.Connection], None]] = {
    2: EVENTS_SCHEMA,
    3: IDEMPOTENCY_SCHEMA,
    4: KV_SCHEMA,
    5: _add_group_instance_id,
}

EXPECTED_TABLES = {
    "meta",
    "topics",
    "partitions",
    "producers",
    "producer_window",
    "groups",
    "group_members",
    "group_assignments",
    "group_offsets",
}


def records_table(topic_id: int, partition: int) -> str:
    """One table per partition, its rowid the offset: appends go to the end of
    one B-tree and reads are rowid range scans, as fast as SQLite gets."""
    return f"log_{int(topic_id)}_{int(partition)}"


def records_ddl(topic_id: int, partition: int, compact: bool) -> list[str]:
    table = records_table(topic_id, partition)
    ddl = [
        f"CREATE TABLE {table}("
        "offset INTEGER PRIMARY KEY, key BLOB, value BLOB, headers BLOB, "
        "ts INTEGER NOT NULL, crc INTEGER NOT NULL)"
    ]
    if compact:
        ddl.append(f"CREATE INDEX {table}_key ON {table}(key)")
    return ddl


T = TypeVar("T")


def translate(exc: sqlite3.Error, path: str) -> Error:
    """Map a ``sqlite3`` error to a typed one (the caller chains ``from exc``)."""
    text = str(exc)
    lowered = text.lower()
    if "malformed" in lowered or "not a database" in lowered or "corrupt" in lowered:
        return CorruptionError(f"{path}: the database file is damaged: {text}", path=path)
    if "locked" in lowered or "busy" in lowered:
        return Unavailable(f"{path}: the database stayed locked: {text}", path=path)
    return BackendError(f"{path}: SQLite failed: {text}", path=path)


@contextmanager
def translated(path: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise translate(exc, path) from exc


def connect(path: str, sync: str, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode, autocommit off (we issue BEGIN ourselves)."""
    with translated(path):
        conn = sqlite3.connect(
            path,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
            cached_statements=1024,
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA synchronous = {SYNC_PRAGMA[sync]}")
        if readonly:
            conn.execute("PRAGMA query_only = 1")
        return conn


def open_file(conn: sqlite3.Connection, path: str, now_ms: Callable[[], int]) -> None:
    """Check the file is ours and current, creating the schema in a new file.

    Raises ``CorruptionError`` for a file that is not SQLite or not ours (we
    never write into someone else's database) and ``NotSupported`` for a file
    written by a newer format version.
    """
    with translated(path):
        app_id, tables = _retry_busy(lambda: _read_header(conn))
        if app_id == 0 and not tables:
            _retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Re-check under the write lock: another process may have won.
                if conn.execute("PRAGMA application_id").fetchone()[0] == 0:
                    _run_script(conn, SCHEMA)
                    conn.execute(
                        "INSERT INTO meta VALUES ('format', 'unbundled'), ('created_ms', ?)",
                        (str(now_ms()),),
                    )
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute("PRAGMA user_version = 1")
                    _migrate(conn)
                conn.execute("COMMIT")
            except BaseException:
                # A signal (KeyboardInterrupt) can land before BEGIN took
                # effect or after COMMIT did: then there is nothing to roll
                # back, and the signal, not "no transaction", must propagate.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return
        if app_id != APPLICATION_ID or not tables >= EXPECTED_TABLES:
            raise CorruptionError(
                f"{path} is an SQLite database but not an unbundled one "
                f"(application_id {app_id:#x}); refusing to touch it",
                path=path,
            )
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > FORMAT_VERSION:
            raise NotSupported(
                f"{path} has format version {version}; this unbundled reads up to "
                f"{FORMAT_VERSION}: upgrade unbundled",
                path=path,
            )
        mode = _retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())[0]
        if mode != "wal":
            raise BackendError(f"{path}: could not switch to WAL mode (got {mode})", path=path)
        if version < FORMAT_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                _migrate(conn)  # re-reads the version under the lock
                conn.execute("COMMIT")
            except BaseException:
                # A signal (KeyboardInterrupt) can land before BEGIN took
                # effect or after COMMIT did: then there is nothing to roll
                # back, and the signal, not "no transaction", must propagate.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # Not executescript(): it would COMMIT the transaction we are in.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the file up to FORMAT_VERSION, one step at a time (inside a write
    transaction, so another process never sees half a migration)."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    for target in range(version + 1, FORMAT_VERSION + 1):
        step = MIGRATIONS[target]
        if callable(step):
            step(conn)
        else:
            _run_script(conn, step)
        conn.execute(f"PRAGMA user_version = {target}")


def _read_header(conn: sqlite3.Connection) -> tuple[int, set[str]]:
    """The application id and table names, from one snapshot: read apart, a
    process creating the file in between would make it look foreign."""
    conn.execute("BEGIN")
    try:
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    finally:
        conn.execute("COMMIT")
    return app_id, tables


def _retry_busy(step: Callable[[], T]) -> T:
    """Run ``step``, retrying while the file is locked. SQLite answers some
    lock conflicts at once without calling the busy handler, e.g. while other
    connections switch a new file to WAL, so ``busy_timeout`` alone does not
    let several processes open a new file at the same moment."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause_s = 0.001
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
        time.sleep(pause_s)
        pause_s = min(pause_s * 2, 0.05)
