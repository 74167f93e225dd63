"""``unbundled destroy URL``: asks for the store's name, ``--yes`` skips the
question, ``--dry-run`` lists what would go; every refusal exits with the
error's status and drops nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from unbundled import Log
from unbundled.cli import cli


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "shop.db")
    with Log.open(path) as log:
        log.create_topic("orders")
    return path


def destroy(*args: str, input: str | None = None, code: int = 0) -> Result:
    result = CliRunner().invoke(cli, ["destroy", *args], input=input, catch_exceptions=False)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


@pytest.mark.parametrize("answer", ["shop.db\n", "SHOP.DB\n", "\n", ""])
def test_a_wrong_or_missing_answer_drops_nothing(db: str, answer: str) -> None:
    refused = destroy(db, input=answer, code=2)
    assert f"Type {db} to destroy it" in refused.stderr
    assert f"file {db}" in refused.stderr  # what would go, listed before the question
    assert "not confirmed: nothing was dropped" in refused.stderr
    assert Path(db).exists()


def test_typing_the_name_back_destroys_the_store(db: str) -> None:
    done = destroy(db, input=f"{db}\n")
    assert "dropped the SQLite store" in done.stdout
    assert not Path(db).exists()


def test_yes_skips_the_question(db: str) -> None:
    done = destroy(db, "--yes", "--json")
    report = json.loads(done.stdout)
    assert report["backend"] == "sqlite" and report["dry_run"] is False
    assert report["name"] == db and report["items"]
    assert not Path(db).exists()


def test_dry_run_lists_and_keeps(db: str) -> None:
    plan = json.loads(destroy(db, "--dry-run", "--json").stdout)
    assert plan["dry_run"] is True and plan["items"][0].startswith(f"file {db} (")
    assert "would drop the SQLite store" in destroy(db, "--dry-run").stdout
    assert Path(db).exists()


def test_refusals_exit_with_their_status(db: str, tmp_path: Path) -> None:
    missing = destroy(str(tmp_path / "nope.db"), "--yes", code=3)
    assert "nothing to destroy" in missing.stderr
    with Log.open(db):
        open_store = destroy(db, "--yes", code=2)
    assert "the store is open" in open_store.stderr
    assert Path(db).exists()


def test_the_url_is_an_argument_never_the_default_store(db: str) -> None:
    result = CliRunner(env={"UNBUNDLED_URL": db}).invoke(cli, ["destroy", "--yes"])
    assert result.exit_code == 2 and "Missing argument 'URL'" in result.stderr
    assert Path(db).exists()


def test_the_installed_command_asks_on_a_real_pipe(db: str) -> None:
    command = [str(Path(sys.executable).with_name("unbundled")), "destroy", db]
    run = subprocess.run(
        command, input=f"{db}\n", capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and not Path(db).exists()
