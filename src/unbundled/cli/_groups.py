"""``unbundled groups ...``: consumer groups, their members and lag."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ..log import Log
from ._common import App, echo_json, out_console, pass_app


@click.group()
def groups() -> None:
    """List and describe consumer groups and their lag.

    A group's members share the partitions of its topics; its committed
    offsets say where each partition resumes.
    """


def _group_data(log: Log, name: str) -> dict[str, Any]:
    info = log.describe_group(name)
    lag = log.lag(name)
    owners = {tp: m.member_id for m in info.members for tp in m.partitions}
    return {
        "name": info.name,
        "generation": info.generation,
        "members": [
            {
                "member_id": m.member_id,
                "instance_id": m.instance_id,
                "topics": list(m.topics),
                "partitions": [
                    {"topic": tp.topic, "partition": tp.partition} for tp in m.partitions
                ],
                "lease_until_ms": m.lease_until_ms,
            }
            for m in info.members
        ],
        "partitions": [
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "owner": owners.get(tp),
                "committed": committed,
                "end_offset": end,
                "lag": behind,
            }
            for tp, (committed, end, behind) in sorted(lag.items())
        ],
        "lag": sum(behind for _, _, behind in lag.values()),
    }


@groups.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@pass_app
def groups_list(app: App, as_json: bool) -> None:
    """List consumer groups with their member count and total lag."""
    log = app.open()
    data = [_group_data(log, name) for name in log.groups()]
    if as_json:
        echo_json(
            [
                {
                    "name": g["name"],
                    "generation": g["generation"],
                    "members": len(g["members"]),
                    "partitions": len(g["partitions"]),
                    "lag": g["lag"],
                }
                for g in data
            ]
        )
        return
    table = Table("group", "generation", "members", "partitions", "lag")
    for g in data:
        table.add_row(
            escape(g["name"]),
            str(g["generation"]),
            str(len(g["members"])),
            str(len(g["partitions"])),
            f"{g['lag']:,}",
        )
    out_console().print(table if data else "no consumer groups")


@groups.command("describe")
@click.argument("group")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of tables.")
@pass_app
def groups_describe(app: App, group: str, as_json: bool) -> None:
    """Show GROUP's members and, per partition, its owner, committed offset, end and lag.

    LAG is END minus COMMITTED (or minus the partition's start when nothing is
    committed yet): the records the group has still to process.
    """
    g = _group_data(app.open(), group)
    if as_json:
        echo_json(g)
        return
    console = out_console()
    console.print(f"[bold]{escape(g['name'])}[/]  generation {g['generation']}, lag {g['lag']:,}")
    if g["members"]:
        now_ms = int(time.time() * 1000)
        members = Table("member", "instance", "topics", "partitions", "lease")
        for m in g["members"]:
            left_s = (m["lease_until_ms"] - now_ms) / 1000
            members.add_row(
                escape(m["member_id"]),
                escape(m["instance_id"] or "-"),
                escape(", ".join(m["topics"])),
                str(len(m["partitions"])),
                f"{left_s:.1f} s left" if left_s > 0 else "expired",
            )
        console.print(members)
    else:
        console.print("no members")
    table = Table("topic", "partition", "owner", "committed", "end", "lag")
    for p in g["partitions"]:
        table.add_row(
            escape(p["topic"]),
            str(p["partition"]),
            escape(p["owner"] or "-"),
            "-" if p["committed"] is None else f"{p['committed']:,}",
            f"{p['end_offset']:,}",
            f"{p['lag']:,}",
        )
    console.print(table)
