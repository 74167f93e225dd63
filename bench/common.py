"""What every benchmark suite shares: where scratch files go, the commit
measured, the table cells and Markdown of a result row, and how results are
shown and written. Below the suites and below ``run.py``, which runs them."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.log_bench import Row

REPO = Path(__file__).resolve().parent.parent


def scratch_parent() -> Path:
    """Where the scratch directories go: the temp dir if it is on the repo's
    disk (so fsync rates match what a user of this checkout gets), else bench/.tmp."""
    tmp = Path(tempfile.gettempdir())
    if tmp.stat().st_dev == REPO.stat().st_dev:
        return tmp
    local = REPO / "bench" / ".tmp"
    local.mkdir(exist_ok=True)
    return local


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def fmt_rate(row: Row) -> str:
    return f"{row.rate:,.0f} {row.unit}/s"


def fmt_spread(row: Row) -> str:
    return f"{min(row.samples):,.0f} to {max(row.samples):,.0f}"


def fmt_ratio(row: Row) -> str:
    ratio = row.ratio
    if ratio is None:
        return ""
    return f"{ratio:.2f}x"


def cells(row: Row) -> list[str]:
    return [
        row.case,
        row.name,
        fmt_rate(row),
        fmt_spread(row),
        fmt_ratio(row),
        row.floor.describe() if row.floor is not None else "",
        row.verdict,
        row.note,
    ]


HEADERS = ["#", "measured", "median rate", "min to max", "ratio", "floor", "result", "notes"]


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *map(line, rows)])


def results_page(
    title: str,
    intro: str,
    facts: list[tuple[str, str]],
    table: str,
    notes: list[str],
    what: list[str],
) -> str:
    """A results page: title, how it was made, the machine facts, the table,
    the notes, and what each line measures (numbered)."""
    parts = [
        f"# {title}",
        "",
        intro,
        "",
        *[f"- {name}: {value}" for name, value in facts],
        "",
        table,
        "",
        *[f"- {n}" for n in notes],
        "",
        "## What each line measures",
        "",
        *[f"{i}. {text}" for i, text in enumerate(what, 1)],
    ]
    return "\n".join(parts) + "\n"


def show_results(
    console: Any,
    title: str,
    headers: list[str],
    right: Callable[[str], bool],
    rows: list[tuple[list[str], bool]],
    facts: list[tuple[str, str]],
    notes: list[str],
    *,
    extra: Sequence[Any] = (),
) -> None:
    """What every suite prints: the machine facts, its table (``rows`` are
    cells and whether the line is below its floor, shown red; ``right``
    picks right-aligned columns), any ``extra`` tables, then the notes."""
    from rich.table import Table

    table = Table(title=title)
    for header in headers:
        table.add_column(header, justify="right" if right(header) else "left")
    for row_cells, below in rows:
        table.add_row(*row_cells, style="red" if below else None)
    for name, value in facts:
        console.print(f"[bold]{name}[/bold]: {value}")
    console.print(table)
    for renderable in extra:
        console.print(renderable)
    for note in notes:
        console.print(f"- {note}")


def write_results(console: Any, output: Path | None, text: str) -> None:
    """Write a suite's Markdown results (``output`` None: a quick run, nowhere)."""
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        console.print(f"wrote {output}")
