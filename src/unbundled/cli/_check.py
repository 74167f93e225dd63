"""``unbundled check``: verify a consistency guarantee on recorded evidence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..consistency import checker
from ..consistency.checker import FORMATS, Verdict, kv, parse_history, register
from ..consistency.checker._formats import resolve
from ..errors import UsageError
from ._bounds import Seconds
from ._common import err_console

# Bad input (unreadable file, malformed line, bad option) exits 3: 1 and 2
# already mean "not linearizable" and "unknown".
BAD_INPUT = 3


class _InputCommand(click.Command):
    """A command whose option errors exit with BAD_INPUT, not click's 2."""

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


@click.group()
def check() -> None:
    """Check recorded histories and databases against consistency models."""


@check.command(cls=_InputCommand)
@click.argument("history", metavar="HISTORY")
@click.option(
    "--model",
    type=click.Choice(["auto", "register", "kv"]),
    default="auto",
    show_default=True,
    help="register: one value with read, write, cas. kv: a map, checked key by key. "
    "auto: kv if the history has keys.",
)
@click.option(
    "--format",
    "format_",
    type=click.Choice(["auto", *FORMATS]),
    default="auto",
    show_default=True,
    help="jepsen: Jepsen's text log (Porcupine's etcd data). porcupine-kv: EDN maps, "
    'keys start as "". jsonl: one JSON event per line (see the docs). '
    "auto: told apart by the first line.",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write a picture of the result (the failing prefix, for a violation) as an HTML page.",
)
@click.option(
    "--budget",
    type=Seconds(),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up after this much search: the verdict is then unknown, never linearizable.",
)
def linearizable(
    history: str, model: str, format_: str, html_path: Path | None, budget: float
) -> None:
    """Check that HISTORY is linearizable with respect to a model.

    The last line printed is exactly "linearizable", "not linearizable" or
    "unknown", and the exit status is 0, 1 or 2 accordingly; bad input (an
    unreadable file, a malformed line: the message names file and line)
    exits 3. For a violation it prints the shortest failing prefix and its
    culprit, and --html draws it (clients as lanes, operations as bars).

    \b
      unbundled check linearizable etcd_000.log
      unbundled check linearizable c10-bad.txt --html out.html
      unbundled check linearizable history.jsonl --model kv --format jsonl
    """
    try:
        try:
            text = Path(history).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{history}: cannot read: {exc}") from None
        format_, model = resolve(history, text, format_, model)
        parsed = parse_history(history, format_, model, text=text)
    except UsageError as exc:
        click.echo(f"error: {exc.message}", err=True)
        raise click.exceptions.Exit(BAD_INPUT) from None
    spec = (
        register() if model == "register" else kv(initial="" if format_ == "porcupine-kv" else None)
    )
    try:
        # Live status on stderr: a hard history can take up to --budget seconds,
        # and stdout's last line must stay the verdict.
        with err_console().status(f"checking {len(parsed):,} operations ..."):
            result = checker.check(parsed, spec, budget_s=budget)
    except (ValueError, TypeError) as exc:
        # A value the model cannot handle (say, appending a number to a string).
        click.echo(f"error: {history}: {exc}", err=True)
        raise click.exceptions.Exit(BAD_INPUT) from None
    when = "time" if format_ == "jsonl" else "line"
    click.echo(
        f"{history}: {len(parsed):,} operations, {len(parsed.clients):,} clients, "
        f"{result.partitions:,} partition(s); checked in {result.elapsed_s:.3f} s"
    )
    for note in result.notes:
        click.echo(note)
    violation = result.violation
    if violation is not None:
        culprit = violation.culprit
        click.echo(
            f"violation: no valid order once client {culprit.client}'s "
            f"{spec.operation_text(culprit.input, culprit.output)} returned "
            f"({when} {culprit.return_time:g})"
        )
        click.echo(
            f"shortest failing prefix: {len(violation.operations):,} operations "
            f"(of {violation.partition_size:,} in the failing part)"
        )
    if result.verdict is Verdict.UNKNOWN:
        click.echo(f"gave up after {budget:g} s (--budget)")
    if html_path is not None:
        try:
            result.write_html(html_path, title=f"{Path(history).name}: {result.verdict.value}")
        except OSError as exc:
            click.echo(f"error: cannot write {html_path}: {exc}", err=True)
            raise click.exceptions.Exit(BAD_INPUT) from None
        click.echo(f"picture: {html_path}")
    click.echo(result.verdict.value)
    raise click.exceptions.Exit(result.verdict.exit_status)


# The isolation tester lives in its own module (helper L's part of issue 5).
from ._isolation import isolation  # noqa: E402

check.add_command(isolation)

# The CDC checker (issue 11): `unbundled check cdc NAME`.
from ._check_cdc import cdc as _cdc  # noqa: E402

check.add_command(_cdc)
