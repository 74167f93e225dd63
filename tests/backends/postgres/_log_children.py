"""Child processes for the log's multi-process tests on PostgreSQL.

Run as ``python -m tests.backends.postgres._log_children <role> <url> ...``
from the repository root. A child prints ``ready`` once set up, then one
JSON line with what it did; on an unexpected error it prints the traceback
on stderr and exits with 3.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from typing import Any

from unbundled import Log
from unbundled.log import Record

TOPIC = "t"
PARTITIONS = 2
STOP = b"stop"
LIFETIME_S = 120.0  # a child the parent forgot exits on its own


def say(line: str) -> None:
    os.write(1, line.encode() + b"\n")


def appender(url: str, name: str, threads: int, iterations: int) -> None:
    """Each thread appends small batches to both partitions; reports every
    acknowledged position with the values it holds."""
    acked: list[list[Any]] = []
    lock = threading.Lock()
    start = threading.Event()
    with Log.open(url, sync="normal") as log:

        def work(thread: int) -> None:
            assert start.wait(LIFETIME_S)
            for i in range(iterations):
                values = [f"{name}-{thread}-{i}-{n}".encode() for n in range(1 + i % 3)]
                positions = log.append_batch(TOPIC, values) if i % 2 else []
                if not i % 2:
                    partition = i // 2 % PARTITIONS
                    positions = [log.append(TOPIC, v, partition=partition) for v in values]
                with lock:
                    acked.extend(
                        [p.partition, p.offset, v.decode()]
                        for p, v in zip(positions, values, strict=True)
                    )

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        say("ready")
        start.set()
        for worker in workers:
            worker.join()
    say(json.dumps({"acked": acked}))


def tailer(url: str) -> None:
    """Follows both partitions from offset 0 until a ``stop`` record in
    each: every read must continue exactly where the last one ended (a
    record committed late with a smaller offset would show as a jump)."""
    seen: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    jumps: list[list[int]] = []
    reads = 0
    with Log.open(url, sync="normal") as log:
        say("ready")
        stopped: set[int] = set()
        deadline = time.monotonic() + LIFETIME_S
        while len(stopped) < PARTITIONS and time.monotonic() < deadline:
            token = log.backend.change_token()
            progressed = False
            for p in range(PARTITIONS):
                if p in stopped:
                    continue
                records = log.read(TOPIC, p, len(seen[p]), records_max=97)
                reads += 1
                for expected, record in enumerate(records, start=len(seen[p])):
                    if record.offset != expected:
                        jumps.append([p, expected, record.offset])
                    seen[p].append((record.value or b"").decode())
                    if record.value == STOP:
                        stopped.add(p)
                progressed = progressed or bool(records)
            if not progressed:
                log.backend.wait_for_change(token, 1.0)
    say(json.dumps({"seen": seen, "jumps": jumps, "reads": reads}))


def consumer(url: str, group: str) -> None:
    """Joins ``group``, then waits in poll() with nothing to read: reports
    how many reads the idle wait cost and how long after the parent's
    append (the record's timestamp) the record arrived."""
    with Log.open(url, sync="normal") as log:
        backend = log.backend
        calls = {"read": 0}
        read = backend.read

        def counted(*args: Any) -> Any:
            calls["read"] += 1
            return read(*args)

        backend.read = counted  # type: ignore[method-assign,assignment]
        worker = log.consumer(TOPIC, group=group, member_id="c", lease_ms=30_000)
        assert worker.poll(0.5) == []  # joined, assigned, nothing there yet
        idle = calls["read"]
        say("ready")
        records: list[Record] = []
        deadline = time.monotonic() + 30
        while not records and time.monotonic() < deadline:
            records = worker.poll(30.0)
        arrived = time.time() * 1000
        worker.commit()
        worker.close()
    assert records, "nothing arrived"
    say(
        json.dumps(
            {
                "latency_ms": arrived - records[0].timestamp,
                "reads_while_idle": calls["read"] - idle,
                "value": (records[0].value or b"").decode(),
            }
        )
    )


ROLES = {"appender": appender, "tailer": tailer, "consumer": consumer}


def main() -> None:
    role, url, *rest = sys.argv[1:]
    threading.Timer(LIFETIME_S, lambda: os._exit(4)).start()
    try:
        ROLES[role](url, *[int(a) if a.isdigit() else a for a in rest])  # type: ignore[operator]
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)
    os._exit(0)


if __name__ == "__main__":
    main()
