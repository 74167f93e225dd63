"""Incremental snapshots: the durable request queue and the per-table progress.

A request (``cdc snapshot NAME TABLE``, `request_snapshot`, or a row inserted into the
connector's signal table) appends one entry per table to the KV key
``cdc/<name>/incremental``: ``{"next_seq": n, "queue": [{"seq", "table", "signal"}]}``.
Only requesters write that key (compare-and-set, so two requests never lose one another).

The runner writes only ``cdc/<name>/incremental/progress``: ``{"seq", "last_key", "rows",
"chunks"}``, the table being read (entries with a smaller seq are done), the last
primary key stored (as text, one string per key column) and the rows stored so far. It is
written in the same transaction as the chunk's rows (`LogSink.write(kv=...)`), so a crash
resumes after the last stored chunk, never from the table's first row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConflictError, NotFound, NotSupported, UsageError
from ._sink import progress_key, request_key

if TYPE_CHECKING:
    from ..database import Database
    from ._change import Change

__all__ = ["progress_key", "request_key"]  # re-exported: callers find the keys here
QUEUE_MAX = 1000  # tables waiting at once: a request beyond it is refused
SIGNAL_SNAPSHOT = "execute-snapshot"


class Connector(Protocol):
    """What a request needs of a `ConnectorConfig` (not imported: `_connector` reaches
    this module through the sources, and the package keeps no import cycle)."""

    @property
    def name(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def kind(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Task:
    """The table an incremental snapshot reads now, and where it stopped."""

    seq: int
    schema: str
    table: str
    last_key: list[str] | None  # None: from the first row
    rows: int
    chunks: int

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True, slots=True)
class ChunkDone:
    """What one chunk did: store `progress_value` with its rows (or alone if none)."""

    task: Task
    last_key: list[str] | None  # the chunk's greatest key (None: the table is exhausted)
    emitted: int  # rows emitted (the chunk's rows minus keys the stream changed meanwhile)

    def next_progress(self) -> dict[str, Any]:
        task = self.task
        if self.last_key is None:  # the table is done: go on with the next entry
            return {"seq": task.seq + 1, "last_key": None, "rows": 0, "chunks": 0}
        return {
            "seq": task.seq,
            "last_key": self.last_key,
            "rows": task.rows + self.emitted,
            "chunks": task.chunks + 1,
        }


def _split(table: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    return schema or "public", name


def read_requests(db: Database, name: str) -> tuple[dict[str, Any], int]:
    got = db.kv.read(request_key(name))
    if got is None:
        return {"next_seq": 0, "queue": []}, 0
    return json.loads(got.value), got.version


def read_progress(db: Database, name: str) -> dict[str, Any]:
    got = db.kv.read(progress_key(name))
    if got is None:
        return {"seq": 0, "last_key": None, "rows": 0, "chunks": 0}
    return dict(json.loads(got.value))


def current_task(db: Database, name: str) -> Task | None:
    """The first requested table not yet done, with its stored progress."""
    requests, _ = read_requests(db, name)
    progress = read_progress(db, name)
    for entry in requests["queue"]:
        if entry["seq"] < progress["seq"]:
            continue
        schema, table = _split(entry["table"])
        if entry["seq"] == progress["seq"]:
            return Task(
                entry["seq"],
                schema,
                table,
                progress["last_key"],
                progress["rows"],
                progress["chunks"],
            )
        return Task(entry["seq"], schema, table, None, 0, 0)
    return None


def _check_tables(config: Connector, tables: Sequence[str]) -> list[str]:
    """Full names of the tables, each captured by the connector and with a primary key."""
    if config.kind != "postgresql":
        raise NotSupported(
            f"incremental snapshots need a PostgreSQL source; connector {config.name!r} "
            f"reads {config.kind}"
        )
    if not tables:
        raise UsageError("name at least one table to snapshot")
    from . import _pg_admin as admin

    captured = admin.published_tables(config.source, config.name)
    keyed = admin.primary_keys(config.source, config.name)
    out = []
    for name in tables:
        wanted = _split(name)
        if wanted not in captured:
            known = admin.tables_of(config.source, None)
            if wanted not in known:
                raise NotFound(f"table {name!r} is not in the CDC source")
            raise UsageError(
                f"table {name!r} is not captured by connector {config.name!r}: "
                "add it to the connector's tables first"
            )
        if wanted not in keyed:
            raise NotSupported(
                f"table {name!r} has no primary key: an incremental snapshot reads by key"
            )
        out.append(f"{wanted[0]}.{wanted[1]}")
    return out


def request_snapshot(
    db: Database, config: Connector, tables: Sequence[str], *, signal: str | None = None
) -> list[int]:
    """Queue an incremental snapshot of ``tables``; returns their sequence numbers.

    A request carrying a ``signal`` id that is already queued is not queued again (a
    signal row replayed after a restart). Raises ``NotFound`` (no such table),
    ``UsageError`` (not captured), ``NotSupported`` (no primary key, or not PostgreSQL).
    """
    names = _check_tables(config, tables)
    for _ in range(100):
        requests, version = read_requests(db, config.name)
        progress = read_progress(db, config.name)
        # Entries already done are dropped here, so the key stays small.
        queue = [e for e in requests["queue"] if e["seq"] >= progress["seq"]]
        if signal is not None:
            same = [e["seq"] for e in requests["queue"] if e.get("signal") == signal]
            if same:
                return same
        if len(queue) + len(names) > QUEUE_MAX:
            raise UsageError(
                f"{len(queue)} tables wait for an incremental snapshot already "
                f"(at most {QUEUE_MAX}); let them finish first"
            )
        seqs = []
        for table in names:
            seq = requests["next_seq"]
            requests["next_seq"] = seq + 1
            queue.append({"seq": seq, "table": table, "signal": signal})
            seqs.append(seq)
        requests["queue"] = queue
        tx = db.transaction()
        tx.kv.compare_and_set(
            request_key(config.name),
            new=json.dumps(requests).encode(),
            expected_version=version,
        )
        try:
            tx.commit()
        except ConflictError:
            continue  # another request came in between: read again
        return seqs
    raise ConflictError("the incremental snapshot queue kept changing; try again")


def status(db: Database, name: str) -> dict[str, Any] | None:
    """The table being read (rows and chunks stored) and the tables waiting, or None."""
    task = current_task(db, name)
    if task is None:
        return None
    requests, _ = read_requests(db, name)
    waiting = [e["table"] for e in requests["queue"] if e["seq"] > task.seq]
    return {"table": task.name, "rows": task.rows, "chunks": task.chunks, "waiting": waiting}


def signal_tables(change: Change, signal_table: str | None) -> tuple[str, list[str]] | None:
    """(signal id, tables) if ``change`` inserts an execute-snapshot row into the signal
    table (Debezium's layout: id, type, data = {"data-collections": [...]}), else None.
    Malformed data gives no tables. The id holds the change's position, which a replay
    repeats, so a replayed signal is recognised."""
    if signal_table is None or change.op != "c" or change.after is None:
        return None
    if (change.schema, change.table) != _split(signal_table):
        return None
    row = change.after
    if row.get("type") != SIGNAL_SNAPSHOT:
        return None
    try:
        data = json.loads(row.get("data") or "{}")
        tables = [str(t) for t in data["data-collections"]]
    except (ValueError, KeyError, TypeError):
        # A malformed signal must not stop capture (it would fail again at every replay):
        # the runner skips it, and the row stays in the log for whoever looks.
        return f"{row.get('id')}@{change.position}", []
    return f"{row.get('id')}@{change.position}", tables
