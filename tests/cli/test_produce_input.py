"""``unbundled produce`` reading stdin: linear in the input, bounded in memory.

A line that can never become a record (longer than the topic's
``record_bytes_max``) is refused as soon as it passes that bound, without
holding the rest of it: the real console script reads real pipes here, and
the memory it used is measured by a wrapper process (its children's peak RSS).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from unbundled import Log
from unbundled.cli._lines import LineSplitter

from .test_cli import console_script, run

LINE_BYTES = 200_000_000  # the 200 MB line
# The process's peak resident memory, with a topic of the default 1 MiB
# record_bytes_max: Python, the library and rich take some 40 MB; holding
# the 200 MB line once (let alone its copies) would pass this bound at once.
RSS_BYTES_MAX = 150 * 1024 * 1024
HANG_S = 120.0  # a deadline only against a hang (the old code needed minutes)

# Runs argv[2:] and writes the peak RSS of its children (KiB on Linux) to argv[1].
_MEASURE = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:])\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(rc)\n"
)


def produce_from_shell(
    tmp_path: Path, db: str, source: str, *args: str
) -> tuple[subprocess.CompletedProcess[bytes], int]:
    """``<source> | unbundled produce t <args>`` in a real shell pipe; the
    result and the peak RSS in bytes of the processes in the pipe."""
    rss_file = tmp_path / "rss"
    pipeline = f"{source} | {console_script()} --db {db} --sync off produce t {' '.join(args)}"
    argv = [sys.executable, "-c", _MEASURE, str(rss_file), "sh", "-c", pipeline]
    # A session of its own, so a hang kills the whole pipe, not only the wrapper.
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=HANG_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    result = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    return result, int(rss_file.read_text()) * 1024


def test_a_200_mb_line_from_a_pipe_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    db = str(tmp_path / "big.db")
    run(db, "topics", "create", "t")
    result, rss = produce_from_shell(
        tmp_path, db, f"(printf 'first\\n'; head -c {LINE_BYTES} /dev/zero; printf '\\nlast\\n')"
    )
    assert result.returncode == 5, result.stderr
    stderr = result.stderr.decode()
    assert "line 2 is longer than 1,048,576 bytes" in stderr, stderr
    assert "record_bytes_max of topic 't'" in stderr
    assert "Traceback" not in stderr
    assert rss < RSS_BYTES_MAX, f"peak RSS {rss:,} bytes"
    with Log.open(db) as log:  # the line before it was appended, nothing after
        assert [r.value for r in log.read("t")] == [b"first"]


def test_skip_leaves_the_long_line_out_and_goes_on(tmp_path: Path) -> None:
    db = str(tmp_path / "skip.db")
    run(db, "topics", "create", "t")
    result, rss = produce_from_shell(
        tmp_path,
        db,
        f"(printf 'first\\n'; head -c {LINE_BYTES} /dev/zero; printf '\\nlast\\n')",
        "--on-oversize",
        "skip",
    )
    assert result.returncode == 0, result.stderr
    stderr = result.stderr.decode()
    assert "skipped: line 2 is longer than 1,048,576 bytes" in stderr, stderr
    assert "appended 2 records to 't' (partition 0); skipped 1 line" in stderr
    assert rss < RSS_BYTES_MAX, f"peak RSS {rss:,} bytes"
    with Log.open(db) as log:
        assert [r.value for r in log.read("t")] == [b"first", b"last"]


def test_an_endless_line_stops_with_the_error(tmp_path: Path) -> None:
    """`cat /dev/zero | unbundled produce t` used to grow without bound."""
    db = str(tmp_path / "zero.db")
    run(db, "topics", "create", "t", "--record-bytes-max", "1000")
    result, rss = produce_from_shell(tmp_path, db, "cat /dev/zero")
    assert result.returncode == 5, result.stderr
    assert b"line 1 is longer than 1,000 bytes" in result.stderr
    assert rss < RSS_BYTES_MAX, f"peak RSS {rss:,} bytes"


def test_the_limit_counts_the_key_headers_and_a_crlf(tmp_path: Path) -> None:
    """A value that fits beside the key and headers is appended, one byte
    more is refused; a CRLF line end is not part of the value."""
    db = str(tmp_path / "exact.db")
    run(db, "topics", "create", "t", "--record-bytes-max", "100")
    fits = b"x" * (100 - 2 - len("h") - 3)  # key "kk", header h=abc
    args = ("produce", "t", "--key", "kk", "-H", "h=abc")
    run(db, *args, input=fits + b"\r\n" + fits + b"\n")
    refused = run(db, *args, input=fits + b"yz\n", code=5)
    assert f"line 1 is longer than {len(fits)} bytes" in refused.stderr
    assert "(100 bytes with the key and headers)" in refused.stderr
    # One byte over (the room a "\r" would take) is refused by the record check.
    refused = run(db, *args, input=fits + b"y\n", code=5)
    assert "line 1: record of 101 bytes exceeds the record_bytes_max of topic 't'" in (
        refused.stderr
    )
    with Log.open(db) as log:
        assert [r.value for r in log.read("t")] == [fits, fits]


# --- the splitter itself --------------------------------------------------------


def reference_lines(data: bytes, limit: int) -> list[bytes | None]:
    """What the splitter must give: ``data``'s lines, None for each too long."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line if len(line) <= limit else None for line in lines]


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(
        st.sampled_from([b"\n", b"a", b"bb", b"c" * 7, b"\r\n", b"\n\n", b"x" * 40]), max_size=60
    ).map(b"".join),
    limit=st.integers(0, 30),
    cuts=st.lists(st.integers(1, 50), min_size=1, max_size=20),
)
def test_splitter_agrees_with_split_for_any_chunking(
    data: bytes, limit: int, cuts: list[int]
) -> None:
    """However the input is cut into chunks: the same lines, the same
    numbers, too-long lines reported once, and never more than the limit held."""
    splitter = LineSplitter(limit)
    got: list[tuple[int, bytes | None]] = []
    start = 0
    turn = 0
    while start < len(data):
        size = cuts[turn % len(cuts)]
        turn += 1
        for line in splitter.feed(data[start : start + size]):
            got.append((splitter.number, line))
        assert splitter.held_bytes <= limit
        start += size
    for line in splitter.finish():
        got.append((splitter.number, line))
    expected = reference_lines(data, limit)
    assert got == list(enumerate(expected, 1))
