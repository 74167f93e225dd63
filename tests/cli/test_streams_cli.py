"""``unbundled streams``: run, status, reset and heartbeat on a real SQLite
file with the windowed-count example; bad input exits with its error's
status and a message naming the value; a SIGTERM'd ``streams run`` stops
cleanly and a rerun ends with the very output of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import unbundled
from unbundled.cli import cli
from unbundled.examples import exactly_once_processing as balances
from unbundled.examples import windowed_count

from .test_cli import console_script

WAIT_S = 60.0  # a deadline for a subprocess to react; never a timing assertion
CLICKS = "unbundled.examples.windowed_count:flow"
BALANCES = "unbundled.examples.exactly_once_processing:flow"
SRC = str(Path(unbundled.__file__).resolve().parents[1])  # the code under test, for subprocesses


def streams(db: str, *args: str, code: int = 0) -> Result:
    """``unbundled streams ARGS --db DB`` (the command's own --db), checked for ``code``."""
    result = CliRunner().invoke(cli, ["--sync", "off", "streams", *args, "--db", db])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture
def clicks_db(tmp_path: Path) -> str:
    path = str(tmp_path / "clicks.db")
    with unbundled.open(path, sync="off") as db:
        windowed_count.produce(db)
    return path


def topic_records(path: str, topic: str) -> list[tuple[int, bytes | None, bytes | None, int]]:
    with unbundled.open(path) as db:
        return [
            (r.partition, r.key, r.value, r.timestamp)
            for p in sorted(db.log.end_offsets(topic))
            for r in db.log.scan(topic, p)
        ]


# --- end to end ---------------------------------------------------------------


def test_run_status_heartbeat_reset_end_to_end(clicks_db: str, tmp_path: Path) -> None:
    done = json.loads(streams(clicks_db, "run", CLICKS, "--until-end", "--json").stdout)
    assert (done["records_in"], done["late"], done["stopped"]) == (20, 1, None)
    expected = windowed_count.main(str(tmp_path / "reference.db"))  # the example's own run
    assert windowed_count.result_rows(clicks_db) == expected

    status = json.loads(streams(clicks_db, "status", "clicks-per-user", "--json").stdout)
    parts = status["partitions"]
    assert [p["partition"] for p in parts] == [0, 1]
    assert all(p["lag"] == 0 and p["committed"] == p["end"] == p["offset"] for p in parts)
    assert sum(p["records"] for p in parts) == 20 and sum(p["late"] for p in parts) == 1
    assert status["workers"] == []
    table = streams(clicks_db, "status", "clicks-per-user").stdout
    assert "watermark" in table and "2023-11-14 22:14:08.000" in table

    # A heartbeat reaches every partition and the next run consumes it.
    said = streams(clicks_db, "heartbeat", "clicks", "--time", "1700000100000").stdout
    assert "2 partition(s) of clicks" in said
    streams(clicks_db, "run", CLICKS, "--until-end")
    status = json.loads(streams(clicks_db, "status", "clicks-per-user", "--json").stdout)
    assert {p["watermark"] for p in status["partitions"]} == {1700000100000 - 2000}

    refused = streams(clicks_db, "reset", "clicks-per-user", code=2)
    assert "--yes" in refused.stderr
    reset = json.loads(streams(clicks_db, "reset", "clicks-per-user", "--yes", "--json").stdout)
    assert reset["rewound"] == 2 and reset["keys_deleted"] >= 2
    status = json.loads(streams(clicks_db, "status", "clicks-per-user", "--json").stdout)
    assert all(p["committed"] == 0 and not p["state"] for p in status["partitions"])

    # From the start again: the table (upserts) is the same; the topic got it all twice.
    counts_before = len(topic_records(clicks_db, windowed_count.TARGET))
    streams(clicks_db, "run", CLICKS, "--until-end")
    assert windowed_count.result_rows(clicks_db) == expected
    assert len(topic_records(clicks_db, windowed_count.TARGET)) == 2 * counts_before


def test_a_flow_factory_in_the_current_directory(
    clicks_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_flows.py").write_text(
        "from unbundled.streams import Flow\n"
        "def make():\n"
        "    f = Flow('lengths')\n"
        "    f.source('clicks').map(len).to_topic('lengths')\n"
        "    return f\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # undone after the test
    streams(clicks_db, "run", "my_flows:make", "--until-end", "--epoch-records", "3")
    assert len(topic_records(clicks_db, "lengths")) == len(windowed_count.CLICKS)


def test_status_shows_the_segment_after_a_repartitioning_key_by(
    clicks_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "by_page.py").write_text(
        "from unbundled.streams import Flow, Tumbling\n"
        "flow = Flow('by-page', out_of_orderness_ms=1000)\n"
        "flow.source('clicks').key_by(lambda v: v['page'])"
        ".window(Tumbling(10_000)).count().to_topic('pages')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    streams(clicks_db, "run", "by_page:flow", "--until-end", "--heartbeat", "0.05")
    shown = json.loads(streams(clicks_db, "status", "by-page", "--json").stdout)
    (segment,) = shown["segments"]
    assert segment["topic"] == "by-page.by-1" and segment["lag"] == 0
    assert segment["records"] > 0
    assert "after key_by #1 (by-page.by-1)" in streams(clicks_db, "status", "by-page").stdout
    streams(clicks_db, "run", "by_page:flow", "--heartbeat", "0", code=2)


# --- bad input ------------------------------------------------------------------


BAD = [
    (["run", "no_such_module_x:flow"], 3, "no_such_module_x"),
    (["run", "unbundled.examples.windowed_count:nope"], 3, "'nope'"),
    (["run", "unbundled.examples.windowed_count:TABLE"], 2, "windowed_count:TABLE is a str"),
    (["run", "unbundled.examples.windowed_count:produce"], 2, "needs arguments (db)"),
    (["run", "no-colon"], 2, "'no-colon' is not MODULE:ATTR"),
    (["run", CLICKS, "--epoch-records", "0"], 2, "'--epoch-records': 0 is not in the range"),
    (["run", CLICKS, "--epoch-interval", "nan"], 2, "nan is not a number of seconds"),
    (["run", CLICKS, "--lease", "99999"], 2, "'--lease': 99999"),
    (["run", CLICKS, "--poll-records", "x"], 2, "'x' is not a valid integer"),
    (["heartbeat", "clicks", "--time", "-1"], 2, "'--time': -1 is not in the range"),
    (["heartbeat", "no-such-topic"], 3, "'no-such-topic'"),
    (["status", "no-such-flow"], 3, "no flow 'no-such-flow'"),
    (["reset", "no-such-flow", "--yes"], 3, "no flow 'no-such-flow'"),
]


@pytest.mark.parametrize(("args", "code", "named"), BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_input_exits_with_its_status_and_names_the_value(
    clicks_db: str, args: list[str], code: int, named: str
) -> None:
    result = streams(clicks_db, *args, code=code)
    message = result.stderr.strip().splitlines()[-1]  # one line, the last
    assert named in message, result.stderr


def test_an_operator_that_raises_exits_2_and_commits_nothing(
    clicks_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_flow.py").write_text(
        "from unbundled.streams import Flow\n"
        "flow = Flow('broken')\n"
        "flow.source('clicks').map(lambda v: 1 / 0).to_topic('never')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = streams(clicks_db, "run", "broken_flow:flow", "--until-end", code=2)
    assert "map#1 raised ZeroDivisionError" in result.stderr
    with unbundled.open(clicks_db) as db:
        assert "streams.broken" not in db.log.groups()


def test_a_store_that_does_not_serve_the_log_is_refused(tmp_path: Path) -> None:
    result = streams("redis://127.0.0.1:6379", "status", "x", code=8)
    assert "works on the log" in result.stderr


# --- SIGTERM ---------------------------------------------------------------------


def _committed(path: str) -> int:
    with unbundled.open(path) as db:
        if "streams.balances" not in db.log.groups():
            return 0
        return sum(c or 0 for c, _, _ in db.log.lag("streams.balances").values())


def _start(path: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [console_script(), "--db", path, "--sync", "normal", "streams", "run", BALANCES, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _wait_for(condition: Any, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert proc.poll() is None, (what, proc.communicate())
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_sigterm_stops_run_cleanly_and_a_rerun_gives_the_same_output(tmp_path: Path) -> None:
    items = balances.payments(6000)
    paths = [str(tmp_path / "stopped.db"), str(tmp_path / "reference.db")]
    for path in paths:
        with unbundled.open(path, sync="off") as db:
            balances.produce(db, items)
    stopped, reference = paths

    proc = _start(stopped, "--epoch-records", "50", "--poll-records", "50")
    try:
        _wait_for(lambda: _committed(stopped) >= 500, "the first epochs", proc)
        # A live worker: reset refuses (conflict), naming it.
        refused = streams(stopped, "reset", "balances", "--yes", code=4)
        assert "live worker" in refused.stderr
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert b"Traceback" not in err
    assert err.decode().strip().splitlines()[-1].startswith("stopped (SIGTERM): flow balances:")
    status = json.loads(streams(stopped, "status", "balances", "--json").stdout)
    assert status["workers"] == []  # it left the group: nobody holds the partitions
    assert 0 < sum(p["committed"] or 0 for p in status["partitions"]) <= len(items)

    streams(stopped, "run", BALANCES, "--until-end")
    streams(reference, "run", BALANCES, "--until-end", "--epoch-records", "7")
    assert topic_records(stopped, balances.TARGET) == topic_records(reference, balances.TARGET)
    assert balances.check(stopped, items) == balances.check(reference, items)
