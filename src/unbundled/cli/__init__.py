"""The ``unbundled`` command: a thin shell over the library (sqlite-utils' model).

Every subcommand opens the log named by ``--db`` / ``UNBUNDLED_URL`` and calls
one public function. A typed error (``unbundled.Error``) prints
``error: <message>`` on stderr and exits with :func:`unbundled.errors.exit_status`;
``--json`` output puts JSON, and only JSON, on stdout.
"""

from __future__ import annotations

import importlib
import signal
import tempfile
from pathlib import Path
from typing import Any, cast

import click
from rich.markup import escape
from rich.table import Table

from .. import __version__
from .._ground import SyncLevel
from ..errors import Error, NotSupported, exit_status
from ._cdc import cdc
from ._check import check
from ._common import DEFAULT_DB, App, db_help, echo_json, err_console, out_console, pass_app
from ._consume import consume
from ._destroy import destroy
from ._events import events
from ._groups import groups
from ._idempotency import idempotency
from ._kv import kv
from ._produce import produce
from ._projections import projections
from ._signals import interrupts, signal_exit_status, signum_of
from ._streams import streams
from ._topics import topics

HELP_WIDTH = 100
CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    "max_content_width": HELP_WIDTH,
}


class _Cli(click.Group):
    """The root group: turns typed library errors into a message and an exit
    status, and Ctrl-C and SIGTERM into a clean stop (see ``_signals``)."""

    def invoke(self, ctx: click.Context) -> Any:
        with interrupts().installed() as signals:
            try:
                try:
                    result = super().invoke(ctx)
                finally:
                    ctx.close()  # the store too closes before the handlers go
            except Error as err:
                err_console().print(f"[bold red]error:[/] {escape(err.message)}")
                raise click.exceptions.Exit(exit_status(err)) from None
            except KeyboardInterrupt as exc:
                signum = signum_of(exc)
                err_console().print(f"interrupted ({signal.Signals(signum).name})")
                raise click.exceptions.Exit(signal_exit_status(signum)) from None
            except click.Abort:
                if signals.received is None:
                    raise
                raise click.exceptions.Exit(signal_exit_status(signals.received)) from None
            if signals.received is not None:
                # The command stopped early and said so: exit as a stopped process.
                raise click.exceptions.Exit(signal_exit_status(signals.received))
            return result


@click.group(cls=_Cli, context_settings=CONTEXT_SETTINGS)
@click.option(
    "--db",
    "url",
    envvar="UNBUNDLED_URL",
    show_envvar=True,
    default=DEFAULT_DB,
    show_default=True,
    metavar="PATH|URL",
    help=db_help(),
)
@click.option(
    "--sync",
    type=click.Choice(["full", "normal", "off"]),
    default="full",
    show_default=True,
    help="Durability of writes: full fsyncs each commit (survives power loss), normal "
    "survives a process crash, off is for scratch data.",
)
@click.version_option(__version__, "--version", prog_name="unbundled")
@click.pass_context
def cli(ctx: click.Context, url: str, sync: str) -> None:
    """unbundled: a durable, partitioned log (Kafka's model) on one SQLite file.

    \b
      unbundled topics create orders --partitions 3
      printf 'a\\nb\\n' | unbundled produce orders
      unbundled consume orders --from-beginning --json
      unbundled consume orders --group billing --follow
      unbundled groups describe billing
      unbundled events append account-1 --type Opened --data '{"owner": "ada"}'
      unbundled events read '$all' --json
      unbundled idempotency list --state in_progress
      unbundled kv cas leader node-a --absent

    Errors print "error: <message>" on stderr; the exit status says which kind:
    2 usage, 3 not found, 4 conflict, 5 limit exceeded, 6 corruption,
    7 backend, 8 not supported, 1 anything else. Ctrl-C and SIGTERM stop any
    command cleanly (summary printed, store closed, group left) with status
    130 and 143.
    """
    app = App(url, cast(SyncLevel, sync))
    ctx.obj = app
    ctx.call_on_close(app.close)


cli.add_command(topics)
cli.add_command(produce)
cli.add_command(consume)
cli.add_command(groups)
cli.add_command(events)
cli.add_command(projections)
cli.add_command(idempotency)
cli.add_command(check)
cli.add_command(kv)
cli.add_command(cdc)
cli.add_command(streams)
cli.add_command(destroy)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the removed counts as JSON.")
@pass_app
def maintain(app: App, as_json: bool) -> None:
    """Apply retention and compaction now; print what was removed.

    The SQLite store also does this by itself about once a minute while a
    writer is open; this command is for doing it at a moment you choose.
    """
    report = app.open().maintain()
    if as_json:
        echo_json({"removed": report.removed})
        return
    removed = {topic: n for topic, n in report.removed.items() if n}
    if not removed:
        out_console().print("nothing to remove")
        return
    table = Table("topic", "records removed")
    for topic, count in sorted(removed.items()):
        table.add_row(escape(topic), f"{count:,}")
    out_console().print(table)


@cli.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run the demos and print what they verified.

    They run on fresh SQLite files, not on --db. The log demo produces keyed
    records from several threads, consumes them with a consumer group whose
    member processes are killed and replaced, and checks that nothing was lost
    or duplicated. The event-store demo runs bank accounts (BankAccount) with
    concurrent commands and checks conflicts, snapshots, time travel and
    crypto-shredding. The unit-of-work demo runs idempotent commands that
    commit an event, an outbox record, a counter and the reply in one
    transaction, retries them, races two writers and SIGKILLs a worker
    process, checking that every transaction is whole or absent. The CDC
    demo keeps a price cache by dual writes and a view by change data
    capture while SIGKILLing every process: the cache drifts, the view
    equals the database. The streams demo counts clicks per user and second
    while its worker is SIGKILLed and restarted: the output equals an
    uninterrupted run's byte for byte. The consistency demo records concurrent clients of the
    linearizable key-value store and proves the history linearizable, runs
    the isolation tests on SQLite and the causal store in a simulated
    network. Exits 0 if every check passed, 1 otherwise.
    """
    try:
        # Imported here: the demos are large and only this command needs them.
        log_demo = importlib.import_module("unbundled.demo")
        events_demo = importlib.import_module("unbundled.demo_events")
        consistency_demo = importlib.import_module("unbundled.demo_consistency")
        unit_demo = importlib.import_module("unbundled.demo_unit")
        cdc_demo = importlib.import_module("unbundled.demo_cdc")
        streams_demo = importlib.import_module("unbundled.demo_streams")
    except ModuleNotFoundError as exc:
        if exc.name not in (
            "unbundled.demo",
            "unbundled.demo_events",
            "unbundled.demo_consistency",
            "unbundled.demo_unit",
            "unbundled.demo_cdc",
            "unbundled.demo_streams",
        ):
            raise
        raise NotSupported("the demo is not part of this installation") from None
    console = out_console()
    log_ok = log_demo.run_demo(console)
    with tempfile.TemporaryDirectory(prefix="unbundled-demo-events-") as tmp:
        events_ok = events_demo.run_eventstore_demo(console, Path(tmp))
    with tempfile.TemporaryDirectory(prefix="unbundled-demo-unit-") as tmp:
        unit_ok = unit_demo.run_unit_demo(console, Path(tmp))
    with tempfile.TemporaryDirectory(prefix="unbundled-demo-cdc-") as tmp:
        cdc_ok = cdc_demo.run_cdc_demo(console, Path(tmp))
    with tempfile.TemporaryDirectory(prefix="unbundled-demo-streams-") as tmp:
        streams_ok = streams_demo.run_streams_demo(console, Path(tmp))
    with tempfile.TemporaryDirectory(prefix="unbundled-demo-consistency-") as tmp:
        consistency_ok = consistency_demo.run_consistency_demo(console, Path(tmp))
    parts = (
        ("log", log_ok),
        ("event store", events_ok),
        ("one transaction across the parts", unit_ok),
        ("change data capture", cdc_ok),
        ("stream processing", streams_ok),
        ("consistency", consistency_ok),
    )
    if all(ok for _, ok in parts):
        console.print(
            "[bold green]demo: all checks passed (log, event store, "
            "one transaction across the parts, change data capture, stream processing, "
            "consistency)"
        )
    else:
        failed = [name for name, ok in parts if not ok]
        console.print(f"[bold red]demo: checks failed in: {', '.join(failed)}")
    ctx.exit(0 if all(ok for _, ok in parts) else 1)


def main() -> None:
    """The console-script entry point."""
    cli(prog_name="unbundled")


__all__ = ["cli", "main"]
