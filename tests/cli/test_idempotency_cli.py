"""``unbundled idempotency``: show, list and purge records written by the library.

Every test runs on a real SQLite file; one runs the installed console script
in a real process while another process holds a key.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from unbundled.idempotency import Idempotency

from .test_cli import console_script

DAY_MS = 24 * 3600 * 1000


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "idem.db")


def run(db: str, *args: str, code: int = 0) -> Result:
    from unbundled.cli import cli

    result = CliRunner().invoke(cli, ["--db", db, "--sync", "off", *args], catch_exceptions=False)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def seed(db: str) -> None:
    """order-1 completed with a JSON result and a phase; order-2 in progress
    (a worker holds it); order-3 a stored deterministic error; old-1 and old-2
    expired (written two days ago)."""
    with Idempotency.open(db, sync="off") as idem:
        with idem.run("order-1", {"amount": 10}) as attempt:
            idem.phase(attempt, "reserve", lambda: {"reservation": "r-1"})
            idem.complete(attempt, {"charged": 10})
        # A worker holds order-2 (claimed, never completed).
        idem.backend.claim("order-2", idem.fingerprint({"amount": 20}), 60_000, DAY_MS)
        with idem.run("order-3", {"amount": -1}) as attempt:
            idem.fail(attempt, ValueError("amount must be positive"))
    two_days_ago = int(time.time() * 1000) - 2 * DAY_MS
    with Idempotency.open(db, sync="off", clock=lambda: two_days_ago) as old:
        old.call("old-1", None, lambda attempt: "done")
        old.call("old-2", None, lambda attempt: "done")


def test_show_prints_a_completed_record(db: str) -> None:
    seed(db)
    shown = run(db, "idempotency", "show", "order-1").stdout
    assert "completed" in shown
    assert '{"charged":10}' in shown
    assert "phase reserve" in shown and "r-1" in shown

    record = json.loads(run(db, "idempotency", "show", "order-1", "--json").stdout)
    assert record["key"] == "order-1"
    assert record["state"] == "completed"
    assert record["token"] == 1
    assert record["error"] is False
    assert record["result"] == {"value": {"charged": 10}, "encoding": "json"}
    assert record["phases"] == {"reserve": {"value": {"reservation": "r-1"}, "encoding": "json"}}
    assert record["lease_until_ms"] == 0
    assert record["expires_ms"] > record["created_ms"]


def test_show_an_in_progress_key_and_a_stored_error(db: str) -> None:
    seed(db)
    busy = json.loads(run(db, "idempotency", "show", "order-2", "--json").stdout)
    assert busy["state"] == "in_progress" and busy["result"] is None
    assert busy["lease_until_ms"] > int(time.time() * 1000) - 60_000
    assert "s left" in run(db, "idempotency", "show", "order-2").stdout

    failed = json.loads(run(db, "idempotency", "show", "order-3", "--json").stdout)
    assert failed["error"] is True
    assert failed["result"]["value"]["message"] == "amount must be positive"


def test_show_a_binary_result_as_base64(db: str) -> None:
    with Idempotency.open(db, sync="off", encode=bytes, decode=bytes) as idem:
        idem.call("blob", None, lambda attempt: b"\xff\x00")
    record = json.loads(run(db, "idempotency", "show", "blob", "--json").stdout)
    assert record["result"]["encoding"] == "base64"
    assert base64.b64decode(record["result"]["value"]) == b"\xff\x00"


def test_show_an_unknown_an_expired_or_a_bad_key(db: str) -> None:
    seed(db)
    missing = run(db, "idempotency", "show", "nope", code=3)
    assert "no idempotency record for key 'nope'" in missing.stderr
    run(db, "idempotency", "show", "old-1", code=3)  # expired counts as absent
    bad = run(db, "idempotency", "show", "has space", code=2)
    assert "must be 1 to 255 characters" in bad.stderr


def test_list_filters_by_state_and_pages(db: str) -> None:
    seed(db)
    everything = json.loads(run(db, "idempotency", "list", "--json").stdout)
    assert [r["key"] for r in everything] == ["order-1", "order-2", "order-3"]
    busy = json.loads(run(db, "idempotency", "list", "--state", "in_progress", "--json").stdout)
    assert [r["key"] for r in busy] == ["order-2"]
    done = json.loads(run(db, "idempotency", "list", "--state", "completed", "--json").stdout)
    assert [r["key"] for r in done] == ["order-1", "order-3"]
    page = json.loads(
        run(db, "idempotency", "list", "--after", "order-1", "--limit", "1", "--json").stdout
    )
    assert [r["key"] for r in page] == ["order-2"]

    table = run(db, "idempotency", "list").stdout
    for key in ("order-1", "order-2", "order-3"):
        assert key in table
    assert "error" in table and "in_progress" in table
    assert "old-1" not in table
    run(db, "idempotency", "list", "--state", "done", code=2)


def test_list_an_empty_store(db: str) -> None:
    Idempotency.open(db, sync="off").close()
    assert "no idempotency records" in run(db, "idempotency", "list").stdout
    assert json.loads(run(db, "idempotency", "list", "--json").stdout) == []


def test_purge_deletes_only_expired_records(db: str) -> None:
    seed(db)
    refused = run(db, "idempotency", "purge", code=2)
    assert "--expired" in refused.stderr
    assert json.loads(run(db, "idempotency", "purge", "--expired", "--json").stdout) == {
        "purged": 2
    }
    assert (
        "purged 0 expired idempotency records"
        in run(db, "idempotency", "purge", "--expired").stdout
    )
    remaining = json.loads(run(db, "idempotency", "list", "--json").stdout)
    assert [r["key"] for r in remaining] == ["order-1", "order-2", "order-3"]


def test_commands_refuse_a_missing_database(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.db")
    result = run(missing, "idempotency", "list", code=3)
    assert "no database" in result.stderr
    assert not Path(missing).exists()


def test_the_console_script_sees_a_key_held_by_another_process(db: str) -> None:
    """A real process claims a key and stays alive; the CLI, in another
    process, shows it in progress, then completed once that process finishes."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from unbundled.idempotency import Idempotency\n"
            f"idem = Idempotency.open({db!r}, sync='normal')\n"
            "with idem.run('pay-1', {'amount': 5}) as attempt:\n"
            "    print('claimed', flush=True)\n"
            "    sys.stdin.readline()\n"
            "    idem.complete(attempt, {'paid': 5})\n"
            "idem.close()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == b"claimed\n"
        busy = _script(db, "idempotency", "show", "pay-1", "--json")
        assert busy["state"] == "in_progress"
        holder.stdin.write(b"\n")
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
        done = _script(db, "idempotency", "show", "pay-1", "--json")
        assert done["state"] == "completed"
        assert done["result"]["value"] == {"paid": 5}
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def _script(db: str, *args: str) -> Any:
    out = subprocess.run(
        [console_script(), "--db", db, *args], capture_output=True, timeout=60, check=True
    )
    return json.loads(out.stdout)
