"""A file of an older format, read by a command that only reads.

Read-only commands open SQLite files with ``?mode=ro``, but reading an older
format needs the upgrade (its tables and checksums), which writes. The CLI
chose read-only by itself, so it opens the file as given and upgrades it; a
program that asked for ``mode=ro`` gets ``NotSupported`` saying why.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests._formats import downgrade
from unbundled import Log, NotSupported
from unbundled.backends.sqlite import _schema
from unbundled.cli import cli


def _version(path: Path) -> int:
    raw = sqlite3.connect(path)
    try:
        return int(raw.execute("PRAGMA user_version").fetchone()[0])
    finally:
        raw.close()


@pytest.fixture
def old_file(tmp_path: Path) -> Path:
    path = tmp_path / "old.db"
    with Log.open(path, sync="off") as log:
        log.create_topic("t")
        log.append_batch("t", [b"a", b"b"])
    downgrade(path, 4)
    assert _version(path) == 4
    return path


def test_a_read_command_upgrades_an_older_file_and_reads_it(old_file: Path) -> None:
    result = CliRunner().invoke(cli, ["--db", str(old_file), "consume", "t", "--from-beginning"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stdout.splitlines() == ["a", "b"]
    assert _version(old_file) == _schema.FORMAT_VERSION


def test_an_explicit_read_only_open_of_an_older_file_says_why(old_file: Path) -> None:
    with pytest.raises(NotSupported, match="needs the upgrade") as caught:
        Log.open(f"sqlite:///{old_file}?mode=ro")
    assert caught.value.details["upgrade"] is True
    assert _version(old_file) == 4  # nothing written
    result = CliRunner().invoke(cli, ["--db", f"sqlite:///{old_file}?mode=ro", "topics", "list"])
    assert result.exit_code == 8 and "open it once without mode=ro" in result.stderr
    assert _version(old_file) == 4
