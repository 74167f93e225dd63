"""Every long command stops alike on Ctrl-C and SIGTERM, and a progress
display never shares a terminal line with records.

Real processes of the installed console script: signals are sent to them,
and their output goes to a real pseudo-terminal, which a small terminal
model renders into the screen lines a person would see.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from unbundled import Log

from .test_cli import console_script, lines_of, popen, run

WAIT_S = 30.0  # a deadline against hangs, never a timing assertion
STOPS = [signal.SIGINT, signal.SIGTERM]


# --- signals --------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def appended(db: str, count: int) -> Callable[[], bool]:
    def check() -> bool:
        with Log.open(db) as log:
            return sum(log.end_offsets("t").values()) >= count

    return check


def start_produce(db: str) -> subprocess.Popen[bytes]:
    """A produce whose stdin stays open: it is waiting for more when stopped."""
    proc = popen([console_script(), "--db", db, "produce", "t"])
    assert proc.stdin is not None
    proc.stdin.write(b"one\ntwo\n")
    proc.stdin.flush()
    wait_for(appended(db, 2), "the first lines to be appended")
    return proc


def start_consume(db: str) -> subprocess.Popen[bytes]:
    with Log.open(db) as log:
        log.append("t", b"one")
        log.append("t", b"two")
    args = ["consume", "t", "--group", "g", "--from-beginning", "--follow"]
    proc = popen([console_script(), "--db", db, *args])
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"one\n"
    assert proc.stdout.readline() == b"two\n"
    return proc


def start_subscribe(db: str) -> subprocess.Popen[bytes]:
    run(db, "events", "append", "s-1", "--type", "One")
    run(db, "events", "append", "s-1", "--type", "Two")
    proc = popen([console_script(), "--db", db, "events", "subscribe", "--after", "0"])
    assert proc.stdout is not None
    assert b"One" in proc.stdout.readline() and b"Two" in proc.stdout.readline()
    return proc


COMMANDS: dict[str, tuple[Callable[[str], subprocess.Popen[bytes]], bytes]] = {
    "produce": (start_produce, b"interrupted: appended 2 records to 't' (partition 0)"),
    "consume": (start_consume, b"stopped: consumed 2 records, committed to group 'g'"),
    "events subscribe": (start_subscribe, b"stopped: received 2 events; resume with --after 2"),
}


@pytest.mark.parametrize("stop", STOPS, ids=[s.name for s in STOPS])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_long_commands_stop_alike_on_sigint_and_sigterm(
    tmp_path: Path, command: str, stop: signal.Signals
) -> None:
    """The summary is printed, the store closed (a consumer leaves its
    group), and the exit status is 128 + the signal: 130 or 143."""
    db = str(tmp_path / "stop.db")
    run(db, "topics", "create", "t")
    start, summary = COMMANDS[command]
    proc = start(db)
    try:
        proc.send_signal(stop)
        assert proc.wait(WAIT_S) == 128 + stop
    finally:
        proc.kill()
        proc.wait()
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert summary in stderr, stderr
    assert b"Traceback" not in stderr
    if command == "consume":
        with Log.open(db) as log:
            assert not log.describe_group("g").members  # left at once


def test_a_command_without_a_summary_says_it_was_interrupted(tmp_path: Path) -> None:
    """`events append` reading stdin has nothing to report: the root command
    says "interrupted" and the status is still 143."""
    db = str(tmp_path / "append.db")
    proc = popen([console_script(), "--db", db, "events", "append", "s-1"])
    try:
        # The handlers are installed once the store is open (it creates the file).
        wait_for(lambda: os.path.exists(db), "the store to be opened")
        lines = lines_of(proc, stderr=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT_S) == 143
        assert lines.get(timeout=WAIT_S) == b"interrupted (SIGTERM)\n"
    finally:
        proc.kill()
        proc.wait()


# --- progress on a terminal -----------------------------------------------------

_TOKEN = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])|\x1b\][^\x07]*\x07|[\r\n]|[^\x1b\r\n]")


def render(raw: bytes) -> list[str]:
    """The screen lines a terminal shows for ``raw`` (enough of VT100 for
    rich's live display: cursor up, erase line, column; colours ignored)."""
    rows: list[list[str]] = [[]]
    row = col = 0
    for match in _TOKEN.finditer(raw.decode("utf-8", "replace")):
        token, params, final = match.group(0), match.group(1), match.group(2)
        if token == "\r":
            col = 0
        elif token == "\n":
            row += 1
        elif final is not None:
            n = int(params) if params.isdigit() else None
            if final == "A":
                row = max(0, row - (n or 1))
            elif final == "B":
                row += n or 1
            elif final == "G":
                col = (n or 1) - 1
            elif final == "K":
                while len(rows) <= row:
                    rows.append([])
                if n == 2:
                    rows[row] = []
                elif n == 1:
                    rows[row][: col + 1] = [" "] * min(col + 1, len(rows[row]))
                else:
                    del rows[row][col:]
        elif not token.startswith("\x1b"):
            while len(rows) <= row:
                rows.append([])
            line = rows[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = token
            col += 1
    return ["".join(line).rstrip() for line in rows]


def on_terminal(args: list[str], *, stdout_to_terminal: bool, stdin: Path | None = None) -> bytes:
    """Run the console script with stderr (and stdout, if asked; else a
    pipe) on a pseudo-terminal; return what the terminal received."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "40"}
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open(stdin, "rb")) if stdin else subprocess.DEVNULL
        proc = subprocess.Popen(
            [console_script(), *args],
            stdin=source,
            stdout=slave if stdout_to_terminal else subprocess.PIPE,
            stderr=slave,
            env=env,
        )
    os.close(slave)
    if proc.stdout is not None:  # the pipe's reader: drained, as `| tee` would
        drain = proc.stdout
        threading.Thread(target=drain.read, daemon=True).start()
    received = bytearray()
    deadline = time.monotonic() + WAIT_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not data:
                break
            received += data
        assert proc.wait(WAIT_S) == 0, bytes(received)
    finally:
        os.close(master)
        proc.kill()
        proc.wait()
    return bytes(received)


def test_consume_progress_is_cleared_around_records_on_a_terminal(tmp_path: Path) -> None:
    db = str(tmp_path / "tty.db")
    run(db, "topics", "create", "t")
    records = [f"record-{i}" for i in range(3000)]
    run(db, "produce", "t", input="".join(f"{r}\n" for r in records))
    raw = on_terminal(
        ["--db", db, "consume", "t", "--from-beginning", "--progress"], stdout_to_terminal=True
    )
    assert b"consuming" in raw  # the display did run (and was cleared)
    screen = [line for line in render(raw) if line]
    assert screen == [*records, "consumed 3,000 records"]


def test_produce_progress_is_cleared_around_positions_on_a_terminal(tmp_path: Path) -> None:
    db = str(tmp_path / "tty.db")
    run(db, "topics", "create", "t")
    count = 120_000  # more than one read of stdin: positions print while the bar runs
    source = tmp_path / "in.txt"
    source.write_bytes(b"".join(b"value %016d\n" % i for i in range(count)))
    raw = on_terminal(
        ["--db", db, "produce", "t", "--print-positions", "--progress"],
        stdout_to_terminal=True,
        stdin=source,
    )
    assert b"appending" in raw
    screen = [line for line in render(raw) if line]
    assert screen == [
        *(f"0\t{i}" for i in range(count)),
        "appended 120,000 records to 't' " + "(partition 0)",
    ]


@pytest.mark.parametrize("command", ["consume", "produce"])
def test_no_progress_by_default_when_records_go_to_a_pipe(tmp_path: Path, command: str) -> None:
    """`consume ... | tee`: stdout is a pipe whose reader may print to the
    same terminal, so the display stays off unless asked for."""
    db = str(tmp_path / "pipe.db")
    run(db, "topics", "create", "t")
    source = tmp_path / "in.txt"
    source.write_bytes(b"".join(b"value %d\n" % i for i in range(3000)))
    run(db, "produce", "t", input=source.read_bytes())
    args = {
        "consume": ["consume", "t", "--from-beginning"],
        "produce": ["produce", "t", "--print-positions"],
    }[command]
    raw = on_terminal(["--db", db, *args], stdout_to_terminal=False, stdin=source)
    assert b"\x1b" not in raw, raw  # no live display: no cursor control at all
    assert render(raw)[-1].startswith(("consumed 3,000", "appended 3,000"))
