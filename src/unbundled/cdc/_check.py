"""The CDC checker: does a connector's log hold its source's committed changes, exactly?

Three properties, each checked on the log as stored (`check_cdc`, `unbundled check cdc`):

(a) Once: no source position (``source.sequence`` = [commit, index]) appears twice
    among the connector's topics.
(b) Order: per key, log order is source commit order (positions strictly increase).
(c) State: the log replayed up to a source point L equals the source tables as of L.
    PostgreSQL: L is the consistent point of a temporary logical slot created with
    ``EXPORT_SNAPSHOT``; the tables are read in that exported snapshot, so exactly the
    transactions that commit before L are in it, with no race against live writers.
    The log is known to reach L once the connector's slot has confirmed a flush LSN at
    or past L (the connector confirms only what it stored). SQLite: L is the change
    table's last id read in the same read transaction as the tables.
    Values are compared in the text forms the change events carry: the source rows are
    read by the connector's own snapshot reader and encoded as its events are.

The source is never written, except that PostgreSQL's check creates (and drops) one
temporary slot, SQLite's re-installs the connector's triggers if the schema moved (as
its capture would), and with ``catch_up`` the connector's own producer runs. The source
rows and every position of the log are held in memory while checking.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..errors import Unavailable, UsageError
from ._change import Change, SourcePosition, encode
from ._connector import ConnectorConfig
from ._connector import get as get_connector
from ._outbox import Outbox
from ._replay import apply_event, events, key_text
from ._sink import _TOPIC_UNSAFE

if TYPE_CHECKING:
    from ..database import Database

SHOWN_MAX = 5  # keys shown per kind of difference
WAIT_S_MAX = 3600.0
_LAST_INDEX = (1 << 63) - 1  # "every change of this commit"


@dataclass(frozen=True, slots=True)
class Finding:
    """One (a) or (b) violation: the event, and the earlier one it clashes with."""

    kind: str  # "duplicate" or "out of order"
    topic: str
    partition: int
    offset: int
    key: str
    position: SourcePosition
    earlier: SourcePosition
    earlier_at: str  # topic[partition]@offset of the earlier event


@dataclass(frozen=True, slots=True)
class TableCheck:
    """(c) for one table: the source's rows as of L against the log's replay through L."""

    schema: str
    table: str
    topic: str
    source_rows: int
    log_rows: int
    missing: list[str] = field(default_factory=list)  # keys in the source only
    extra: list[str] = field(default_factory=list)  # keys in the log only
    differing: list[str] = field(default_factory=list)  # keys whose rows differ
    skipped: str | None = None  # why the table was not compared

    @property
    def ok(self) -> bool:
        """True if the table's rows in the log equal the source's."""
        return not (self.missing or self.extra or self.differing)

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready data (what ``--json`` prints)."""
        return {
            "schema": self.schema,
            "table": self.table,
            "topic": self.topic,
            "source_rows": self.source_rows,
            "log_rows": self.log_rows,
            "missing": len(self.missing),
            "extra": len(self.extra),
            "differing": len(self.differing),
            "missing_keys": self.missing[:SHOWN_MAX],
            "extra_keys": self.extra[:SHOWN_MAX],
            "differing_keys": self.differing[:SHOWN_MAX],
            "skipped": self.skipped,
            "ok": self.ok,
        }


@dataclass(frozen=True, slots=True)
class CDCCheck:
    """The result of `check_cdc`: ``passed`` is (a), (b) and (c) all holding."""

    connector: str
    topics: list[str]
    events: int
    duplicates: list[Finding]
    out_of_order: list[Finding]
    tables: list[TableCheck]
    through: SourcePosition | None  # the point L the tables were compared at
    reached: bool  # did the log reach L? (else (c) was not decided)
    elapsed_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True if no violation was found and every table compared equal."""
        return (
            not self.duplicates
            and not self.out_of_order
            and self.reached
            and all(t.ok for t in self.tables)
        )

    @property
    def verdict(self) -> str:
        """``pass``, ``violation`` or ``unknown`` (the log did not reach the source point)."""
        if self.duplicates or self.out_of_order or not all(t.ok for t in self.tables):
            return "violation"
        return "pass" if self.reached else "unknown"

    @property
    def exit_status(self) -> int:
        """The CLI's exit status: 0 pass, 1 violation, 2 unknown."""
        return {"pass": 0, "violation": 1, "unknown": 2}[self.verdict]

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready data (what ``--json`` prints)."""

        def finding(f: Finding) -> dict[str, Any]:
            return {
                "kind": f.kind,
                "at": f"{f.topic}[{f.partition}]@{f.offset}",
                "key": f.key,
                "position": str(f.position),
                "earlier": str(f.earlier),
                "earlier_at": f.earlier_at,
            }

        return {
            "connector": self.connector,
            "verdict": self.verdict,
            "topics": self.topics,
            "events": self.events,
            "duplicates": [finding(f) for f in self.duplicates],
            "out_of_order": [finding(f) for f in self.out_of_order],
            "through": None if self.through is None else str(self.through),
            "reached": self.reached,
            "tables": [t.to_json() for t in self.tables],
            "elapsed_s": round(self.elapsed_s, 3),
            "notes": self.notes,
        }


def connector_topics(db: Database, config: ConnectorConfig) -> list[str]:
    """The log's topics of this connector (``<prefix>.<schema>.<table>``)."""
    head = config.topic_prefix + "."
    return sorted(t for t in db.log.topics() if t.startswith(head))


def topic_of(config: ConnectorConfig, schema: str, table: str) -> str:
    return _TOPIC_UNSAFE.sub("_", f"{config.topic_prefix}.{schema}.{table}")


def check_log(
    db: Database, config: ConnectorConfig
) -> tuple[list[str], int, list[Finding], list[Finding]]:
    """(a) and (b): (topics, events read, duplicates, out-of-order events)."""
    topics = connector_topics(db, config)
    seen: dict[SourcePosition, str] = {}
    duplicates: list[Finding] = []
    disorder: list[Finding] = []
    count = 0
    for topic in topics:
        last: dict[tuple[int, str], tuple[SourcePosition, str]] = {}
        for event in events(db.log, topic):
            count += 1
            here = f"{topic}[{event.partition}]@{event.offset}"
            key = key_text(event.key)
            if event.position in seen:
                duplicates.append(
                    Finding(
                        "duplicate",
                        topic,
                        event.partition,
                        event.offset,
                        key,
                        event.position,
                        event.position,
                        seen[event.position],
                    )
                )
            else:
                seen[event.position] = here
            before = last.get((event.partition, key))
            if before is not None and event.position < before[0]:
                disorder.append(
                    Finding(
                        "out of order",
                        topic,
                        event.partition,
                        event.offset,
                        key,
                        event.position,
                        before[0],
                        before[1],
                    )
                )
            if before is None or event.position > before[0]:
                last[(event.partition, key)] = (event.position, here)
    return topics, count, duplicates, disorder


def compare(
    schema: str,
    table: str,
    topic: str,
    source: dict[str, dict[str, Any]],
    log: dict[str, dict[str, Any]],
) -> TableCheck:
    """(c) for one table: both sides as key_text -> JSON-ready row."""
    missing = sorted(k for k in source if k not in log)
    extra = sorted(k for k in log if k not in source)
    differing = sorted(k for k in source if k in log and source[k] != log[k])
    return TableCheck(schema, table, topic, len(source), len(log), missing, extra, differing)


def _json_ready(change: Change) -> tuple[str, dict[str, Any]]:
    """A snapshot row as the log holds it: key and row through the events' JSON encoding."""
    row = json.loads(encode(change.envelope("check", 0)["after"]))
    return key_text(json.loads(encode(change.key_json()))), row


@dataclass
class _SourceState:
    through: SourcePosition
    tables: dict[tuple[str, str], dict[str, dict[str, Any]]]
    keyless: set[tuple[str, str]]
    reached: Callable[[], bool]  # has the connector stored every change through L?


def _collect(state: _SourceState, rows: Iterator[Change]) -> None:
    for change in rows:
        if change.op != "r":
            continue
        table = (change.schema, change.table)
        if change.key is None:
            state.keyless.add(table)
            continue
        key, row = _json_ready(change)
        state.tables.setdefault(table, {})[key] = row


def _pg_state(config: ConnectorConfig) -> _SourceState:
    import uuid

    from . import _pg_admin as admin
    from ._pg_snapshot import SnapshotReader

    tables = admin.tables_of(config.source, config.tables)
    slot = f"unbundled_check_{uuid.uuid4().hex[:12]}"
    try:
        import psycopg2
        import psycopg2.extras
    except ImportError as exc:  # pragma: no cover - the extra is part of dev
        raise UsageError(
            "checking a PostgreSQL source needs: pip install 'unbundled[cdc]'"
        ) from exc
    try:
        rconn = psycopg2.connect(
            config.source,
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            options=admin.SESSION_OPTIONS,
            connect_timeout=10,
        )
    except psycopg2.OperationalError as exc:
        raise Unavailable(f"cannot open a replication connection to the source: {exc}") from exc
    try:
        cur = rconn.cursor()
        # TEMPORARY: the server drops it when this connection ends, whatever happens to us.
        cur.execute(f'CREATE_REPLICATION_SLOT "{slot}" TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT')
        created = cur.fetchone()
        assert created is not None
        _, point_text, snapshot_name, _ = created
        point = admin.lsn_int(point_text)
        assert point is not None
        reader = SnapshotReader(config.source, snapshot_name, tables, position=point - 1, db="")
        state = _SourceState(SourcePosition(point - 1, _LAST_INDEX), {}, set(), lambda: False)
        try:
            reader.start()
            _collect(state, _drain(reader))
        finally:
            reader.close()
    finally:
        rconn.close()
    for table in tables:
        state.tables.setdefault(table, {})

    def reached() -> bool:
        info = admin.slot_info(config.source, config.name)
        return bool(info and info.confirmed_flush_lsn and info.confirmed_flush_lsn >= point)

    state.reached = reached
    return state


def _drain(reader: Any) -> Iterator[Change]:
    while True:
        batch = reader.read(2000)
        yield from batch
        if not batch:
            return


def _sqlite_state(db: Database, config: ConnectorConfig) -> _SourceState:
    import sqlite3

    from ._connector import _sqlite_path
    from ._sink import LogSink
    from ._sqlite_source import SqliteSource
    from ._sqlite_sql import CHANGES

    path = _sqlite_path(config.source)
    with SqliteSource(path, name=config.name, tables=config.tables) as source:
        at, rows = source.snapshot()
        state = _SourceState(SourcePosition(at.commit, _LAST_INDEX), {}, set(), lambda: False)
        _collect(state, rows)
    sink = LogSink(db, config.name, prefix=config.topic_prefix)

    def reached() -> bool:
        # Change rows are pruned only once stored: none left at or before L (other than
        # the stored position's own) means the log holds everything through L.
        stored = sink.reload()
        conn = sqlite3.connect(path)
        try:
            row = conn.execute(
                f"SELECT max(id) FROM {CHANGES} WHERE connector = ? AND id <= ?",
                (config.name, at.commit),
            ).fetchone()
        finally:
            conn.close()
        return row[0] is None or (stored is not None and stored.commit >= row[0])

    state.reached = reached
    return state


def check_cdc(
    db: Database,
    name: str,
    *,
    state: bool = True,
    catch_up: bool = False,
    wait_s: float = 10.0,
) -> CDCCheck:
    """Check connector ``name``'s log: (a) and (b), and with ``state`` also (c).

    ``catch_up`` runs the connector's producer until the log reaches L (no other runner
    may be attached); otherwise a runner elsewhere must bring it there within ``wait_s``
    seconds, or the result is "unknown" (``reached`` False). Raises NotFound for an
    unknown connector, Unavailable if the source cannot be reached.
    """
    if not 0.0 <= float(wait_s) <= WAIT_S_MAX:
        raise UsageError(f"wait_s {wait_s!r} must be between 0 and {WAIT_S_MAX:g}")
    started = time.monotonic()
    config = get_connector(db, name)
    notes: list[str] = []
    checks: list[TableCheck] = []
    through: SourcePosition | None = None
    reached = True
    if state:
        source = _pg_state(config) if config.kind == "postgresql" else _sqlite_state(db, config)
        through = source.through
        reached = _reach(db, config, source.reached, catch_up=catch_up, wait_s=wait_s)
        if not reached:
            notes.append(
                f"the log did not reach the source point {through.commit} within {wait_s:g} s: "
                "(c) not decided (run the connector, or use --catch-up)"
            )
    topics, count, duplicates, disorder = check_log(db, config)
    if state and reached:
        assert through is not None
        for (schema, table), rows in sorted(source.tables.items()):
            topic = topic_of(config, schema, table)
            if Outbox(config.outbox or ()).holds_table(schema, table):
                checks.append(
                    TableCheck(schema, table, topic, 0, 0, skipped="an outbox: routed, not kept")
                )
                continue
            if (schema, table) in source.keyless:
                checks.append(
                    TableCheck(schema, table, topic, 0, 0, skipped="no primary key: not compared")
                )
                continue
            log_rows = _replay(db, topic, through)
            checks.append(compare(schema, table, topic, rows, log_rows))
    return CDCCheck(
        name,
        topics,
        count,
        duplicates,
        disorder,
        checks,
        through,
        reached,
        time.monotonic() - started,
        notes,
    )


def _replay(db: Database, topic: str, through: SourcePosition) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    if topic not in db.log.topics():
        return rows
    for event in events(db.log, topic):
        if event.position <= through:
            apply_event(rows, event)
    return rows


def _reach(
    db: Database,
    config: ConnectorConfig,
    reached: Callable[[], bool],
    *,
    catch_up: bool,
    wait_s: float,
) -> bool:
    deadline = time.monotonic() + wait_s
    if reached():
        return True
    if not catch_up:
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if reached():
                return True
        return False
    from ._runner import CDCProducer

    # Frequent heartbeats: the slot confirms past L soon even with no write after L.
    fast = replace(config, heartbeat_s=min(config.heartbeat_s, 0.2))
    with CDCProducer(db, fast) as producer:
        while True:
            producer.step(0.2)
            if reached():
                return True
            if time.monotonic() >= deadline:
                return False
