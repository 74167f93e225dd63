"""``unbundled events`` and ``unbundled projections``: CliRunner for breadth,
the installed console script in real processes for tailing and stdin.

Every test runs on a real SQLite file.
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from unbundled import NO_STREAM, EventStore
from unbundled.cli import cli
from unbundled.cli._events import event_json
from unbundled.eventstore import ANY, NewEvent, Projection, ProjectionTxn, StoredEvent, StreamWrite
from unbundled.testing.eventstore_contract import submit

from .test_cli import console_script, lines_of, popen

WAIT_S = 30.0  # generous deadline for a subprocess to react; never a timing assertion


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "events.db")


def run(db: str, *args: str, input: str | bytes | None = None, code: int = 0) -> Result:
    """Invoke the CLI on ``db`` and check its exit status."""
    result = CliRunner().invoke(
        cli, ["--db", db, "--sync", "off", *args], input=input, catch_exceptions=False
    )
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def json_lines(text: str) -> list[dict[str, Any]]:
    """Parse stdout as JSON lines: fails if anything else was printed there."""
    return [json.loads(line) for line in text.splitlines()]


def seed(db: str) -> None:
    """account-1: Opened, Deposited 5, Deposited 7; audit-1: Checked; account-2: Opened."""
    run(db, "events", "append", "account-1", "--type", "Opened", "--data", '{"owner": "ada"}')
    lines = (
        '{"type": "Deposited", "data": {"amount": 5}}\n'
        "\n"  # blank lines are skipped
        '{"type": "Deposited", "data": {"amount": 7}}\n'
    )
    run(db, "events", "append", "account-1", "--expected-version", "0", input=lines)
    run(db, "events", "append", "audit-1", "--type", "Checked")
    run(db, "events", "append", "account-2", "--type", "Opened", "--data", '{"owner": "bob"}')


# --- append -------------------------------------------------------------------


def test_append_one_event_with_expected_versions(db: str) -> None:
    first = run(
        db,
        "events",
        "append",
        "account-1",
        "--type",
        "Opened",
        "--data",
        '{"owner": "ada"}',
        "--expected-version",
        "no-stream",
        "--json",
    )
    assert json.loads(first.stdout) == {
        "stream": "account-1",
        "first_version": 0,
        "last_version": 0,
        "positions": [1],
    }
    again = run(
        db,
        "events",
        "append",
        "account-1",
        "--type",
        "Opened",
        "--expected-version",
        "no-stream",
        code=4,
    )
    assert "error:" in again.stderr and "account-1" in again.stderr and "at 0" in again.stderr
    run(db, "events", "append", "account-1", "--type", "Closed", "--expected-version", "5", code=4)
    done = run(db, "events", "append", "account-1", "--type", "Closed", "--expected-version", "0")
    assert "appended 1 event to 'account-1': version 1, position 2" in done.stderr
    run(db, "events", "append", "account-1", "--type", "Noted", "--expected-version", "exists")
    run(db, "events", "append", "new-1", "--type", "Noted", "--expected-version", "exists", code=4)

    with EventStore.open(db) as store:
        events = store.read("account-1")
    assert [(e.type, e.event) for e in events] == [
        ("Opened", {"owner": "ada"}),
        ("Closed", {}),
        ("Noted", {}),
    ]


def test_append_with_an_id_is_safe_to_retry(db: str) -> None:
    event_id = str(uuid.uuid4())
    args = ("events", "append", "account-1", "--type", "Opened", "--id", event_id, "--json")
    first = json.loads(run(db, *args).stdout)
    retry = json.loads(run(db, *args).stdout)
    assert retry == first
    changed = run(db, "events", "append", "account-1", "--type", "Closed", "--id", event_id, code=4)
    assert "error:" in changed.stderr
    with EventStore.open(db) as store:
        assert [e.id for e in store.read("account-1")] == [event_id]


def test_append_json_lines_from_stdin(db: str) -> None:
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    lines = "".join(
        json.dumps(item) + "\n"
        for item in [
            {"type": "Opened", "data": {"owner": "ada"}, "id": ids[0]},
            {
                "type": "Deposited",
                "data": {"n": [1, 2]},
                "id": ids[1],
                "metadata": {"correlation_id": "c-1", "user": {"by": "cli"}},
            },
            {"type": "Deposited"},
        ]
    )
    out = json.loads(run(db, "events", "append", "account-1", "--json", input=lines).stdout)
    assert (out["first_version"], out["last_version"], out["positions"]) == (0, 2, [1, 2, 3])
    read = json_lines(run(db, "events", "read", "account-1", "--json").stdout)
    assert [e["id"] for e in read[:2]] == ids
    assert [e["data"] for e in read] == [{"owner": "ada"}, {"n": [1, 2]}, {}]
    assert read[1]["metadata"] == {"correlation_id": "c-1", "user": {"by": "cli"}}


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        ('{"type": "Ok"}\nnot json\n', "line 2"),
        ('{"type": "Ok"}\n{"data": {}}\n', "line 2"),
        ('{"type": "Ok", "id": "not-a-uuid"}\n', "line 1"),
        ('{"type": "Ok", "colour": 1}\n', "line 1"),
        ('{"type": "Ok", "metadata": {"who": 1}}\n', "line 1"),
        ('{"type": "Ok", "data": [1, 2]}\n', "line 1"),
    ],
)
def test_bad_stdin_line_is_named_and_nothing_is_appended(db: str, lines: str, named: str) -> None:
    bad = run(db, "events", "append", "account-1", input=lines, code=2)
    assert named in bad.stderr
    with EventStore.open(db) as store:
        assert store.state("account-1").version == NO_STREAM


def test_append_usage_errors(db: str) -> None:
    run(db, "events", "append", "account-1", "--type", "T", "--expected-version", "soon", code=2)
    run(db, "events", "append", "account-1", "--type", "T", "--expected-version", "-3", code=2)
    run(db, "events", "append", "account-1", "--type", "T", "--data", "{oops", code=2)
    not_object = run(db, "events", "append", "account-1", "--type", "T", "--data", "[1]", code=2)
    assert "JSON object" in not_object.stderr
    run(db, "events", "append", "$all", "--type", "T", code=2)
    empty = run(db, "events", "append", "account-1", input="", code=2)
    assert "no events" in empty.stderr
    run(db, "events", "append", "account-1", "--id", str(uuid.uuid4()), input="", code=2)


# --- read ---------------------------------------------------------------------


def test_read_a_stream(db: str) -> None:
    seed(db)
    text = run(db, "events", "read", "account-1").stdout.splitlines()
    assert [line.split() for line in text] == [
        ["1", "account-1@0", "Opened", '{"owner":"ada"}'],
        ["2", "account-1@1", "Deposited", '{"amount":5}'],
        ["3", "account-1@2", "Deposited", '{"amount":7}'],
    ]

    def versions(*args: str) -> list[int]:
        out = run(db, "events", "read", "account-1", "--json", *args).stdout
        return [e["version"] for e in json_lines(out)]

    assert versions("--backwards") == [2, 1, 0]
    assert versions("--backwards", "--from", "1") == [1, 0]
    assert versions("--from", "1") == [1, 2]
    assert versions("--limit", "2") == [0, 1]
    assert versions("--type", "Deposited", "--limit", "1") == [1]
    assert versions("--from", "9") == []
    missing = run(db, "events", "read", "account-9", code=3)
    assert "account-9" in missing.stderr
    run(db, "events", "read", "account-1", "--category", "account", code=2)


def test_read_all_in_global_order_with_filters(db: str) -> None:
    seed(db)

    def positions(*args: str) -> list[int]:
        out = run(db, "events", "read", "$all", "--json", *args).stdout
        return [e["position"] for e in json_lines(out)]

    assert positions() == [1, 2, 3, 4, 5]
    assert positions("--from", "3") == [3, 4, 5]
    assert positions("--limit", "2") == [1, 2]
    assert positions("--category", "account") == [1, 2, 3, 5]
    assert positions("--category", "audit", "--category", "account", "--limit", "4") == [1, 2, 3, 4]
    assert positions("--type", "Opened") == [1, 5]
    assert positions("--backwards") == [5, 4, 3, 2, 1]
    assert positions("--backwards", "--limit", "2") == [5, 4]
    assert positions("--backwards", "--from", "3", "--type", "Opened") == [1]

    with EventStore.open(db) as store:
        expected = [event_json(e) for e in store.read_all_raw()]
    assert json_lines(run(db, "events", "read", "$all", "--json").stdout) == expected


def test_read_shows_data_that_is_not_json_as_base64(db: str) -> None:
    with EventStore.open(db) as store:
        # The facade refuses such data now; older versions or other tools may
        # have stored it, so it is written through the backend.
        blob = NewEvent(str(uuid.uuid4()), "Blob", b"\xff\x00raw")
        submit(store, [StreamWrite("blob-1", ANY, [blob])])
    (event,) = json_lines(run(db, "events", "read", "blob-1", "--json").stdout)
    assert (event["data"], event["data_encoding"]) == ("/wByYXc=", "base64")


def test_read_all_pages_past_a_thousand_events(db: str) -> None:
    lines = "".join(json.dumps({"type": "N", "data": {"n": i}}) + "\n" for i in range(2_345))
    run(db, "events", "append", "numbers-1", input=lines)
    out = json_lines(run(db, "events", "read", "$all", "--json").stdout)
    assert [e["data"]["n"] for e in out] == list(range(2_345))
    back = json_lines(run(db, "events", "read", "numbers-1", "--backwards", "--json").stdout)
    assert [e["version"] for e in back] == list(range(2_344, -1, -1))


def test_reading_a_missing_database_does_not_create_it(db: str) -> None:
    for args in (["events", "read", "$all"], ["events", "streams"], ["projections", "status"]):
        result = run(db, *args, code=3)
        assert "no database" in result.stderr
    assert not Path(db).exists()


# --- streams ------------------------------------------------------------------


def test_streams_lists_live_streams(db: str) -> None:
    seed(db)
    assert run(db, "events", "streams").stdout.split() == ["account-1", "account-2", "audit-1"]
    assert json.loads(run(db, "events", "streams", "--json", "--category", "account").stdout) == [
        "account-1",
        "account-2",
    ]
    with EventStore.open(db) as store:
        store.delete("account-2")
    assert json.loads(run(db, "events", "streams", "--json").stdout) == ["account-1", "audit-1"]


# --- subscribe ----------------------------------------------------------------


def test_subscribe_catches_up_filters_and_says_where_to_resume(db: str) -> None:
    seed(db)
    got = run(db, "events", "subscribe", "--after", "0", "--json", "--max-events", "3")
    assert [e["position"] for e in json_lines(got.stdout)] == [1, 2, 3]
    assert "received 3 events; resume with --after 3" in got.stderr
    rest = run(db, "events", "subscribe", "--after", "3", "--timeout", "0.05", "--json")
    assert [e["position"] for e in json_lines(rest.stdout)] == [4, 5]
    assert "resume with --after 5" in rest.stderr
    typed = run(
        db,
        "events",
        "subscribe",
        "--after",
        "0",
        "--type",
        "Opened",
        "--category",
        "account",
        "--timeout",
        "0.05",
    )
    assert [line.split()[1] for line in typed.stdout.splitlines()] == ["account-1@0", "account-2@0"]
    assert "resume with --after 5" in typed.stderr
    # A filtered subscription stopped by --max-events resumes right after the
    # last event it printed, not after events it read but did not print.
    one = run(db, "events", "subscribe", "--after", "0", "--type", "Deposited", "-n", "1")
    assert [line.split()[0] for line in one.stdout.splitlines()] == ["2"]
    assert "received 1 event; resume with --after 2" in one.stderr
    # subscribe and read print the same JSON for the same events.
    tailed = run(db, "events", "subscribe", "--after", "0", "--json", "--timeout", "0.05")
    assert tailed.stdout == run(db, "events", "read", "$all", "--json").stdout
    # By default only new events: none arrive before the timeout.
    new = run(db, "events", "subscribe", "--timeout", "0.05")
    assert new.stdout == "" and "received 0 events; resume with --after 5" in new.stderr


def test_subscribe_tails_another_process_and_stops_on_sigint(db: str) -> None:
    """The real console script: events appended by this process reach a
    `subscribe` process, which exits 130 on Ctrl-C saying where to resume; the
    events are appended through another real `events append` process too."""
    run(db, "events", "append", "account-1", "--type", "Opened")
    proc = popen([console_script(), "--db", db, "events", "subscribe", "--after", "0", "--json"])
    try:
        lines = lines_of(proc)
        assert json.loads(lines.get(timeout=WAIT_S))["position"] == 1
        appended = subprocess.run(
            [console_script(), "--db", db, "events", "append", "account-1"],
            input=b'{"type": "Deposited", "data": {"amount": 5}}\n',
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert appended.returncode == 0, appended.stderr
        second = json.loads(lines.get(timeout=WAIT_S))
        assert (second["position"], second["data"]) == (2, {"amount": 5})
        with EventStore.open(db) as store:
            store.append("account-1", [NewEvent(str(uuid.uuid4()), "Withdrawn", b"{}")], 1)
        assert json.loads(lines.get(timeout=WAIT_S))["type"] == "Withdrawn"
        assert proc.poll() is None  # still tailing
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT_S) == 130  # 128 + SIGINT, like every command
    finally:
        proc.kill()
        proc.wait()
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert b"Traceback" not in stderr
    assert b"stopped: received 3 events; resume with --after 3" in stderr


# --- projections --------------------------------------------------------------


def project(db: str, name: str, upto: int, docs: dict[str, bytes]) -> None:
    """Move projection ``name`` from 0 to ``upto``, writing ``docs`` to collection "balances"."""

    def apply(txn: ProjectionTxn) -> None:
        for key, value in docs.items():
            txn.put("balances", key, value)

    with EventStore.open(db) as store:
        store.backend.project(name, 0, upto, apply)


def test_projections_status_shows_checkpoint_and_lag(db: str) -> None:
    seed(db)
    assert "no projections (safe position 5)" in run(db, "projections", "status").stdout
    assert json.loads(run(db, "projections", "status", "--json").stdout) == []
    project(db, "balances", 3, {"account-1": b"12"})
    project(db, "audit", 5, {})
    status = json.loads(run(db, "projections", "status", "--json").stdout)
    # An array, as documented: one object per projection, sorted by name.
    assert status == [
        {"name": "audit", "checkpoint": 5, "lag": 0, "safe_position": 5},
        {"name": "balances", "checkpoint": 3, "lag": 2, "safe_position": 5},
    ]
    table = run(db, "projections", "status").stdout
    assert "balances" in table and "audit" in table and "safe position 5" in table


class Balances(Projection):
    """Sums the amounts of each account's events (the CLI knows no classes:
    the events decode as dicts)."""

    name = "balances"
    categories = ("account",)
    collections = ("balances",)

    def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
        old = int(txn.get("balances", event.stream) or b"0")
        txn.put("balances", event.stream, b"%d" % (old + event.event.get("amount", 0)))


def balances(db: str, *, catch_up: bool = True) -> dict[str, bytes]:
    with EventStore.open(db) as store:
        if catch_up:
            store.projections(Balances()).catch_up()
        return dict(store.backend.list_documents("balances", "", 10))


def test_projections_rebuild_resets_checkpoint_and_documents(db: str) -> None:
    seed(db)
    built = balances(db)
    assert built == {"account-1": b"12", "account-2": b"0"}
    missing = run(db, "projections", "rebuild", "balance", "--yes", code=3)
    assert "balance" in missing.stderr and "balances" in missing.stderr
    # Declining the question changes nothing.
    run(db, "projections", "rebuild", "balances", input="n\n", code=1)
    with EventStore.open(db) as store:
        assert store.backend.checkpoints() == {"balances": 5}
    assert balances(db, catch_up=False) == built
    # No --collection needed: the runner recorded the projection's collections.
    done = run(db, "projections", "rebuild", "balances", "--yes")
    assert "reset to 0 (was 5); emptied balances" in done.stderr
    with EventStore.open(db) as store:
        assert store.backend.checkpoints() == {"balances": 0}
    assert balances(db, catch_up=False) == {}
    status = json.loads(run(db, "projections", "status", "--json").stdout)
    assert status == [{"name": "balances", "checkpoint": 0, "lag": 5, "safe_position": 5}]
    assert balances(db) == built, "the replay ends where the first build did, not doubled"


def test_projections_rebuild_refuses_a_projection_it_knows_nothing_of(db: str) -> None:
    seed(db)
    project(db, "legacy", 5, {"account-1": b"12"})  # no runner ever described it
    refused = run(db, "projections", "rebuild", "legacy", "--yes", code=2)
    assert "no stored description" in refused.stderr
    with EventStore.open(db) as store:
        assert store.backend.checkpoints() == {"legacy": 5}
        assert store.backend.get_document("balances", "account-1") == b"12"
