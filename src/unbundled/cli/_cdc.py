"""``unbundled cdc ...``: capture a database's committed changes into the log.

The connectors live in the log's own database (--db): `cdc add` records one and installs
capture on its source (a publication on PostgreSQL, triggers on SQLite), `cdc run`
streams its changes into topics ``<prefix>.<schema>.<table>`` until stopped, `cdc status`
shows where each one is, `cdc remove` drops what `add` and `run` created on the source.
`cdc snapshot` queues an incremental snapshot of tables, which a running `cdc run`
reads chunk by chunk while it streams.
"""

from __future__ import annotations

import time
from typing import Any

import click
from rich.console import Group
from rich.status import Status
from rich.table import Table

from .. import limits
from ..cdc import CDCProducer, ConnectorConfig, Progress
from ..cdc import _connector as connectors
from ..cdc import _incremental as incremental
from ..cdc._pg_admin import _redact
from ..database import Database
from ..database import open as open_database
from ._bounds import Seconds
from ._common import App, echo_json, err_console, is_terminal, out_console, pass_app
from ._signals import Interrupted


def _db(app: App, *, create: bool) -> Database:
    if not create:
        app._check_exists("add a connector first (`unbundled cdc add`)")
    db = app.opened(lambda url: open_database(url, sync=app.sync))
    click.get_current_context().call_on_close(db.close)
    return db


@click.group()
def cdc() -> None:
    """Change data capture: a database's committed changes, in commit order, into the log.

    Each change becomes one record of topic PREFIX.SCHEMA.TABLE, keyed by the
    row's primary key, in Debezium's JSON envelope (before, after, op, source,
    ts_ms, transaction). A change is confirmed to its source only after it is
    stored, together with its position, in one transaction: a crash loses
    nothing and stores nothing twice.

    \b
      unbundled cdc add shop --source postgresql://app@db/shop --table public.orders
      unbundled cdc run shop              # Ctrl-C to stop; run again to go on
      unbundled cdc status --json
      unbundled cdc snapshot shop public.orders   # re-read a table while streaming
      unbundled cdc remove shop           # drops the slot and publication
    """


@cdc.command()
@click.argument("name")
@click.option("--source", required=True, help="postgresql://... or a SQLite file (sqlite:///PATH).")
@click.option(
    "--table",
    "tables",
    multiple=True,
    help="A table to capture (SCHEMA.TABLE or TABLE); repeat it. Default: every table.",
)
@click.option(
    "--tables",
    "table_list",
    default="",
    help="Tables to capture, comma-separated (the same as repeating --table).",
)
@click.option("--prefix", default="", help="Topic prefix (default: the connector's NAME).")
@click.option(
    "--partitions",
    type=click.IntRange(1, limits.partitions_max),
    default=1,
    show_default=True,
    help="Partitions of each topic.",
)
@click.option(
    "--batch-max",
    type=click.IntRange(1, connectors.BATCH_MAX),
    default=1000,
    show_default=True,
    help="Changes per log transaction.",
)
@click.option(
    "--heartbeat",
    "heartbeat_s",
    type=Seconds(0.1, connectors.HEARTBEAT_S_MAX),
    default=10.0,
    show_default=True,
    help="PostgreSQL: seconds between heartbeats that keep an idle slot moving.",
)
@click.option(
    "--snapshot-chunk",
    type=click.IntRange(1, connectors.CHUNK_MAX),
    default=1024,
    show_default=True,
    help="Rows per chunk of an incremental snapshot (1..100000).",
)
@click.option(
    "--signal-table",
    default=None,
    help="PostgreSQL: a table (id, type, data) whose 'execute-snapshot' rows request "
    "incremental snapshots (Debezium's signalling table).",
)
@click.option(
    "--outbox",
    "outbox",
    multiple=True,
    help="An outbox table (captured too): its inserted rows go to topic "
    "outbox.event.<aggregatetype>, keyed by aggregateid, value = payload; repeat it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the connector's settings as JSON.")
@pass_app
def add(
    app: App,
    name: str,
    source: str,
    tables: tuple[str, ...],
    table_list: str,
    prefix: str,
    partitions: int,
    batch_max: int,
    heartbeat_s: float,
    snapshot_chunk: int,
    signal_table: str | None,
    outbox: tuple[str, ...],
    as_json: bool,
) -> None:
    """Add connector NAME: check its source, install capture there, and record it."""
    listed = [t.strip() for t in table_list.split(",")] if table_list else []
    if any(not t for t in listed):
        raise click.BadParameter(f"an empty name in {table_list!r}", param_hint="--tables")
    config = ConnectorConfig(
        name=name,
        source=source,
        tables=[*tables, *listed] or None,
        prefix=prefix,
        partitions=partitions,
        batch_max=batch_max,
        heartbeat_s=heartbeat_s,
        snapshot_chunk=snapshot_chunk,
        signal_table=signal_table,
        outbox=list(outbox) or None,
    )
    added = connectors.add(_db(app, create=True), config)
    if as_json:
        echo_json(_config_json(added))
    else:
        click.echo(
            f"added connector {added.name} ({added.kind}); start it: unbundled cdc run {name}"
        )


def _config_json(config: ConnectorConfig) -> dict[str, Any]:
    return {
        "name": config.name,
        "kind": config.kind,
        "source": _redact(config.source),
        "tables": config.tables,
        "prefix": config.topic_prefix,
        "partitions": config.partitions,
        "batch_max": config.batch_max,
        "heartbeat_s": config.heartbeat_s,
        "snapshot_chunk": config.snapshot_chunk,
        "signal_table": config.signal_table,
        "outbox": config.outbox,
    }


def _status_line(name: str, progress: Progress) -> str:
    source = progress.source
    parts = [
        f"cdc {name}: {progress.changes:,} changes",
        f"{progress.rate:,.0f}/s",
        "snapshot done" if progress.snapshot_done else "snapshot running",
    ]
    if progress.lag_ms is not None:
        parts.append(f"lag {progress.lag_ms:,.0f} ms")
    if "lag_bytes" in source:
        parts.append(f"lag {source['lag_bytes']:,} B, WAL kept {source['retained_wal_bytes']:,} B")
    if "pending" in source:
        parts.append(f"{source['pending']:,} change rows pending")
    if progress.incremental is not None:
        parts.append(f"incremental snapshot of {progress.incremental['table']}")
    return ", ".join(parts)


@cdc.command()
@click.argument("name")
@click.option(
    "--until-idle", is_flag=True, help="Stop once the snapshot is stored and nothing new comes."
)
@click.option("--json", "as_json", is_flag=True, help="Print the totals as JSON at the end.")
@pass_app
def run(app: App, name: str, until_idle: bool, as_json: bool) -> None:
    """Capture connector NAME's changes into the log until Ctrl-C or SIGTERM
    (or, with --until-idle, until it has caught up). Running it again goes on
    where it stopped; the first run stores a snapshot of the tables first."""
    db = _db(app, create=False)
    config = connectors.get(db, name)
    live = Status("starting", console=err_console()) if is_terminal(err_console().file) else None
    warned = False

    def show(progress: Progress) -> None:
        nonlocal warned
        kept = progress.source.get("retained_wal_bytes", 0)
        if kept > config.wal_warn_bytes and not warned:
            warned = True
            err_console().print(
                f"[yellow]warning:[/] slot keeps {kept:,} B of WAL (> {config.wal_warn_bytes:,})"
            )
        if live is not None:
            live.update(_status_line(name, progress))

    producer = CDCProducer(db, config)
    started = time.monotonic()
    if live is not None:
        live.start()
    try:
        producer.run(until_idle=until_idle, on_progress=show)
    except Interrupted:
        pass  # everything stored is durable and confirmed or replayable: just stop
    finally:
        if live is not None:
            live.stop()
        producer.close()
    progress = producer.progress
    summary = {
        "name": name,
        "changes": progress.changes,
        "skipped": progress.skipped,
        "position": None if progress.position is None else str(progress.position),
        "snapshot_done": progress.snapshot_done,
        "seconds": round(time.monotonic() - started, 3),
        "source": progress.source,
    }
    if as_json:
        echo_json(summary)
    else:
        err_console().print(_status_line(name, progress))


@cdc.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def status(app: App, name: str | None, as_json: bool) -> None:
    """Show every connector (or NAME): its source, position, snapshot and lag."""
    db = _db(app, create=False)
    names = [name] if name else connectors.names(db)
    rows = []
    for each in names:
        config = connectors.get(db, each)
        got = db.kv.read(f"cdc/{each}/position")
        source = config.source_obj()
        try:
            state = source.status()
        finally:
            source.close()
        rows.append(
            {
                **_config_json(config),
                "position": None if got is None else got.value.decode(),
                "snapshot_done": db.kv.read(f"cdc/{each}/snapshot") is not None,
                "incremental": incremental.status(db, each),
                "source_status": state,
            }
        )
    if as_json:
        echo_json(rows)
        return
    table = Table("connector", "kind", "tables", "position", "snapshot", "behind", "kept")
    for row in rows:
        state = row["source_status"]
        if "lag_bytes" in state:
            behind, kept = f"{state['lag_bytes']:,} B", f"{state['retained_wal_bytes']:,} B WAL"
        elif "pending" in state:
            behind, kept = f"{state['pending']:,} changes", "-"
        else:
            behind, kept = "no slot", "-"
        snap = "done" if row["snapshot_done"] else "not yet"
        if row["incremental"] is not None:
            inc = row["incremental"]
            snap = f"incremental: {inc['table']} {inc['rows']:,} rows"
            if inc["waiting"]:
                snap += f" (+{len(inc['waiting'])} waiting)"
        table.add_row(
            row["name"],
            row["kind"],
            ", ".join(row["tables"] or ["(all)"]),
            row["position"] or "-",
            snap,
            behind,
            kept,
        )
    out_console().print(Group(table) if rows else "no connectors (add one: unbundled cdc add)")


@cdc.command()
@click.argument("name")
@click.argument("tables", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the queued tables as JSON.")
@pass_app
def snapshot(app: App, name: str, tables: tuple[str, ...], as_json: bool) -> None:
    """Queue an incremental snapshot of TABLES (SCHEMA.TABLE) of connector NAME.

    `cdc run NAME` reads each table by primary key, chunk by chunk, while it goes on
    streaming; every row comes as an op "r" event (source.snapshot "incremental").
    A stopped or killed runner resumes after the last chunk it stored. PostgreSQL
    only; each table must be captured by NAME and have a primary key."""
    db = _db(app, create=False)
    seqs = connectors.request_snapshot(db, name, list(tables))
    queued = [{"table": t, "seq": s} for t, s in zip(tables, seqs, strict=True)]
    if as_json:
        echo_json({"name": name, "queued": queued})
    else:
        click.echo(
            f"queued an incremental snapshot of {', '.join(tables)}; "
            f"`unbundled cdc run {name}` reads it (see: unbundled cdc status {name})"
        )


@cdc.command()
@click.argument("name")
@pass_app
def remove(app: App, name: str) -> None:
    """Remove connector NAME: drop its slot and publication (PostgreSQL) or its
    triggers and change rows (SQLite), and its settings. Its topics stay."""
    done = connectors.remove(_db(app, create=False), name)
    click.echo(f"removed connector {done['removed']}")
