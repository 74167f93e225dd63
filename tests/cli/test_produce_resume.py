"""``unbundled produce --producer-id``: an interrupted import run again skips
what it appended before and appends the rest, each line exactly once (issue 9,
item 6: the resume recipe of docs/how-to/exactly-once.md, from the CLI)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from unbundled import Log

from .test_cli import WAIT_S, console_script, popen, run

LINES = [b"payment %d" % n for n in range(1000)]


def stored(db: str) -> list[bytes | None]:
    with Log.open(db) as log:
        return [r.value for r in log.scan("t")]


def produce(db: str, lines: list[bytes], *options: str, code: int = 0) -> str:
    """Run ``produce t --producer-id imp`` on ``lines``; its stderr."""
    text = b"\n".join(lines) + b"\n"
    return run(db, "produce", "t", "--producer-id", "imp", *options, input=text, code=code).stderr


def test_the_same_input_again_appends_only_what_is_missing(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.db")
    run(db, "topics", "create", "t")
    assert "appended 120 records" in produce(db, LINES[:120], "--batch-records", "7")
    again = produce(db, LINES, "--batch-records", "7")
    assert "appended 880 records" in again and "skipped 120 line" in again
    assert stored(db) == LINES
    done = produce(db, LINES)
    assert "appended 0 records" in done and "skipped 1,000 line" in done
    assert stored(db) == LINES
    bad = run(db, "produce", "t", "--producer-id", "", input=b"x\n", code=2)
    assert "producer id ''" in bad.stderr


def test_an_import_killed_midway_resumes_exactly_once(tmp_path: Path) -> None:
    """SIGKILL the real console script while it appends from a pipe, then run
    it again on the whole input: nothing lost, nothing doubled, in order."""
    db = str(tmp_path / "cli.db")
    run(db, "topics", "create", "t")
    args = [console_script(), "--db", db, "produce", "t", "--producer-id", "imp"]
    proc = popen([*args, "--batch-records", "5"])
    try:
        assert proc.stdin is not None
        for n in range(0, 600, 50):  # in pieces: each piece is appended as it arrives
            proc.stdin.write(b"".join(line + b"\n" for line in LINES[n : n + 50]))
            proc.stdin.flush()
        deadline = time.monotonic() + WAIT_S
        while len(stored(db)) < 100:  # well into the input, then kill it
            assert time.monotonic() < deadline, "the import never got going"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT_S)
    finally:
        proc.kill()
        proc.wait()
    before = stored(db)
    assert 100 <= len(before) <= 600 and before == LINES[: len(before)]
    again = subprocess.run(
        args, input=b"\n".join(LINES) + b"\n", capture_output=True, timeout=60, check=False
    )
    assert again.returncode == 0, again.stderr
    assert f"skipped {len(before):,} line".encode() in again.stderr
    assert stored(db) == LINES
