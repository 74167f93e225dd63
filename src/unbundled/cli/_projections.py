"""``unbundled projections ...``: how far each projection is, and rebuilding one.

A projection's checkpoint is the last global position it has applied; its
lag is how many positions of ``$all`` it has still to apply (up to the safe
position). Rebuilding resets the checkpoint to 0 and deletes the projection's
documents in one transaction; the projection's runner then replays every
event the next time it runs.
"""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from ..errors import NotFound, UsageError
from ..eventstore.projections import projection_status
from ._common import App, echo_json, err_console, out_console, pass_app
from ._events import open_store


@click.group()
def projections() -> None:
    """Show projections' progress, or reset one to be rebuilt."""


@projections.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@pass_app
def projections_status(app: App, as_json: bool) -> None:
    """List projections with their checkpoint and lag behind $all.

    CHECKPOINT is the last global position the projection applied; LAG is
    the safe position of $all minus the checkpoint (0: up to date).
    """
    store = open_store(app)
    found = projection_status(store)
    head = store.safe_position() if not found else next(iter(found.values())).safe_position
    rows = [{"name": s.name, "checkpoint": s.checkpoint, "lag": s.lag} for s in found.values()]
    if as_json:
        echo_json({"safe_position": head, "projections": rows})
        return
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
    help="A document collection of the projection (its Projection.collections): its documents "
    "are deleted with the reset. Repeatable. SQL tables are emptied by the projection's reset() "
    "when its runner replays from 0.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def projections_rebuild(app: App, name: str, collections: tuple[str, ...], yes: bool) -> None:
    """Reset projection NAME so it is rebuilt from the first event.

    Its checkpoint goes to 0 and the documents of each --collection are
    deleted, in one transaction. The rebuild itself happens when the
    projection's runner next runs (in your application): it replays $all
    from the start. Run it while the projection's runners are stopped.
    """
    if not name:
        raise UsageError("a projection name is required")
    store = open_store(app)
    known = store.backend.checkpoints()
    if name not in known:
        names = ", ".join(sorted(known)) or "none"
        raise NotFound(f"no projection named {name!r} (known: {names})", projection=name)
    if not yes:
        what = f" and delete the documents of {', '.join(collections)}" if collections else ""
        click.confirm(
            f"Reset projection {name!r} (at position {known[name]:,}) to 0{what}?",
            abort=True,
            err=True,
        )
    store.backend.reset_projection(name, list(collections))
    err_console().print(
        f"projection {escape(repr(name))} reset to 0 (was {known[name]:,}); "
        "its runner rebuilds it from the first event"
    )


__all__ = ["projections"]
