"""``unbundled kv``: the key-value store from the shell; answers in the exit status."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.cli.test_cli import console_script
from unbundled.cli import cli
from unbundled.consistency import KV


def kv(db: Path, *args: str, input: bytes | None = None, code: int = 0) -> Result:
    result = CliRunner().invoke(
        cli, ["--db", str(db), "--sync", "off", "kv", *args], input=input, catch_exceptions=False
    )
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "kv.db"


def test_put_get_and_versions(db: Path) -> None:
    assert kv(db, "put", "leader", "node-a").stdout == "1\n"
    assert kv(db, "put", "leader", "node-b").stdout == "2\n"
    assert kv(db, "get", "leader").stdout == "node-b"  # the value alone, no newline added
    shown = json.loads(kv(db, "get", "leader", "--json").stdout)
    assert shown == {"key": "leader", "version": 2, "value": "node-b", "encoding": "utf-8"}
    with KV.open(db) as store:  # the same store the library sees
        assert store.read("leader") == (b"node-b", 2)


def test_values_from_stdin_are_bytes_as_they_are(db: Path) -> None:
    raw = bytes(range(256))
    kv(db, "put", "blob", "-", input=raw)
    assert kv(db, "get", "blob").stdout_bytes == raw
    shown = json.loads(kv(db, "get", "blob", "--json").stdout)
    assert shown["encoding"] == "base64"
    kv(db, "put", "doc", '{"a": [1, 2]}')
    assert json.loads(kv(db, "get", "doc", "--json").stdout)["value"] == {"a": [1, 2]}


def test_an_absent_key_exits_3(db: Path) -> None:
    missing = kv(db, "get", "x", code=3)  # no file yet: a mistyped --db is not "absent"
    assert "no database at" in missing.stderr and "unbundled kv put" in missing.stderr
    assert not db.exists()
    kv(db, "put", "x", "1")
    assert kv(db, "delete", "x").stdout == "deleted\n"
    assert kv(db, "delete", "x").stdout == "absent\n"
    assert "key 'x' is absent" in kv(db, "get", "x", code=3).stderr


def test_compare_and_set_answers_in_the_exit_status(db: Path) -> None:
    assert kv(db, "cas", "lock", "host-1", "--absent").stdout == "swapped\n"
    taken = kv(db, "cas", "lock", "host-2", "--absent", code=4)
    assert "did not match; nothing changed (it is at version 1)" in taken.stderr
    kv(db, "cas", "lock", "host-2", "--expected-version", "2", code=4)
    kv(db, "cas", "lock", "host-2", "--expected-value", "host-3", code=4)
    assert kv(db, "get", "lock").stdout == "host-1"
    kv(db, "cas", "lock", "host-2", "--expected-value", "host-1")
    kv(db, "cas", "lock", "host-3", "--expected-version", "2")
    assert json.loads(kv(db, "get", "lock", "--json").stdout)["version"] == 3
    kv(db, "delete", "lock")  # version 4: a tombstone keeps counting
    kv(db, "cas", "lock", "host-1", "--expected-version", "3", code=4)  # no ABA
    kv(db, "cas", "lock", "host-1", "--expected-version", "0")  # 0: absent
    assert json.loads(kv(db, "get", "lock", "--json").stdout)["version"] == 5


@pytest.mark.parametrize(
    "options",
    [[], ["--absent", "--expected-version", "1"], ["--expected-value", "a", "--absent"]],
)
def test_compare_and_set_needs_exactly_one_expectation(db: Path, options: list[str]) -> None:
    result = kv(db, "cas", "k", "v", *options, code=2)
    assert "give exactly one of --expected-version, --expected-value, --absent" in result.stderr
    assert not db.exists()  # refused before anything was opened


def test_a_shell_lock_with_the_installed_command(db: Path) -> None:
    def cas(holder: str) -> int:
        command = [console_script(), "--db", str(db), "kv", "cas", "lock", holder, "--absent"]
        return subprocess.run(command, check=False, capture_output=True, timeout=60).returncode

    assert [cas("a"), cas("b")] == [0, 4]
