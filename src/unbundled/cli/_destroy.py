"""``unbundled destroy URL``: drop everything unbundled keeps under a URL.

The URL is an argument, never ``--db`` or ``UNBUNDLED_URL``: a command that
cannot be undone names its target on its own command line. It first checks
and lists what would go (``unbundled.backends.destroy(url, dry_run=True)``),
then asks for the store's name to be typed back (``gh repo delete``'s
habit), unless ``--yes``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

import click
from rich.markup import escape

from ..backends import DestroyReport
from ..backends import destroy as destroy_store
from ..errors import UsageError
from ._common import echo_json, err_console, out_console, stdin_is_terminal


def _show(report: DestroyReport, stderr: bool) -> None:
    console = err_console() if stderr else out_console()
    verb = "would drop" if report.dry_run else "dropped"
    console.print(f"{verb} {escape(report.what)}")
    for item in report.items:
        console.print(f"  {escape(item)}")


def _confirmed(name: str) -> bool:
    """Ask for ``name`` on stderr, read the answer from stdin (end of input: no)."""
    err_console().print(
        f"This cannot be undone. Type [bold]{escape(name)}[/] to destroy it: ", end=""
    )
    answer = sys.stdin.readline()
    if not stdin_is_terminal():
        err_console().print()  # the answer was not echoed: end the prompt's line
    return answer.rstrip("\r\n") == name


@click.command()
@click.argument("url", metavar="URL")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@click.option("--dry-run", is_flag=True, help="Check and list what would be dropped; drop nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def destroy(url: str, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Drop everything unbundled keeps under URL, irreversibly.

    URL names one store: a SQLite path (the file and its -wal/-shm), a
    postgresql://...?schema=NAME (the schema and unbundled's tables in it),
    a redis://...?prefix=P (the idempotency records under the prefix) or a
    nats://...?bucket=B (the log's and the event store's streams and the
    key-value bucket). It is
    refused when the store is not unbundled's, holds things that are not (your own tables, keys or
    messages), or is still open where that can be seen (PostgreSQL and Redis
    connections, the SQLite file's lock; NATS cannot tell).

    It lists what would go and asks you to type the store's name (the schema,
    prefix, bucket or path) back; --yes skips the question.

    \b
      unbundled destroy 'postgresql://app@db/prod?schema=shop' --dry-run
      unbundled destroy 'redis://localhost:6379/0?prefix=shop:idem:'
      unbundled destroy scratch.db --yes
    """
    plan = destroy_store(url, dry_run=True)
    if dry_run:
        if as_json:
            echo_json(asdict(plan))
        else:
            _show(plan, stderr=False)
        return
    if plan.backend != "memory" and not yes:
        _show(plan, stderr=True)
        if not _confirmed(plan.name):
            raise UsageError(f"not confirmed: nothing was dropped ({plan.name!r} was not typed)")
    report = destroy_store(url, confirm=True)
    if as_json:
        echo_json(asdict(report))
    else:
        _show(report, stderr=False)
