"""The measured tables in docs/explanation/isolation-levels-measured.md are
what the databases do now: a fresh run of the suite must produce them.

Only the tables are compared, not their captions, which name the server's
version (a patch release of the server must not fail this test; a changed
outcome must). The "how" tables are compared on their ✓ and ✗ only: whether
a prevention was a block or an abort can depend on timing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from unbundled.consistency.isolation import Outcome, to_markdown

PAGE = Path(__file__).resolve().parents[3] / "docs" / "explanation" / "isolation-levels-measured.md"


def block(name: str) -> list[str]:
    """The table lines between ``<!-- measured:NAME -->`` and its end marker."""
    found = re.search(
        rf"<!-- measured:{re.escape(name)} -->\n(.*?)<!-- /measured:{re.escape(name)} -->",
        PAGE.read_text(encoding="utf-8"),
        re.DOTALL,
    )
    assert found, f"{PAGE.name} has no block {name!r}: run scripts/isolation_docs.py"
    lines = [line for line in found.group(1).splitlines() if line.startswith("|")]
    assert lines, f"block {name!r} is empty: run scripts/isolation_docs.py"
    return lines


def table(outcomes: list[Outcome]) -> list[str]:
    return to_markdown(outcomes, caption=False).splitlines()


def marks_only(lines: list[str]) -> list[str]:
    return [re.sub(r"✓ \w+", "✓", line) for line in lines]


def check(name: str, outcomes: list[Outcome]) -> None:
    assert block(name) == table(outcomes), (
        f"the {name} table in {PAGE.name} is not what the database does now; "
        "if the change is real, run scripts/isolation_docs.py"
    )
    assert marks_only(block(f"{name}-how")) == table(outcomes)


def test_sqlite_table_is_current(sqlite_outcomes: list[Outcome]) -> None:
    check("sqlite", sqlite_outcomes)


@pytest.mark.postgres
def test_postgresql_table_is_current(pg_outcomes: list[Outcome]) -> None:
    check("postgresql", pg_outcomes)


@pytest.mark.mariadb
def test_mariadb_table_is_current(mariadb_outcomes: list[Outcome]) -> None:
    check("mariadb", mariadb_outcomes)


def test_the_consistency_page_shows_the_same_tables() -> None:
    """docs/explanation/consistency.md repeats the three outcome tables; both
    pages are written by scripts/isolation_docs.py and must agree."""
    summary = PAGE.with_name("consistency.md").read_text(encoding="utf-8")
    found = re.search(
        r"<!-- measured:summary -->\n(.*?)<!-- /measured:summary -->", summary, re.DOTALL
    )
    assert found, "consistency.md has no summary block: run scripts/isolation_docs.py"
    shown = [line for line in found.group(1).splitlines() if line.startswith("|")]
    assert shown == block("sqlite") + block("postgresql") + block("mariadb")
