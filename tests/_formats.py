"""Files of older SQLite format versions, for the tests of their upgrade.

:func:`downgrade` turns a file written by this unbundled into the file an
older version would have written with the same data: the tables and columns
added since are removed, and the header and ``meta`` say the older version
(a file whose two copies of the version disagree is damaged, not old).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from unbundled.backends.sqlite import _schema

# Tables each format version added, newest first.
_ADDED = {
    5: ("removed_ranges", "heads"),
    4: ("kv",),
    3: ("idempotency",),
    2: ("events", "streams", "snapshots", "projection_checkpoints", "documents", "subject_keys"),
}
_PARTITION_COLUMNS = "topic_id, partition, start_offset, end_offset, records, bytes"
_RECORD_COLUMNS = "offset, key, value, headers, ts, crc"


def downgrade(path: Path, version: int) -> None:
    """Make the (closed, checkpointed) file at ``path`` a format-``version`` file."""
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("BEGIN")
        if version < 5:
            for table in _schema.CRC_COLUMNS:
                if raw.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
                    raw.execute(f"ALTER TABLE {table} DROP COLUMN crc")
            raw.execute("ALTER TABLE topics DROP COLUMN records_format")
            tables = raw.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'log_[0-9]*'"
            ).fetchall()
            for (table,) in tables:  # records tables without the `ts_high` column
                keyed = raw.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = ?", (f"{table}_key",)
                ).fetchone()
                raw.execute(f"CREATE TABLE old AS SELECT {_RECORD_COLUMNS} FROM {table}")
                raw.execute(f"DROP TABLE {table}")
                raw.execute(
                    f"CREATE TABLE {table}(offset INTEGER PRIMARY KEY, key BLOB, value BLOB, "
                    "headers BLOB, ts INTEGER NOT NULL, crc INTEGER NOT NULL)"
                )
                raw.execute(f"INSERT INTO {table} SELECT {_RECORD_COLUMNS} FROM old")
                raw.execute("DROP TABLE old")
                if keyed:
                    raw.execute(f"CREATE INDEX {table}_key ON {table}(key)")
            # Version 4's partitions table, without the checksum column.
            raw.execute(f"CREATE TABLE old AS SELECT {_PARTITION_COLUMNS} FROM partitions")
            raw.execute("DROP TABLE partitions")
            raw.execute(next(ddl for ddl in _schema.SCHEMA.split(";") if "partitions(" in ddl))
            raw.execute(f"INSERT INTO partitions SELECT {_PARTITION_COLUMNS} FROM old")
            raw.execute("DROP TABLE old")
            raw.execute("DELETE FROM meta WHERE key = 'format_version'")
            raw.execute("ALTER TABLE group_members DROP COLUMN instance_id")
        for added, names in _ADDED.items():
            if version < added:
                for name in names:
                    raw.execute(f"DROP TABLE {name}")
        raw.execute(f"PRAGMA user_version = {version}")
        raw.execute("COMMIT")
    finally:
        raw.close()
