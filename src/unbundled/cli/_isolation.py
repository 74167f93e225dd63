"""``unbundled check isolation``: which anomalies a database's isolation levels prevent."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .. import limits
from ..consistency.isolation import TEST_NAMES, Outcome, run_suite, to_markdown, variants
from ..errors import UsageError
from ._bounds import Seconds
from ._common import echo_json, err_console, out_console

_MARKS = {"prevented": "[green]✓[/]", "anomaly": "[bold red]✗[/]"}


def _grid(outcomes: list[Outcome]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The tests that ran, in Hermitage's order, and each row's mark per test."""
    tests = [t for t in TEST_NAMES if any(o.test == t for o in outcomes)]
    rows: dict[str, dict[str, str]] = {}
    for o in outcomes:
        rows.setdefault(o.row, {})[o.test] = _MARKS[o.outcome]
    return tests, rows


def _title(outcomes: list[Outcome]) -> str:
    return ", ".join(sorted({o.database for o in outcomes}))


def _wide(outcomes: list[Outcome]) -> Table:
    """Rows levels, columns tests: the shape of Hermitage's table and of --markdown."""
    tests, rows = _grid(outcomes)
    table = Table(title=_title(outcomes))
    table.add_column("level", no_wrap=True)
    for test in tests:
        table.add_column(test, justify="center", no_wrap=True)
    for row, cells in rows.items():
        table.add_row(escape(row), *(cells.get(t, "") for t in tests))
    return table


def _abbreviation(outcome: Outcome, one_level: bool) -> str:
    # "repeatable read, innodb_snapshot_isolation=ON" -> "RR ON";
    # "serializable, journal_mode=wal" -> "wal" when every row is serializable.
    value = outcome.setting.split("=", 1)[-1] if outcome.setting else None
    if one_level and value:
        return value
    words = outcome.level.split()
    short = "".join(w[0] for w in words).upper() if len(words) > 1 else words[0][:3].upper()
    return f"{short} {value}" if value else short


def _narrow(outcomes: list[Outcome]) -> Group:
    """Rows tests, columns levels under short names, with a legend: the full
    table is some 180 columns wide, this one fits in 80 for every database."""
    tests, rows = _grid(outcomes)
    first: dict[str, Outcome] = {}  # a row's outcomes share its level and setting
    for o in outcomes:
        first.setdefault(o.row, o)
    one_level = len({o.level for o in outcomes}) == 1
    shorts = {row: _abbreviation(first[row], one_level) for row in rows}
    numbered = len(set(shorts.values())) < len(shorts)
    if numbered:  # two rows would share a short name: number the columns instead
        shorts = {row: str(n) for n, row in enumerate(rows, 1)}
    table = Table(title=_title(outcomes))
    table.add_column("test", no_wrap=True)
    for row in rows:
        table.add_column(escape(shorts[row]), justify="center", no_wrap=True)
    for test in tests:
        table.add_row(test, *(rows[row].get(test, "") for row in rows))
    keys = {o.setting.split("=", 1)[0] for o in outcomes if o.setting}
    if one_level and not numbered and len(keys) == 1 and all(o.setting for o in outcomes):
        # SQLite: one level, one setting; a line per column would repeat it.
        legend = f"every column: {outcomes[0].level}, {keys.pop()}=<column>"
    else:
        legend = "\n".join(f"{shorts[row]}: {row}" for row in rows if shorts[row] != row)
    return Group(table, Text(legend))


def _render(outcomes: list[Outcome], console: Console) -> RenderableType:
    """The wide table when the terminal has room for it, else the narrow one."""
    wide = _wide(outcomes)
    # Measured without the terminal's limit, which the measurement would clamp to.
    unbounded = console.options.update_width(10_000)
    if console.measure(wide, options=unbounded).maximum <= console.width:
        return wide
    return _narrow(outcomes)


@click.command()
@click.argument("url", metavar="URL")
@click.option(
    "--level",
    "levels",
    multiple=True,
    metavar="LEVEL",
    help='Only this isolation level, as the database names it ("read committed"), or one '
    'row\'s full label ("repeatable read, innodb_snapshot_isolation=ON"); repeatable.',
)
@click.option(
    "--test",
    "tests",
    multiple=True,
    metavar="TEST",
    help="Only this test (G0, G1a, ..., G2-fekete, as listed above); repeatable.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the outcomes, with transcripts, as JSON."
)
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Also write the table as Markdown to this file.",
)
@click.option(
    "--transcripts", is_flag=True, help="Also print each test's verdict and every step it ran."
)
@click.option(
    "--step-timeout",
    type=Seconds(0.05, limits.wait_s_max / 5),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="A statement that has not returned after this long counts as blocked.",
)
def isolation(
    url: str,
    levels: tuple[str, ...],
    tests: tuple[str, ...],
    as_json: bool,
    markdown_path: Path | None,
    transcripts: bool,
    step_timeout: float,
) -> None:
    """Run the Hermitage tests against the database at URL and tabulate the result.

    Each test drives two or three real connections step by step at one
    isolation level and reports whether the anomaly was prevented (✓: the
    database blocked, aborted a transaction, or showed a consistent state)
    or occurred (✗). Rows are the levels, columns the anomalies: G0, G1a,
    G1b, G1c, OTV, PMP, PMP-write, P4, G-single, G-single-predicate,
    G-single-write-predicate, G2-item, G2, G2-fekete. Every test uses its own
    fresh table (for SQLite, its own temporary file next to the path given)
    and drops it. SQLite runs in each journal mode (delete, truncate, persist,
    memory, wal, off; choose with ?journal_mode=wal,delete); MariaDB's
    repeatable read runs with innodb_snapshot_isolation OFF and ON. When the
    terminal is too narrow for a column per test, the table is turned: a row
    per test, a column per level under a short name, with a legend. The exit
    status is 0 whatever the database allows: this measures, it does not
    judge. URL may be a SQLite file's path, as --db takes everywhere.

    \b
      unbundled check isolation 'sqlite:///tmp/x.db?journal_mode=wal'
      unbundled check isolation postgresql://postgres@127.0.0.1/test --level serializable
      unbundled check isolation mysql://root@127.0.0.1:3306/test --test P4 --json
    """
    if "://" not in url:
        url = f"sqlite:///{url}"  # a plain path, as --db takes everywhere
    chosen_levels = list(levels) or None
    chosen_tests = list(tests) or None
    if markdown_path is not None and not markdown_path.parent.is_dir():
        # Before the run, not after it: a typo should not cost a whole suite.
        raise UsageError(f"cannot write {markdown_path}: no such directory")
    # A live status on stderr (a few seconds per database): stdout stays the result.
    with err_console().status(f"running the Hermitage tests against {url} ..."):
        outcomes = run_suite(url, chosen_levels, chosen_tests, step_timeout_s=step_timeout)
    if markdown_path is not None:
        try:
            markdown_path.write_text(to_markdown(outcomes), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {markdown_path}: {exc.strerror}") from None
    if as_json:
        echo_json([o.to_json() for o in outcomes])
        return
    console = out_console()
    if transcripts:
        for o in outcomes:
            console.print(f"[bold]{escape(o.row)} {o.test}: {o.outcome}[/] ({escape(o.reason)})")
            for entry in o.transcript:
                console.print("  " + escape(entry.describe()), soft_wrap=True)
    console.print(_render(outcomes, console))
    console.print("✓ prevented   ✗ anomaly")
    for row in variants(url, chosen_levels):
        if row.note:
            err_console().print(f"note: {escape(row.level)}: {escape(row.note)}")
