"""The log on PostgreSQL shared by processes.

Offsets are dense and in commit order: 4 appender processes (4 threads
each, mixing single appends and batches, so many transactions race for
each partition) write while 2 tailer processes follow both partitions; no
tailer ever sees offset k+1 before k, and each sees exactly what was
acknowledged, where it was acknowledged. A consumer in another process,
idle in ``poll``, is woken by NOTIFY when a record is appended here: it
neither misses it nor polls the table while it waits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from unbundled import Log

from ._log_children import PARTITIONS, STOP, TOPIC

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[3]
APPENDERS, THREADS, ITERATIONS = 4, 4, 24


def spawn(role: str, *args: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.backends.postgres._log_children", role, *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def ready(child: subprocess.Popen[bytes]) -> None:
    assert child.stdout is not None
    line = child.stdout.readline()
    error = child.stderr.read() if child.stderr and line != b"ready\n" else b""
    assert line == b"ready\n", f"child failed to start: {error!r}"


def report(child: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_tailers_never_see_an_offset_before_the_one_below_it(pg_url: str) -> None:
    with Log.open(pg_url, sync="normal") as log:
        log.create_topic(TOPIC, PARTITIONS)
    children: list[subprocess.Popen[bytes]] = []
    try:
        tailers = [spawn("tailer", pg_url) for _ in range(2)]
        children += tailers
        for child in tailers:
            ready(child)
        appenders = [spawn("appender", pg_url, f"a{n}", THREADS, ITERATIONS) for n in range(4)]
        children += appenders
        acked = [tuple(a) for child in appenders for a in report(child)["acked"]]
        with Log.open(pg_url, sync="normal") as log:
            for p in range(PARTITIONS):
                log.append(TOPIC, STOP, partition=p)
            stored = {p: [r.value for r in log.scan(TOPIC, p)] for p in range(PARTITIONS)}
        tailed = [report(child) for child in tailers]
    finally:
        stop_all(children)

    assert len(acked) == len(set(acked)) == sum(len(v) for v in stored.values()) - PARTITIONS
    for p, offset, value in acked:  # each record where its appender was told
        assert stored[p][offset] == value.encode()
    for got in tailed:
        assert got["jumps"] == []
        for p in range(PARTITIONS):
            assert [v.encode() for v in got["seen"][str(p)]] == stored[p]


def test_a_consumer_in_another_process_is_woken_by_notify(pg_url: str) -> None:
    with Log.open(pg_url, sync="normal") as log:
        log.create_topic(TOPIC, 1)
        child = spawn("consumer", pg_url, "g")
        try:
            ready(child)
            log.append(TOPIC, b"wake up")
            got = report(child)
        finally:
            stop_all([child])
        assert log.describe_group("g").committed == {(TOPIC, 0): 1}
    assert got["value"] == "wake up"
    # Woken by the notification, not by a poll of the table: no read while
    # it waited, and the record there well before the 30 s poll timeout.
    assert got["reads_while_idle"] <= 2, got
    assert got["latency_ms"] < 5_000, got
