"""``unbundled topics ...``: create, list, describe and delete topics."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from .. import limits
from ..log import Log, TopicInfo
from ._common import App, echo_json, err_console, out_console, pass_app, to_builtins


@click.group()
def topics() -> None:
    """Create, list, describe and delete topics."""


@topics.command("create")
@click.argument("name")
@click.option(
    "--partitions",
    "-p",
    type=click.IntRange(1, limits.partitions_max),
    metavar="N",
    default=1,
    show_default=True,
    help="Number of partitions (fixed at creation).",
)
@click.option(
    "--retention-ms",
    type=click.IntRange(1, limits.retention_ms_max),
    metavar="MS",
    default=None,
    help="Delete records older than this many milliseconds (delete policy). Default: keep all.",
)
@click.option(
    "--retention-bytes",
    type=click.IntRange(1, limits.retention_bytes_max),
    metavar="BYTES",
    default=None,
    help="Keep at most this many bytes per partition, oldest removed first. Default: no limit.",
)
@click.option(
    "--cleanup-policy",
    type=click.Choice(["delete", "compact"]),
    default="delete",
    show_default=True,
    help="delete: retention by time/size; compact: keep the latest record per key.",
)
@click.option(
    "--tombstone-retention-ms",
    type=click.IntRange(0, limits.retention_ms_max),
    metavar="MS",
    default=86_400_000,
    show_default=True,
    help="Compacted topics: remove a tombstone (a record with no value) this long after it.",
)
@click.option(
    "--record-bytes-max",
    type=click.IntRange(1, limits.record_bytes_max),
    metavar="BYTES",
    default=limits.record_bytes_default,
    show_default=True,
    help="Largest record (key + value + headers) the topic accepts.",
)
@click.option(
    "--exist-ok",
    is_flag=True,
    help="Succeed if the topic exists with the same settings (different settings still fail).",
)
@pass_app
def topics_create(
    app: App,
    name: str,
    partitions: int,
    retention_ms: int | None,
    retention_bytes: int | None,
    cleanup_policy: str,
    tombstone_retention_ms: int,
    record_bytes_max: int,
    exist_ok: bool,
) -> None:
    """Create topic NAME. Topics are never created implicitly."""
    config = app.open(create=True).create_topic(
        name,
        partitions,
        retention_ms=retention_ms,
        retention_bytes=retention_bytes,
        cleanup_policy="compact" if cleanup_policy == "compact" else "delete",
        tombstone_retention_ms=tombstone_retention_ms,
        record_bytes_max=record_bytes_max,
        exist_ok=exist_ok,
    )
    plural = "" if config.partitions == 1 else "s"
    err_console().print(
        f"topic {escape(repr(name))}: {config.partitions} partition{plural}, "
        f"cleanup policy {config.cleanup_policy}"
    )


def _summary(info: TopicInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "config": to_builtins(info.config),
        "records": sum(p.records for p in info.partitions),
        "bytes": sum(p.bytes for p in info.partitions),
    }


@topics.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@pass_app
def topics_list(app: App, as_json: bool) -> None:
    """List topics with their partition count, policy and size."""
    log = app.open()
    infos = [log.describe_topic(name) for name in log.topics()]
    if as_json:
        echo_json([_summary(info) for info in infos])
        return
    table = Table("topic", "partitions", "policy", "records", "bytes")
    for info in infos:
        s = _summary(info)
        table.add_row(
            escape(info.name),
            str(info.config.partitions),
            info.config.cleanup_policy,
            f"{s['records']:,}",
            f"{s['bytes']:,}",
        )
    out_console().print(table if infos else "no topics")


@topics.command("describe")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of tables.")
@pass_app
def topics_describe(app: App, name: str, as_json: bool) -> None:
    """Show a topic's settings and, per partition, its offsets and size.

    START is the log start offset, the first offset a consumer may ask for:
    retention moves it, compaction does not (as in Kafka; compaction removes
    older records of a key, and reads skip the offsets it removed). END is
    the offset the next record will get. RECORDS counts what is stored.
    """
    info = app.open().describe_topic(name)
    if as_json:
        data = _summary(info)
        data["partitions"] = [to_builtins(p) for p in info.partitions]
        echo_json(data)
        return
    console = out_console()
    config = info.config
    retention = []
    if config.retention_ms is not None:
        retention.append(f"{config.retention_ms:,} ms")
    if config.retention_bytes is not None:
        retention.append(f"{config.retention_bytes:,} bytes/partition")
    console.print(f"[bold]{escape(info.name)}[/]")
    console.print(f"  cleanup policy   {config.cleanup_policy}")
    console.print(f"  retention        {', '.join(retention) or 'keep everything'}")
    if config.cleanup_policy == "compact":
        console.print(f"  tombstones kept  {config.tombstone_retention_ms:,} ms")
    console.print(f"  record max       {config.record_bytes_max:,} bytes")
    table = Table("partition", "start", "end", "records", "bytes")
    for p in info.partitions:
        table.add_row(
            str(p.partition),
            f"{p.start_offset:,}",
            f"{p.end_offset:,}",
            f"{p.records:,}",
            f"{p.bytes:,}",
        )
    console.print(table)


@topics.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def topics_delete(app: App, name: str, yes: bool) -> None:
    """Delete topic NAME with its records and committed offsets. Cannot be undone."""
    log: Log = app.open()
    info = log.describe_topic(name)  # an unknown topic fails before the question
    records = sum(p.records for p in info.partitions)
    if not yes:
        click.confirm(f"Delete topic {name!r} and its {records:,} records?", abort=True, err=True)
    log.delete_topic(name)
    err_console().print(f"deleted topic {escape(repr(name))} ({records:,} records)")
