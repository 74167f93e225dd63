"""Connectors: a named source, its tables and its topics, kept in the log's own database.

A connector's settings live under the KV key ``cdc/<name>/config`` and the list of names
under ``cdc/connectors`` (compare-and-set, so two `cdc add` never lose one another). Its
position (`_sink`) and whether its snapshot finished (``cdc/<name>/snapshot``) sit beside
them, written in the same transactions as the records they describe.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import limits
from .._bounds import check_int
from ..backends.sqlite._url import sqlite_path
from ..errors import ConflictError, NotFound, UsageError
from . import _incremental as incremental
from ._outbox import Outbox
from ._sink import _TOPIC_UNSAFE, position_key, progress_key, request_key, snapshot_key
from ._source import Source

if TYPE_CHECKING:
    from ..database import Database

REGISTRY_KEY = "cdc/connectors"
BATCH_MAX = 10_000
HEARTBEAT_S_MAX = 3600.0
CHUNK_MAX = 100_000  # rows per chunk of an incremental snapshot


def config_key(name: str) -> str:
    return f"cdc/{name}/config"


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    """A connector's settings, checked when it is added."""

    name: str
    source: str  # postgresql://... or sqlite:///path or a path to a .db file
    tables: list[str] | None = None  # None: every table
    prefix: str = ""  # topic prefix; "" means the connector's name
    partitions: int = 1
    batch_max: int = 1000  # changes per log transaction
    heartbeat_s: float = 10.0  # PostgreSQL: a logical message this often keeps an idle slot moving
    wal_warn_bytes: int = 1 << 30  # warn when the slot keeps more WAL than this
    snapshot_chunk: int = 1024  # rows per chunk of an incremental snapshot (1..100000)
    # PostgreSQL: a table (id, type, data) whose captured 'execute-snapshot' rows request
    # incremental snapshots, as Debezium's signalling table. Captured with the tables.
    signal_table: str | None = None
    # Outbox tables (TABLE or SCHEMA.TABLE, captured with the tables): their inserted rows
    # are routed to outbox.event.<aggregatetype>, keyed by aggregateid (see _outbox).
    outbox: list[str] | None = None

    @property
    def topic_prefix(self) -> str:
        """The topics' prefix: ``prefix``, or the connector's name."""
        return self.prefix or self.name

    @property
    def kind(self) -> str:
        """``postgresql`` or ``sqlite``, from the source URL."""
        return "postgresql" if self.source.startswith(("postgresql:", "postgres:")) else "sqlite"

    def checked(self) -> ConnectorConfig:
        """This config, if every setting is in bounds; `UsageError` naming the one that is not."""
        if not self.name or len(self.name) > 100 or _TOPIC_UNSAFE.search(self.name):
            raise UsageError(
                f"connector name {self.name!r} must be 1 to 100 letters, digits, '.', '_' or '-'"
            )
        if _TOPIC_UNSAFE.search(self.topic_prefix):
            raise UsageError(f"topic prefix {self.topic_prefix!r} may only hold [A-Za-z0-9._-]")
        check_int("partitions", self.partitions, 1, limits.partitions_max)
        check_int("batch_max", self.batch_max, 1, BATCH_MAX)
        check_int("wal_warn_bytes", self.wal_warn_bytes, 1, 1 << 50)
        check_int("snapshot_chunk", self.snapshot_chunk, 1, CHUNK_MAX)
        if self.outbox is not None:
            Outbox(self.outbox)  # raises UsageError naming a bad table name
        if self.signal_table is not None and self.kind != "postgresql":
            raise UsageError(
                f"signal_table {self.signal_table!r}: signals need a PostgreSQL source"
            )
        if not 0.1 <= float(self.heartbeat_s) <= HEARTBEAT_S_MAX:
            raise UsageError(
                f"heartbeat_s {self.heartbeat_s!r} must be between 0.1 and {HEARTBEAT_S_MAX:g}"
            )
        if self.tables is not None and not self.tables:
            raise UsageError("tables is empty: name at least one table, or None for all")
        return self

    def to_json(self) -> bytes:
        """The settings as stored in the KV."""
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ConnectorConfig:
        """Settings read back from the KV."""
        return cls(**json.loads(raw))

    def source_obj(self) -> Source:
        """The capture source this connector reads."""
        tables = self.tables
        if tables is not None:  # outbox tables are captured with the others
            tables = [*tables, *(t for t in self.outbox or () if t not in tables)]
        if self.kind == "postgresql":
            from ._pg_source import PostgresSource

            if tables is not None and self.signal_table and self.signal_table not in tables:
                tables = [*tables, self.signal_table]  # its rows must come through the stream
            return PostgresSource(
                self.source,
                connector=self.name,
                tables=tables,
                heartbeat_s=self.heartbeat_s,
            )
        from ._sqlite_cdc import SqliteCapture

        return SqliteCapture(_sqlite_path(self.source), connector=self.name, tables=tables)


def _sqlite_path(source: str) -> str:
    # The URL forms every other part takes: sqlite:///relative.db, sqlite:////absolute.db.
    if source.startswith("sqlite:"):
        return sqlite_path(source)
    if "://" in source:
        raise UsageError(
            f"CDC source {source!r}: expected postgresql://... or a SQLite file (sqlite:///path)"
        )
    return str(Path(source))


def _names(db: Database) -> tuple[list[str], int]:
    got = db.kv.read(REGISTRY_KEY)
    if got is None:
        return [], 0
    return list(json.loads(got.value)), got.version


def names(db: Database) -> list[str]:
    """Every connector of this database, in the order they were added."""
    return _names(db)[0]


def get(db: Database, name: str) -> ConnectorConfig:
    """The settings of connector ``name``; `NotFound` if there is none."""
    got = db.kv.read(config_key(name))
    if got is None:
        raise NotFound(f"no CDC connector named {name!r} (see: unbundled cdc status)")
    return ConnectorConfig.from_json(got.value)


def add(db: Database, config: ConnectorConfig) -> ConnectorConfig:
    """Check the config, install capture on the source, and record the connector.

    Raises ``ConflictError`` if the name is taken (nothing is installed then).
    """
    config = config.checked()
    for _ in range(100):
        listed, version = _names(db)
        if config.name in listed:
            raise ConflictError(f"a CDC connector named {config.name!r} exists already")
        source = config.source_obj()
        try:
            source.install()
        finally:
            source.close()
        tx = db.transaction()
        tx.kv.compare_and_set(
            REGISTRY_KEY,
            new=json.dumps([*listed, config.name]).encode(),
            expected_version=version,
        )
        tx.kv.write(config_key(config.name), config.to_json())
        try:
            tx.commit()
        except ConflictError:
            continue  # another `cdc add` moved the list: read it again
        return config
    raise ConflictError("the connector list kept changing under `cdc add`; try again")


def request_snapshot(db: Database, name: str, tables: list[str]) -> list[int]:
    """Queue an incremental snapshot of ``tables`` (``schema.table``) of connector
    ``name``; its runner reads them while it streams. Returns their queue numbers.
    Raises ``NotFound`` (no such connector or table), ``UsageError`` (a table it does
    not capture) or ``NotSupported`` (no primary key; a SQLite connector)."""
    return incremental.request_snapshot(db, get(db, name), tables)


def snapshot_status(db: Database, name: str) -> dict[str, Any] | None:
    """The incremental snapshot under way (table, rows, chunks, waiting), or None."""
    get(db, name)
    return incremental.status(db, name)


def remove(db: Database, name: str) -> dict[str, Any]:
    """Drop the connector's objects on the source (slot, publication or triggers) and
    its settings here. The topics and their records stay (delete them with `topics delete`)."""
    config = get(db, name)
    source = config.source_obj()
    try:
        source.remove()
    finally:
        source.close()
    for _ in range(100):
        listed, version = _names(db)
        tx = db.transaction()
        tx.kv.compare_and_set(
            REGISTRY_KEY,
            new=json.dumps([n for n in listed if n != name]).encode(),
            expected_version=version,
        )
        keys = (config_key(name), position_key(name), snapshot_key(name))
        for key in (*keys, request_key(name), progress_key(name)):
            tx.kv.delete(key)
        try:
            tx.commit()
        except ConflictError:
            continue
        return {"removed": name, "source": config.kind}
    raise ConflictError("the connector list kept changing under `cdc remove`; try again")
