"""``unbundled check cdc NAME``: does a connector's log hold its source's changes, exactly?"""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from ..cdc._check import SHOWN_MAX, WAIT_S_MAX, CDCCheck, check_cdc
from ..database import open as open_database
from ..errors import NotFound, UsageError
from ._bounds import Seconds
from ._common import App, echo_json, err_console, out_console, pass_app

BAD_INPUT = 3  # as the other `check` commands: 0 pass, 1 violation, 2 unknown, 3 bad input


class _InputCommand(click.Command):
    """Option errors exit with BAD_INPUT, not click's 2 (2 means "unknown" here)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            setattr(exc, "exit_code", BAD_INPUT)  # noqa: B010 (a ClassVar in the stubs)
            raise


@click.command("cdc", cls=_InputCommand)
@click.argument("name")
@click.option(
    "--catch-up",
    is_flag=True,
    help="Run the connector's producer until the log reaches the check's source point "
    "(no `cdc run` may be attached meanwhile).",
)
@click.option(
    "--wait",
    "wait_s",
    type=Seconds(max=WAIT_S_MAX),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help=f"How long the log may take to reach the source point (<= {WAIT_S_MAX:g}).",
)
@click.option(
    "--log-only",
    is_flag=True,
    help="Check only (a) once and (b) order, without reading the source.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def cdc(app: App, name: str, catch_up: bool, wait_s: float, log_only: bool, as_json: bool) -> None:
    """Check connector NAME's log against its source database.

    \b
    (a) every change is stored once: no source position twice;
    (b) per key, the log's order is the source's commit order;
    (c) the log replayed up to a source point L equals the source tables
        as of L (read in a snapshot taken at L, values in the change
        events' text forms); per table: rows, missing, extra, differing.

    Exit status: 0 pass, 1 violation, 2 unknown (the log did not reach L
    within --wait), 3 bad input (no such connector or database).

    \b
      unbundled check cdc shop --catch-up
      unbundled check cdc shop --json        # while `cdc run shop` runs
    """
    try:
        app._check_exists("add a connector first (`unbundled cdc add`)")
        db = app.opened(lambda url: open_database(url, sync=app.sync))
    except (UsageError, NotFound) as exc:
        click.echo(f"error: {exc.message}", err=True)
        raise click.exceptions.Exit(BAD_INPUT) from None
    try:
        with err_console().status(f"checking connector {name} ..."):
            result = check_cdc(db, name, state=not log_only, catch_up=catch_up, wait_s=wait_s)
    except (UsageError, NotFound) as exc:
        click.echo(f"error: {exc.message}", err=True)
        raise click.exceptions.Exit(BAD_INPUT) from None
    finally:
        db.close()
    if as_json:
        echo_json(result.to_json())
    else:
        _print(result)
    raise click.exceptions.Exit(result.exit_status)


def _keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_MAX])
    return shown + (f" (+{len(keys) - SHOWN_MAX:,})" if len(keys) > SHOWN_MAX else "")


def _print(result: CDCCheck) -> None:
    console = out_console()
    console.print(
        f"connector {result.connector}: {result.events:,} events in "
        f"{len(result.topics)} topic(s); checked in {result.elapsed_s:.3f} s"
    )
    console.print(f"(a) once:  {len(result.duplicates):,} duplicate position(s)")
    console.print(f"(b) order: {len(result.out_of_order):,} event(s) out of order per key")
    for finding in [*result.duplicates, *result.out_of_order][:SHOWN_MAX]:
        console.print(
            f"  {finding.kind}: {finding.topic}[{finding.partition}]@{finding.offset} "
            f"key {finding.key} at {finding.position}, after {finding.earlier} "
            f"({finding.earlier_at})",
            markup=False,
        )
    if result.through is not None:
        console.print(f"(c) state at source point {result.through.commit}:")
    if result.tables:
        table = Table("table", "source rows", "log rows", "missing", "extra", "differing", "ok")
        for each in result.tables:
            cells: list[Any] = [
                f"{each.schema}.{each.table}",
                f"{each.source_rows:,}",
                f"{each.log_rows:,}",
                _keys(each.missing) or "0",
                _keys(each.extra) or "0",
                _keys(each.differing) or "0",
                each.skipped or ("yes" if each.ok else "NO"),
            ]
            table.add_row(*cells)
        console.print(table)
    for note in result.notes:
        console.print(note, markup=False)
    click.echo(result.verdict)
