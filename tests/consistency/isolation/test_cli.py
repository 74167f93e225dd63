"""``unbundled check isolation``: the table, --json, --level, --markdown, errors.

CliRunner for breadth (as tests/cli does), one run of the installed console
script for proof. Most runs choose a few tests and one SQLite journal mode, so
they take a second or two; one runs PostgreSQL's whole suite through --json.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from tests.conftest import require_server
from tests.consistency.isolation.test_hermitage import POSTGRESQL
from unbundled.cli import cli
from unbundled.consistency.isolation import TEST_NAMES

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def run(*args: str, columns: int | None = None) -> Result:
    env = None if columns is None else {"COLUMNS": str(columns)}
    return CliRunner().invoke(cli, ["check", "isolation", *args], env=env)


def sqlite_url(tmp_path: Path, modes: str = "wal") -> str:
    return f"sqlite:///{tmp_path}/x.db?journal_mode={modes}"


def test_json_is_a_list_of_outcomes_with_transcripts(tmp_path: Path) -> None:
    result = run(sqlite_url(tmp_path), "--test", "P4", "--test", "g0", "--json")
    assert result.exit_code == 0, result.output
    outcomes = json.loads(result.stdout)
    assert [(o["level"], o["test"], o["outcome"]) for o in outcomes] == [
        ("serializable", "G0", "prevented"),  # Hermitage's order, whatever the options' order
        ("serializable", "P4", "prevented"),
    ]
    p4 = outcomes[1]
    assert p4["setting"] == "journal_mode=wal" and p4["how"] == "abort"
    assert p4["database"].startswith("SQLite ")
    assert [e["step"] for e in p4["transcript"]] == list(range(1, 9))
    assert set(p4["transcript"][0]) == {
        "step",
        "connection",
        "statement",
        "rows",
        "rowcount",
        "error",
        "blocked",
        "queued",
        "skipped",
        "completed_after",
    }
    assert p4["transcript"][2]["rows"] == [[1, 10]]
    assert p4["transcript"][5]["error"].startswith("SQLITE_BUSY")
    assert p4["transcript"][7]["skipped"] is True
    assert not list(tmp_path.iterdir())  # each test's file is gone


@pytest.mark.postgres
def test_json_names_every_test_and_postgresql_level() -> None:
    require_server("postgres")
    result = run(PG_URL, "--json")
    assert result.exit_code == 0, result.output
    outcomes = json.loads(result.stdout)
    assert [o["test"] for o in outcomes] == list(TEST_NAMES) * 3
    assert [o["level"] for o in outcomes[:: len(TEST_NAMES)]] == [
        "read committed",
        "repeatable read",
        "serializable",
    ]
    assert {o["level"]: {} for o in outcomes}.keys() == POSTGRESQL.keys()
    table: dict[str, dict[str, str]] = {}
    for o in outcomes:
        table.setdefault(o["level"], {})[o["test"]] = o["outcome"]
    assert table == POSTGRESQL
    # The CLI's run cleaned up after itself too.
    names = sorted(
        {
            n
            for o in outcomes
            for e in o["transcript"]
            for n in re.findall(r"hermitage_\w+", e["statement"])
        }
    )
    assert len(names) == len(outcomes)
    with psycopg.connect(PG_URL) as conn:
        left = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name = ANY(%s)", (names,)
        ).fetchall()
    assert left == []


@pytest.mark.postgres
def test_level_filter_takes_the_databases_name_in_any_case() -> None:
    require_server("postgres")
    result = run(PG_URL, "--level", "Repeatable Read", "--test", "P4", "--json")
    assert result.exit_code == 0, result.output
    assert [(o["level"], o["test"], o["outcome"]) for o in json.loads(result.stdout)] == [
        ("repeatable read", "P4", "prevented")
    ]


@pytest.mark.mariadb
def test_level_filter_takes_a_rows_full_label() -> None:
    require_server("mariadb")
    label = "repeatable read, innodb_snapshot_isolation=ON"
    result = run("mysql://root@127.0.0.1:3306/test", "--level", label, "--test", "P4", "--json")
    assert result.exit_code == 0, result.output
    (only,) = json.loads(result.stdout)
    assert (only["level"], only["setting"], only["outcome"]) == (
        "repeatable read",
        "innodb_snapshot_isolation=ON",
        "prevented",
    )


def test_markdown_is_written(tmp_path: Path) -> None:
    page = tmp_path / "table.md"
    result = run(
        sqlite_url(tmp_path, "delete,wal"), "--test", "G0", "--test", "G2", "--markdown", str(page)
    )
    assert result.exit_code == 0, result.output
    assert page.read_text(encoding="utf-8").splitlines() == [
        f"**SQLite {__import__('sqlite3').sqlite_version}**",
        "",
        "| level | G0 | G2 |",
        "|:--|:-:|:-:|",
        "| serializable, journal_mode=delete | ✓ | ✓ |",
        "| serializable, journal_mode=wal | ✓ | ✓ |",
    ]
    assert "serializable, journal_mode=delete" in result.stdout  # the table is printed as well


def test_narrow_terminal_gets_a_row_per_test_and_a_legend(tmp_path: Path) -> None:
    result = run(sqlite_url(tmp_path, "delete,wal"), columns=80)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if "test" in line and "delete" in line)
    assert header.split("┃")[1:4] == [" test                     ", " delete ", " wal "]
    rows = [line for line in lines if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == list(TEST_NAMES)
    assert all(r.count("✓") == 2 for r in rows)
    assert "every column: serializable, journal_mode=<column>" in lines
    assert lines[-1] == "✓ prevented   ✗ anomaly"


@pytest.mark.mariadb
def test_narrow_terminal_abbreviates_levels_in_a_legend() -> None:
    require_server("mariadb")
    # Two tests fit across 80 columns; across 50 they do not, and the turned table does.
    result = run("mysql://root@127.0.0.1:3306/test", "--test", "P4", "--test", "G0", columns=50)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 50
    header = next(line for line in lines if line.startswith("┃"))
    assert [h.strip() for h in header.split("┃")[1:-1]] == [
        "test",
        "RU",
        "RC",
        "RR OFF",
        "RR ON",
        "SER",
    ]
    p4 = next(line for line in lines if line.startswith("│ P4 "))
    assert [c.strip() for c in p4.split("│")[2:-1]] == ["✗", "✗", "✗", "✓", "✓"]
    legend = " ".join(result.stdout.split())  # rich wraps the legend's lines at 50 columns
    assert "RR ON: repeatable read, innodb_snapshot_isolation=ON" in legend


def test_wide_terminal_gets_hermitages_shape(tmp_path: Path) -> None:
    result = run(sqlite_url(tmp_path), "--test", "G0", "--test", "G-single-write-predicate")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if line.startswith("┃"))
    assert [h.strip() for h in header.split("┃")[1:-1]] == [
        "level",
        "G0",
        "G-single-write-predicate",
    ]
    assert "│ serializable, journal_mode=wal │" in result.stdout


def test_transcripts_print_every_step(tmp_path: Path) -> None:
    result = run(sqlite_url(tmp_path), "--test", "G0", "--transcripts", columns=200)
    assert result.exit_code == 0, result.output
    assert "serializable, journal_mode=wal G0: prevented" in result.stdout
    assert " 4 T2: UPDATE test SET value = 12 WHERE id = 1  ->  BLOCKED, then 1 row(s)" in (
        result.stdout
    )


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["foo://x"], 2, "cannot test 'foo://x': use sqlite:///path"),
        (["sqlite://", "--level", "read committed"], 2, "has no isolation level 'read committed'"),
        (["sqlite://", "--test", "G3"], 2, "no test named 'G3'; the tests are: G0, G1a"),
        (["sqlite://?journal_mode=bogus"], 2, "unknown SQLite journal_mode 'bogus'"),
        # A typo in a test name is reported before any connection is tried.
        (["mysql://root@127.0.0.1:1/test", "--test", "P5"], 2, "no test named 'P5'"),
        (["mysql://root@127.0.0.1:1/test"], 7, "cannot connect to 127.0.0.1"),
    ],
)
def test_bad_input_says_which_value(args: list[str], status: int, message: str) -> None:
    result = run(*args)
    assert result.exit_code == status, result.output
    assert message in result.stderr
    assert result.stdout == ""


def test_unknown_level_lists_the_choices() -> None:
    result = run("sqlite://?journal_mode=wal", "--level", "snapshot")
    assert result.exit_code == 2
    assert "choose from: 'serializable', 'serializable, journal_mode=wal'" in result.stderr


def test_unwritable_markdown_path_is_a_usage_error(tmp_path: Path) -> None:
    result = run(
        sqlite_url(tmp_path), "--test", "G0", "--markdown", str(tmp_path / "no" / "dir.md")
    )
    assert result.exit_code == 2
    assert "cannot write" in result.stderr and "dir.md" in result.stderr
    assert "no such directory" in result.stderr  # said before a run, not after it


def test_console_script_prints_json(tmp_path: Path) -> None:
    exe = shutil.which("unbundled", path=str(Path(sys.executable).parent))
    assert exe is not None
    done = subprocess.run(
        [exe, "check", "isolation", sqlite_url(tmp_path, "delete"), "--test", "G1c", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (outcome,) = json.loads(done.stdout)
    expected: dict[str, Any] = {
        "level": "serializable",
        "setting": "journal_mode=delete",
        "test": "G1c",
        "outcome": "prevented",
    }
    assert {k: outcome[k] for k in expected} == expected
    assert len(outcome["transcript"]) == 8
    assert done.stderr == ""
