"""The ``unbundled`` command: CliRunner for breadth, the real console script for proof.

Every test runs on a real SQLite file. The subprocess tests run the installed
entry point, pipe real stdin, and tail a record appended by another process.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

import unbundled
from unbundled import Log
from unbundled.cli import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS_SCRIPT = ROOT / "scripts" / "cli_docs.py"
PAGE = ROOT / "docs" / "reference" / "cli.md"
WAIT_S = 30.0  # generous deadline for a subprocess to react; never a timing assertion


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "cli.db")


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


# --- topics -------------------------------------------------------------------


def test_version_and_help() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert unbundled.__version__ in result.stdout
    result = CliRunner().invoke(cli, ["-h"])
    assert result.exit_code == 0
    assert "topics" in result.stdout and "consume" in result.stdout


def test_topics_lifecycle(db: str) -> None:
    run(db, "topics", "create", "orders", "--partitions", "3")
    again = run(db, "topics", "create", "orders", "--partitions", "3", code=4)
    assert "error:" in again.stderr and "orders" in again.stderr
    run(db, "topics", "create", "orders", "--partitions", "3", "--exist-ok")
    run(db, "topics", "create", "orders", "--partitions", "2", "--exist-ok", code=4)
    run(db, "topics", "create", "facts", "--cleanup-policy", "compact")

    listed = json.loads(run(db, "topics", "list", "--json").stdout)
    assert [(t["name"], t["config"]["partitions"]) for t in listed] == [
        ("facts", 1),
        ("orders", 3),
    ]
    assert listed[0]["config"]["cleanup_policy"] == "compact"
    described = json.loads(run(db, "topics", "describe", "orders", "--json").stdout)
    assert [p["partition"] for p in described["partitions"]] == [0, 1, 2]
    table = run(db, "topics", "describe", "orders").stdout
    for column in ("partition", "start", "end", "records", "bytes"):
        assert column in table

    # Declining the confirmation keeps the topic; --yes or "y" deletes it.
    run(db, "topics", "delete", "orders", input="n\n", code=1)
    assert "orders" in run(db, "topics", "list").stdout
    run(db, "topics", "delete", "orders", input="y\n")
    run(db, "topics", "delete", "facts", "--yes")
    assert json.loads(run(db, "topics", "list", "--json").stdout) == []
    run(db, "topics", "delete", "facts", "--yes", code=3)


def test_reading_a_missing_database_does_not_create_it(db: str) -> None:
    result = run(db, "topics", "list", code=3)
    assert "no database" in result.stderr
    assert not os.path.exists(db)


def test_store_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "env.db"
    runner = CliRunner(env={"UNBUNDLED_URL": f"sqlite:///{path}"})
    assert runner.invoke(cli, ["topics", "create", "t"]).exit_code == 0
    assert path.exists()
    assert "t" in run(str(path), "topics", "list").stdout
    # memory:// is a fresh, empty store per invocation.
    memory = CliRunner(env={"UNBUNDLED_URL": "memory://"})
    assert memory.invoke(cli, ["topics", "create", "t"]).exit_code == 0
    assert json.loads(memory.invoke(cli, ["topics", "list", "--json"]).stdout) == []


# --- produce and consume ------------------------------------------------------


def test_produce_then_consume_round_trip(db: str) -> None:
    run(db, "topics", "create", "lines")
    lines = [f"record {i}" for i in range(2500)]
    produced = run(
        db,
        "produce",
        "lines",
        "--print-positions",
        "--batch-records",
        "1000",
        "--progress",
        input="\n".join(lines) + "\n",
    )
    positions = [tuple(map(int, row.split("\t"))) for row in produced.stdout.splitlines()]
    assert positions == [(0, i) for i in range(2500)]
    assert "appended 2,500 records" in produced.stderr

    plain = run(db, "consume", "lines", "--from-beginning", "--progress")
    assert plain.stdout.splitlines() == lines
    records = json_lines(run(db, "consume", "lines", "--from-beginning", "--json").stdout)
    assert [r["value"] for r in records] == lines
    assert [r["offset"] for r in records] == list(range(2500))
    assert set(records[0]) == {
        "topic",
        "partition",
        "offset",
        "key",
        "value",
        "headers",
        "timestamp",
    }
    # Without --from-beginning a consumer starts at the end: nothing old.
    assert run(db, "consume", "lines").stdout == ""
    assert len(run(db, "consume", "lines", "--from-beginning", "-n", "7").stdout.splitlines()) == 7


def test_keys_headers_and_binary_values(db: str) -> None:
    run(db, "topics", "create", "events", "--partitions", "4")
    docs = [{"user": f"u{i % 3}", "n": i} for i in range(30)]
    run(
        db,
        "produce",
        "events",
        "--json",
        "--key-field",
        "user",
        "-H",
        "source=cli",
        input="".join(json.dumps(d) + "\n\n" for d in docs),  # blank lines are skipped
    )
    records = json_lines(run(db, "consume", "events", "--from-beginning", "--json").stdout)
    assert sorted(json.loads(r["value"])["n"] for r in records) == list(range(30))
    partition_of: dict[str, set[int]] = {}
    for r in records:
        assert r["key"] == json.loads(r["value"])["user"]
        assert r["headers"] == [{"name": "source", "value": "cli"}]
        partition_of.setdefault(r["key"], set()).add(r["partition"])
    assert all(len(parts) == 1 for parts in partition_of.values())

    run(db, "topics", "create", "raw")
    run(db, "produce", "raw", "--key", "k", input=b"text\r\n\xff\xfe\x00\n")
    raw = json_lines(run(db, "consume", "raw", "--from-beginning", "--json").stdout)
    assert raw[0]["value"] == "text" and raw[0]["key"] == "k"  # CRLF stripped
    assert raw[1]["value_encoding"] == "base64"
    assert base64.b64decode(raw[1]["value"]) == b"\xff\xfe\x00"
    assert "\ufffd" in run(db, "consume", "raw", "--from-beginning").stdout


def test_bad_json_line_is_named_and_earlier_lines_are_kept(db: str) -> None:
    run(db, "topics", "create", "t")
    result = run(
        db,
        "produce",
        "t",
        "--json",
        input='{"a": 1}\n[2]\n{"oops"\n{"a": 4}\n',
        code=2,
    )
    assert "error: line 3" in result.stderr
    assert "JSON" in result.stderr
    values = run(db, "consume", "t", "--from-beginning").stdout.splitlines()
    assert values == ['{"a": 1}', "[2]"]

    missing = run(db, "produce", "t", "--json", "--key-field", "id", input='{"x": 1}\n', code=2)
    assert "line 1" in missing.stderr and "id" in missing.stderr


def test_typed_errors_exit_by_kind(db: str) -> None:
    run(db, "topics", "create", "small", "--record-bytes-max", "100", "--partitions", "2")
    for args in (
        ("produce", "nope"),
        ("consume", "nope", "--from-beginning"),
        ("topics", "describe", "nope"),
        ("groups", "describe", "nope"),
    ):
        result = run(db, *args, input="x\n", code=3)
        assert result.stderr.startswith("error:"), args
    run(db, "produce", "small", "--partition", "5", input="x\n", code=2)
    run(db, "consume", "small", "--partition", "5", code=2)
    too_big = run(db, "produce", "small", input="ok\n" + "x" * 500 + "\n", code=5)
    assert "line 2" in too_big.stderr and "record_bytes_max" in too_big.stderr
    assert run(db, "consume", "small", "--from-beginning").stdout == "ok\n"
    run(db, "topics", "create", "bad", "--partitions", "0", code=2)
    run(db, "topics", "create", "compacted", "--cleanup-policy", "compact")
    keyless = run(db, "produce", "compacted", input="no key\n", code=2)
    assert "line 1" in keyless.stderr and "key" in keyless.stderr
    # click's own usage errors use status 2 as well.
    run(db, "produce", "small", "--key-field", "id", input="", code=2)


# --- groups -------------------------------------------------------------------


def group_info(db: str, group: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run(db, "groups", "describe", group, "--json").stdout)
    return data


def test_group_consume_commits_what_it_printed(db: str) -> None:
    run(db, "topics", "create", "jobs")
    run(db, "produce", "jobs", input="".join(f"job{i}\n" for i in range(5)))

    first = run(db, "consume", "jobs", "--group", "w", "--from-beginning", "--max-records", "3")
    assert first.stdout.splitlines() == ["job0", "job1", "job2"]
    info = group_info(db, "w")
    assert info["members"] == []  # closed consumers leave the group at once
    assert [(p["committed"], p["end_offset"], p["lag"]) for p in info["partitions"]] == [(3, 5, 2)]

    assert run(db, "consume", "jobs", "-g", "w").stdout.splitlines() == ["job3", "job4"]
    assert group_info(db, "w")["lag"] == 0
    run(db, "produce", "jobs", input="job5\n")
    assert group_info(db, "w")["lag"] == 1
    assert run(db, "consume", "jobs", "-g", "w", "--from-beginning").stdout == "job5\n"

    listed = json.loads(run(db, "groups", "list", "--json").stdout)
    assert listed == [{"name": "w", "generation": listed[0]["generation"], "members": 0,
                       "partitions": 1, "lag": 0}]  # fmt: skip
    assert "w" in run(db, "groups", "describe", "w").stdout


def test_group_starting_at_the_end_resumes_there(db: str) -> None:
    """A group that started at the end commits that position, so records
    appended between two runs are not skipped by a second reset to the end."""
    run(db, "topics", "create", "t", "--partitions", "2")
    run(db, "produce", "t", input="old\n")
    assert run(db, "consume", "t", "--group", "late").stdout == ""
    assert group_info(db, "late")["lag"] == 0
    run(db, "produce", "t", input="new\n")
    assert run(db, "consume", "t", "--group", "late").stdout == "new\n"


def test_consume_one_partition_of_several_topics(db: str) -> None:
    for name in ("a", "b"):
        run(db, "topics", "create", name, "--partitions", "2")
        for partition in (0, 1):
            run(db, "produce", name, "-p", str(partition), input=f"{name}{partition}\n")
    result = run(db, "consume", "a", "b", "--from-beginning", "--partition", "1", "--json")
    assert sorted((r["topic"], r["partition"], r["value"]) for r in json_lines(result.stdout)) == [
        ("a", 1, "a1"),
        ("b", 1, "b1"),
    ]


def test_maintain_applies_retention(db: str) -> None:
    run(db, "topics", "create", "short", "--retention-bytes", "10")
    run(db, "produce", "short", input="".join(f"{i:04}\n" for i in range(50)))
    report = json.loads(run(db, "maintain", "--json").stdout)
    assert report["removed"]["short"] > 0
    [partition] = json.loads(run(db, "topics", "describe", "short", "--json").stdout)["partitions"]
    assert partition["start_offset"] == report["removed"]["short"]
    assert partition["bytes"] <= 10
    assert "nothing to remove" in run(db, "maintain").stdout


def test_demo_command_exists() -> None:
    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0 and "demo" in result.stdout
    if importlib.util.find_spec("unbundled.demo") is None:
        missing = CliRunner().invoke(cli, ["demo"])
        assert missing.exit_code == 8 and "error:" in missing.stderr


# --- the generated reference page ---------------------------------------------


def load_docs_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_docs", DOCS_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_command_has_help_and_is_in_the_reference() -> None:
    page = PAGE.read_text(encoding="utf-8")
    found = load_docs_script().commands()
    paths = [path for path, _, _ in found]
    assert {"unbundled topics create", "unbundled produce", "unbundled groups describe"} <= set(
        paths
    )
    for path, command, _ in found:
        assert command.help, f"{path} has no help"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{path} {param.opts} has no help"
        assert f"## `{path}`" in page, f"{path} is missing from {PAGE.name}"


def test_reference_page_is_current() -> None:
    check = subprocess.run(
        [sys.executable, str(DOCS_SCRIPT), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr


# --- the installed console script, in real processes --------------------------


def console_script() -> str:
    beside = Path(sys.executable).with_name("unbundled")
    found = str(beside) if beside.exists() else shutil.which("unbundled")
    assert found, "the unbundled console script is not installed (pip install -e .)"
    return found


def script(db: str, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [console_script(), "--db", db, "--sync", "normal", *args],
        input=input,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_console_script_end_to_end(db: str) -> None:
    assert script(db, "topics", "create", "t", "--partitions", "3").returncode == 0
    produced = script(db, "produce", "t", input=b"".join(b"v%d\n" % i for i in range(100)))
    assert produced.returncode == 0, produced.stderr
    consumed = script(db, "consume", "t", "--from-beginning", "--json")
    assert consumed.returncode == 0, consumed.stderr
    values = sorted(json.loads(line)["value"] for line in consumed.stdout.splitlines())
    assert values == sorted(f"v{i}" for i in range(100))

    grouped = script(db, "consume", "t", "--group", "g", "--from-beginning")
    assert sorted(grouped.stdout.splitlines()) == sorted(f"v{i}".encode() for i in range(100))
    lag = json.loads(script(db, "groups", "describe", "g", "--json").stdout)
    assert lag["lag"] == 0 and all(p["lag"] == 0 for p in lag["partitions"])

    unknown = script(db, "consume", "missing")
    assert unknown.returncode == 3
    assert unknown.stderr.startswith(b"error:") and b"Traceback" not in unknown.stderr
    bad = script(db, "produce", "t", "--json", input=b'{"ok": 1}\nnot json\n')
    assert bad.returncode == 2
    assert b"line 2" in bad.stderr and b"Traceback" not in bad.stderr


def lines_of(
    proc: subprocess.Popen[bytes],
    into: queue.Queue[bytes] | None = None,
    *,
    stderr: bool = False,
) -> queue.Queue[bytes]:
    """Read the process's stdout (or stderr) lines on a thread (into a queue,
    shared if given), so the test can wait for them with a deadline."""
    lines: queue.Queue[bytes] = queue.Queue() if into is None else into
    stream = proc.stderr if stderr else proc.stdout
    assert stream is not None

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def default_sigint() -> None:
    # A background parent may ignore SIGINT, which the child would inherit.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen(args: Sequence[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=default_sigint,  # noqa: PLW1509 (no threads are started before it runs)
    )


def test_produce_appends_a_pausing_input_at_once(db: str) -> None:
    """A line from a slow pipe is appended when it arrives, not when a batch fills."""
    run(db, "topics", "create", "t")
    proc = popen([console_script(), "--db", db, "produce", "t"])
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"first\n")
        proc.stdin.flush()
        with Log.open(db) as log, log.consumer("t", offset_reset="earliest") as consumer:
            got = consumer.poll(WAIT_S)
            assert [r.value for r in got] == [b"first"]
            assert proc.poll() is None  # still running: the input is not closed
        proc.stdin.close()
        assert proc.wait(WAIT_S) == 0
    finally:
        proc.kill()
        proc.wait()
    assert proc.stderr is not None
    assert b"appended 1 record" in proc.stderr.read()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_follow_tails_another_process_and_leaves_cleanly(db: str, stop: signal.Signals) -> None:
    run(db, "topics", "create", "t")
    args = ["consume", "t", "--group", "tail", "--from-beginning", "--follow", "--json"]
    proc = popen([console_script(), "--db", db, *args])
    try:
        lines = lines_of(proc)
        with Log.open(db) as log:
            log.append("t", b"appended elsewhere", key=b"k")
        record = json.loads(lines.get(timeout=WAIT_S))
        assert (record["value"], record["key"], record["offset"]) == ("appended elsewhere", "k", 0)
        assert proc.poll() is None  # --follow keeps tailing
        proc.send_signal(stop)
        assert proc.wait(WAIT_S) == 128 + stop  # stopped by a signal, and it says so
    finally:
        proc.kill()
        proc.wait()
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert b"Traceback" not in stderr and b"consumed 1 record" in stderr
    info = group_info(db, "tail")
    assert info["members"] == []  # left at once, not after the lease expired
    assert [(p["committed"], p["lag"]) for p in info["partitions"]] == [(1, 0)]


def collect(lines: queue.Queue[bytes], into: set[bytes], count: int) -> None:
    """Gather distinct lines until ``into`` holds ``count``, or fail at the
    deadline (at-least-once may repeat a record; a set ignores that)."""
    deadline = time.monotonic() + WAIT_S
    while len(into) < count and (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(queue.Empty):
            into.add(lines.get(timeout=left).strip())
    assert len(into) >= count, f"got {len(into)} of {count} records"


def test_group_members_share_partitions_and_hand_over(db: str) -> None:
    """Two `consume --group --follow` processes split the partitions; when one
    is terminated, the other takes over its partitions and nothing is lost."""
    run(db, "topics", "create", "t", "--partitions", "4")
    args = [console_script(), "--db", db, "consume", "t", "-g", "g", "-f", "--from-beginning"]
    procs = [popen(args), popen(args)]
    try:
        lines: queue.Queue[bytes] = queue.Queue()
        for proc in procs:
            lines_of(proc, lines)
        got: set[bytes] = set()
        with Log.open(db) as log:
            # Both members in their poll loop (so SIGTERM finds the handler).
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline and (
                "g" not in log.groups() or len(log.describe_group("g").members) < 2
            ):
                time.sleep(0.05)
            for i in range(200):
                log.append("t", b"r%d" % i, key=b"k%d" % (i % 17))
            collect(lines, got, 200)
            procs[0].terminate()
            assert procs[0].wait(WAIT_S) == 128 + signal.SIGTERM
            assert len(group_info(db, "g")["members"]) == 1  # left at once
            for i in range(200, 300):
                log.append("t", b"r%d" % i, key=b"k%d" % (i % 17))
            collect(lines, got, 300)
        procs[1].terminate()
        assert procs[1].wait(WAIT_S) == 128 + signal.SIGTERM
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert got == {b"r%d" % i for i in range(300)}
    assert group_info(db, "g")["lag"] == 0


def test_consume_as_a_static_member_keeps_its_partitions_for_its_restart(db: str) -> None:
    """`consume --instance-id` joins as a static member: stopping keeps its
    partitions (no rebalance), and a restart under the same id takes them back
    at once (not after the 10 s lease) and resumes after what it committed."""
    run(db, "topics", "create", "jobs", "--partitions", "2")
    run(db, "produce", "jobs", "--key", "k", input="".join(f"job{i}\n" for i in range(6)))
    args = ["consume", "jobs", "-g", "w", "--instance-id", "worker-1", "--from-beginning"]
    first = run(db, *args, "--max-records", "4")
    assert first.stdout.splitlines() == ["job0", "job1", "job2", "job3"]
    info = group_info(db, "w")
    [member] = info["members"]
    assert member["instance_id"] == "worker-1"  # still a member: its restart is expected
    assert len(member["partitions"]) == 2
    table = run(db, "groups", "describe", "w").stdout
    assert "worker-1" in table and "instance" in table
    # --timeout 0: one poll. A dynamic member would find both partitions still
    # held by the old member's lease and print nothing.
    second = run(db, *args, "--timeout", "0")
    assert second.stdout.splitlines() == ["job4", "job5"]
    [again] = group_info(db, "w")["members"]
    assert again["instance_id"] == "worker-1" and again["member_id"] != member["member_id"]
    refused = run(db, "consume", "jobs", "--instance-id", "worker-1", code=2)
    assert "--group" in refused.stderr
