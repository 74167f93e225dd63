"""The SQLite file format: schema, format checks and connection setup
(``sqlite3`` errors become typed ones in ``_errors``).

See docs/reference/format.md for the on-disk format this creates.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from ...errors import BackendError, CorruptionError, NotSupported
from ._errors import translated
from ._integrity import int_check_sql, rebuild_removed, row_crc

# 'unbd' in the SQLite header: tools like `file` and our open() recognise it.
APPLICATION_ID = 0x756E6264
FORMAT_VERSION = 6
# The oldest format a read-only open takes as it is: version 6 only added a
# records layout for new topics, so a version-5 file reads without the upgrade.
READABLE_FROM = 5
BUSY_TIMEOUT_MS = 60_000
_WAL_HEADER_BYTES = 32  # a WAL file this long or shorter holds no frames

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


# Version 5: integrity. Partition rows gain a checksum that SQLite computes
# (the writer updates their counters in SQL), rows written from Python gain a
# crc, and two new tables let a reader tell a damaged file from a removed
# record: the ranges compaction removed, and the last event's position.
_PARTITION_COLUMNS = ["topic_id", "partition", "start_offset", "end_offset", "records", "bytes"]
PARTITIONS_V5 = f"""
CREATE TABLE partitions(
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    records INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    checksum INTEGER GENERATED ALWAYS AS ({int_check_sql("partitions", _PARTITION_COLUMNS)}) STORED,
    PRIMARY KEY (topic_id, partition)
) WITHOUT ROWID
"""
INTEGRITY_SCHEMA = f"""
CREATE TABLE removed_ranges(
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    checksum INTEGER GENERATED ALWAYS AS ({
    int_check_sql("removed_ranges", ["topic_id", "partition", "start_offset", "end_offset"])
}) STORED,
    PRIMARY KEY (topic_id, partition, start_offset)
) WITHOUT ROWID;
CREATE TABLE heads(
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    checksum INTEGER GENERATED ALWAYS AS ({int_check_sql("heads", ["position"])}) STORED
) WITHOUT ROWID;
INSERT INTO heads(name, position) SELECT 'events', coalesce(max(position), 0) FROM events
"""
# A generated checksum is recomputed by every UPDATE: without these triggers,
# the writer's next `records = records + ?` would make a damaged row look
# sound. An update of a row whose check fails is refused (CorruptionError).
INTEGRITY_TRIGGERS = [
    f"CREATE TRIGGER {table}_unchanged BEFORE UPDATE ON {table} "
    f"WHEN OLD.checksum IS NOT ({int_check_sql(table, [f'OLD.{c}' for c in columns])}) "
    f"BEGIN SELECT RAISE(ABORT, 'unbundled: a row of {table} is corrupt'); END"
    for table, columns in (("partitions", _PARTITION_COLUMNS), ("heads", ["position"]))
]
# Tables whose rows gain a crc in version 5: their primary key, then every column.
CRC_COLUMNS = {
    "topics": ("id", "name", "partitions", "config", "created_ms", "records_format"),
    "streams": ("stream", "category", "start_version", "deleted", "tombstoned"),
    "idempotency": ("key", "state", "expires_ms", "record"),
    "kv": ("key", "value", "version"),
}


def _migrate_5(conn: sqlite3.Connection) -> None:
    """Format 4 to 5: every check computed over the rows as they are now."""
    _add_group_instance_id(conn)
    conn.execute(PARTITIONS_V5.replace("TABLE partitions", "TABLE partitions_v5"))
    conn.execute(
        "INSERT INTO partitions_v5(topic_id, partition, start_offset, end_offset, records, bytes) "
        "SELECT topic_id, partition, start_offset, end_offset, records, bytes FROM partitions"
    )
    conn.execute("DROP TABLE partitions")
    conn.execute("ALTER TABLE partitions_v5 RENAME TO partitions")
    _run_script(conn, INTEGRITY_SCHEMA)
    for trigger in INTEGRITY_TRIGGERS:  # not _run_script: a trigger's body has a ';'
        conn.execute(trigger)
    compacted = {
        tid
        for tid, config in conn.execute("SELECT id, config FROM topics")
        if msgspec.json.decode(config).get("cleanup_policy") == "compact"
    }
    for tid, partition, start, end in conn.execute(
        "SELECT topic_id, partition, start_offset, end_offset FROM partitions"
    ).fetchall():
        if tid in compacted:
            # Compaction already left gaps: they become the ledger's first ranges.
            rebuild_removed(conn, records_table(tid, partition), tid, partition, start, end)
    # Topics created before have records tables without `ts_high`.
    conn.execute("ALTER TABLE topics ADD COLUMN records_format INTEGER NOT NULL DEFAULT 4")
    for table, columns in CRC_COLUMNS.items():
        conn.execute(f"ALTER TABLE {table} ADD COLUMN crc INTEGER")
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
        conn.executemany(
            f"UPDATE {table} SET crc = ? WHERE {columns[0]} = ?",
            [(row_crc(table, *row), row[0]) for row in rows],
        )


MIGRATIONS: dict[int, str | Callable[[sqlite3.Connection], None]] = {
    2: EVENTS_SCHEMA,
    3: IDEMPOTENCY_SCHEMA,
    4: KV_SCHEMA,
    5: _migrate_5,
    # Format 6 adds record batches for topics created from now on; a topic
    # keeps the format it was created with (topics.records_format), so
    # nothing stored changes. The version moves so that an older unbundled
    # refuses the file as newer instead of failing on a batched topic.
    6: lambda conn: None,
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


# What a record's CRC leaves out: its seed takes only the low 32 bits of the
# timestamp. Tables created by format 5 keep the high half again, in a column
# SQLite computes at insert (the writer inserts the six other columns as
# before); a read selects only rows where the two agree, so a damaged one
# leaves a gap, which the read's gap check reports (see _log_read).
TS_HIGH_SQL = "ts >> 32"
# The records_format of topics created now: a ``delete`` topic stores record
# batches (6, see _log_batch), a compacted one a row per record (5; 4 is 5
# without `ts_high`).
BATCHED_FORMAT = 6
ROW_FORMAT = 5


def records_format(compact: bool) -> int:
    return ROW_FORMAT if compact else BATCHED_FORMAT


def records_ddl(topic_id: int, partition: int, compact: bool) -> list[str]:
    table = records_table(topic_id, partition)
    if not compact:
        return [
            f"CREATE TABLE {table}(base INTEGER PRIMARY KEY, last INTEGER NOT NULL, "
            "ts_max INTEGER NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL, "
            "crc INTEGER NOT NULL)"
        ]
    return [
        f"CREATE TABLE {table}("
        "offset INTEGER PRIMARY KEY, key BLOB, value BLOB, headers BLOB, "
        "ts INTEGER NOT NULL, crc INTEGER NOT NULL, "
        f"ts_high INTEGER GENERATED ALWAYS AS ({TS_HIGH_SQL}) STORED)",
        f"CREATE INDEX {table}_key ON {table}(key)",
    ]


T = TypeVar("T")


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
    """Check the file is ours, undamaged where it matters and current, creating
    the schema in a new file.

    Raises ``CorruptionError`` for a file that is not SQLite or not ours (we
    never write into someone else's database) or whose header fields we rely on
    are damaged, and ``NotSupported`` for a file written by a newer format version.
    """
    with translated(path):
        header = _retry_busy(lambda: read_header(conn))
        if header.app_id == 0 and not header.tables:
            _create(conn, now_ms)
            return
        check_existing(header, path)
        mode = _retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())[0]
        if mode != "wal":
            raise BackendError(f"{path}: could not switch to WAL mode (got {mode})", path=path)
        if header.version < FORMAT_VERSION:
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


def _create(conn: sqlite3.Connection, now_ms: Callable[[], int]) -> None:
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
        # A signal (KeyboardInterrupt) can land before BEGIN took effect or
        # after COMMIT did: then there is nothing to roll back, and the
        # signal, not "no transaction", must propagate.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def check_existing(header: Header, path: str) -> None:
    """An existing file is ours and its header is sound (what every open,
    read-only ones too, checks before reading anything)."""
    if header.app_id != APPLICATION_ID or not header.tables >= EXPECTED_TABLES:
        raise CorruptionError(
            f"{path} is an SQLite database but not an unbundled one "
            f"(application_id {header.app_id:#x}); refusing to touch it",
            path=path,
        )
    _check_header(header, path)
    _check_size(header, path)


def _check_header(header: Header, path: str) -> None:
    """The header fields and schema facts every later read relies on.

    The format version is kept twice, in the header's ``user_version`` and
    (from version 5) in ``meta``: a damaged one disagrees with the other,
    where a file written by a newer unbundled has both raised."""
    version = header.version
    recorded = header.meta_version
    if version < 1 or (recorded is not None and recorded != str(version)):
        raise CorruptionError(
            f"{path}: the format version is damaged (header says {version}, "
            f"meta says {recorded if recorded is not None else 'nothing'})",
            path=path,
            version=version,
        )
    if version >= 5 and recorded is None:
        raise CorruptionError(
            f"{path}: the format version is damaged (header says {version}, "
            "but meta does not record it)",
            path=path,
            version=version,
        )
    if version > FORMAT_VERSION:
        raise NotSupported(
            f"{path} has format version {version}; this unbundled reads up to "
            f"{FORMAT_VERSION}: upgrade unbundled",
            path=path,
        )
    if header.encoding != "UTF-8":
        raise CorruptionError(
            f"{path}: the header's text encoding is damaged ({header.encoding}, "
            "unbundled writes UTF-8)",
            path=path,
        )
    if len(set(header.roots)) != len(header.roots) or min(header.roots, default=2) < 2:
        # Two tables sharing a b-tree would read each other's rows as their own.
        raise CorruptionError(f"{path}: the schema's root pages are damaged", path=path)


def _check_size(header: Header, path: str) -> None:
    """SQLite writes whole pages, and reads a page past the end of a
    truncated file as zeros: so a file that is not a whole number of pages,
    or holds fewer than the header counts (with no WAL frames that could hold
    the rest), was cut short."""
    try:
        size = os.path.getsize(path)
    except OSError:  # not a plain file (a URI filename): nothing to compare
        return
    if size % header.page_size:
        raise CorruptionError(
            f"{path} is truncated: {size} bytes is not a whole number of "
            f"{header.page_size}-byte pages",
            path=path,
        )
    wal = f"{path}-wal"
    frames = os.path.exists(wal) and os.path.getsize(wal) > _WAL_HEADER_BYTES
    if not frames and size < header.page_count * header.page_size:
        raise CorruptionError(
            f"{path} is truncated: it holds {size // header.page_size} pages, its header "
            f"says {header.page_count}",
            path=path,
        )


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
        if isinstance(step, str):
            _run_script(conn, step)
        else:
            step(conn)
        conn.execute(f"PRAGMA user_version = {target}")
    conn.execute(
        "INSERT INTO meta VALUES ('format_version', ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (str(FORMAT_VERSION),),
    )


@dataclass(frozen=True)
class Header:
    """What opening a file checks, read in one snapshot."""

    app_id: int
    tables: set[str]
    version: int
    meta_version: str | None
    encoding: str
    roots: list[int]
    page_size: int
    page_count: int


def read_header(conn: sqlite3.Connection) -> Header:
    """The header fields and schema facts, from one snapshot: read apart, a
    process creating or upgrading the file in between would make it look
    foreign or damaged."""
    conn.execute("BEGIN")
    try:
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        tables: set[str] = set()
        roots: list[int] = []
        for kind, name, root in conn.execute("SELECT type, name, rootpage FROM sqlite_master"):
            if kind == "table":
                tables.add(name)
            if kind in ("table", "index") and root is not None:
                roots.append(root if type(root) is int else -1)
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        meta_version = None
        if "meta" in tables:
            row = conn.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()
            meta_version = None if row is None else str(row[0])
        encoding = str(conn.execute("PRAGMA encoding").fetchone()[0])
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        page_count = int(conn.execute("PRAGMA page_count").fetchone()[0])
    finally:
        conn.execute("COMMIT")
    return Header(app_id, tables, version, meta_version, encoding, roots, page_size, page_count)


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
