"""``unbundled projections ...``: how far each projection is, and rebuilding one.

A projection's checkpoint is the last global position it has applied; its
lag is how many positions of ``$all`` it has still to apply (up to the safe
position). Rebuilding empties the projection's read-model collections (its
runner records which they are) and resets the checkpoint to 0 in one
transaction; the projection's runner then replays every event, calling its
``reset()`` first to empty its SQL tables.
"""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from ..errors import NotFound, UsageError
from ..eventstore.projections import projection_status, rebuild_projection
from ._common import App, echo_json, err_console, out_console, pass_app
from ._events import open_store


@click.group()
def projections() -> None:
    """Show projections' progress, or reset one to be rebuilt."""


@projections.command("status")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print a JSON array instead of a table: one object per projection, sorted by name, "
    "with name, checkpoint, lag and safe_position ([] if there is none).",
)
@pass_app
def projections_status(app: App, as_json: bool) -> None:
    """List projections with their checkpoint and lag behind $all.

    CHECKPOINT is the last global position the projection applied; LAG is
    the safe position of $all minus the checkpoint (0: up to date).
    """
    store = open_store(app)
    found = projection_status(store)
    head = store.safe_position() if not found else next(iter(found.values())).safe_position
    if as_json:
        echo_json(
            [
                {"name": s.name, "checkpoint": s.checkpoint, "lag": s.lag, "safe_position": head}
                for s in found.values()
            ]
        )
        return
    rows = [{"name": s.name, "checkpoint": s.checkpoint, "lag": s.lag} for s in found.values()]
    console = out_console()
    if not rows:
        console.print(f"no projections (safe position {head:,})")
        return
    table = Table("projection", "checkpoint", "lag", caption=f"safe position {head:,}")
    for row in rows:
        table.add_row(escape(str(row["name"])), f"{row['checkpoint']:,}", f"{row['lag']:,}")
    console.print(table)


@projections.command("rebuild")
@click.argument("name")
@click.option(
    "--collection",
    "collections",
    metavar="C",
    multiple=True,
    help="Also empty this document collection. Repeatable. Not needed for the projection's "
    "own collections: its runner records every collection it declares or writes, and they "
    "are always emptied.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def projections_rebuild(app: App, name: str, collections: tuple[str, ...], yes: bool) -> None:
    """Reset projection NAME so it is rebuilt from the first event.

    In one transaction its checkpoint goes to 0 and its document
    collections are emptied. Its runner (in your application, in any
    process) then replays $all from the start, calling the projection's
    reset() first to empty its SQL tables; a runner that is running notices
    and starts over. The result is what a new projection would build.

    Refused, with nothing changed (exit status 2), for a projection that
    writes SQL tables but has no reset(), and for one whose runner has not
    run with this version of unbundled (it records what the read model is).
    """
    if not name:
        raise UsageError("a projection name is required")
    store = open_store(app)
    known = store.backend.checkpoints()
    if name not in known:
        names = ", ".join(sorted(known)) or "none"
        raise NotFound(f"no projection named {name!r} (known: {names})", projection=name)
    if not yes:
        click.confirm(
            f"Reset projection {name!r} (at position {known[name]:,}) to 0 and empty its "
            "read model?",
            abort=True,
            err=True,
        )
    description = rebuild_projection(store, name, collections=collections)
    emptied = sorted({*description.collections, *collections})
    what = f"; emptied {', '.join(emptied)}" if emptied else ""
    err_console().print(
        f"projection {escape(repr(name))} reset to 0 (was {known[name]:,}){escape(what)}; "
        "its runner rebuilds it from the first event"
    )


__all__ = ["projections"]
