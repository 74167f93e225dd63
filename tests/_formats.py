"""Files of older SQLite format versions, for the tests of their upgrade.

:func:`downgrade` turns a file written by this unbundled into the file an
older version would have written with the same data: the tables and columns
added since are removed, and the header and ``meta`` say the older version
(a file whose two copies of the version disagree is damaged, not old).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from unbundled._ground import crc32
from unbundled.backends.sqlite import _log_batch, _schema
from unbundled.backends.sqlite._integrity import row_crc

# Tables each format version added, newest first.
_ADDED: dict[int, tuple[str, ...]] = {
    6: (),
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
        if version < 6:
            _unbatch(raw)
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
        if version >= 5:
            raw.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (str(version),))
        raw.execute(f"PRAGMA user_version = {version}")
        raw.execute("COMMIT")
    finally:
        raw.close()


def unbatch(path: Path) -> None:
    """Store every topic of record batches as a row per record again (format
    5, as compacted topics and files written before format 6 do)."""
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("BEGIN")
        _unbatch(raw)
        raw.execute("COMMIT")
    finally:
        raw.close()


def _unbatch(raw: sqlite3.Connection) -> None:
    topics = raw.execute(
        "SELECT id, name, partitions, config, created_ms FROM topics WHERE records_format = ?",
        (_schema.BATCHED_FORMAT,),
    ).fetchall()
    for tid, name, partitions, config, created in topics:
        for partition in range(partitions):
            table = _schema.records_table(tid, partition)
            rows = []
            for base, *_, data, _crc in raw.execute(f"SELECT * FROM {table} ORDER BY base"):
                keys, values, headers, stamps = _log_batch._decode(data)
                for i, ts in enumerate(stamps):
                    off, key, value = base + i, keys[i], values[i]
                    hblob = msgspec.msgpack.encode(headers[i]) if headers[i] else None
                    crc = crc32(hblob or b"", (off ^ ts) & 0xFFFFFFFF)
                    for part in (key, value):
                        if part is not None:
                            crc = crc32(part, crc)
                    rows.append((off, key, value, hblob, ts, crc))
            raw.execute(f"DROP TABLE {table}")
            raw.execute(_schema.records_ddl(tid, partition, compact=True)[0])
            raw.executemany(
                f"INSERT INTO {table}(offset, key, value, headers, ts, crc) VALUES (?,?,?,?,?,?)",
                rows,
            )
        fmt = _schema.ROW_FORMAT
        crc = row_crc("topics", tid, name, partitions, config, created, fmt)
        raw.execute("UPDATE topics SET records_format = ?, crc = ? WHERE id = ?", (fmt, crc, tid))
