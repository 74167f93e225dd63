"""Child processes for the PostgreSQL multi-process tests.

Run as ``python -m tests.backends.postgres._children <role> <url> ...`` from the
repository root. A child prints ``ready`` once set up, then one JSON line
with what it did; on an unexpected error it prints the traceback on stderr
and exits with 3.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import traceback
import uuid
from typing import Any

from unbundled._waiters import SyncWaiter
from unbundled.backends.postgres import PostgresBackend
from unbundled.errors import WrongExpectedVersion
from unbundled.eventstore import NO_STREAM, AppendResult, NewEvent, StreamWrite

LIFETIME_S = 120.0  # a child the parent forgot exits on its own
SHARED_STREAMS = 2
STOP_TYPE = "Stop"


def say(line: str) -> None:
    os.write(1, line.encode() + b"\n")


def _append(backend: PostgresBackend, stream: str, expected: int, event: NewEvent) -> AppendResult:
    waiter = SyncWaiter()
    backend.submit_events([StreamWrite(stream, expected, [event])], waiter)
    results: list[AppendResult] = waiter.wait()
    return results[0]


def writer(url: str, name: str, threads: int, iterations: int) -> None:
    """Each thread appends alternately to its own stream (exact expected
    version: never conflicts) and to a shared one (the version it just
    read: races with every other writer). Reports every attempt."""
    backend = PostgresBackend(url, sync="full")
    attempts: list[dict[str, Any]] = []
    lock = threading.Lock()
    start = threading.Event()

    def work(thread: int) -> None:
        rng = random.Random(f"{name}-{thread}")
        private = f"private-{name}-{thread}"
        assert start.wait(LIFETIME_S)
        for i in range(iterations):
            for stream, expected in (
                (private, i - 1 if i else NO_STREAM),
                (
                    shared := f"shared-{rng.randrange(SHARED_STREAMS)}",
                    backend.stream_state(shared).version,
                ),
            ):
                event = NewEvent(str(uuid.uuid4()), "Appended", b'{"n": %d}' % i)
                record: dict[str, Any] = {"id": event.id, "stream": stream, "expected": expected}
                try:
                    result = _append(backend, stream, expected, event)
                    record.update(version=result.first_version, position=result.positions[0])
                except WrongExpectedVersion as exc:
                    record.update(conflict=exc.details["actual"])
                with lock:
                    attempts.append(record)

    workers = [threading.Thread(target=guarded(work), args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    say("ready")
    start.set()
    for thread in workers:
        thread.join(LIFETIME_S)
    backend.close()
    say(json.dumps({"attempts": attempts}))


def subscriber(url: str) -> None:
    """Tail ``$all`` with read_all + wait_for_events until the Stop event,
    and report every position and id seen, in the order seen."""
    backend = PostgresBackend(url, sync="full")
    seen: list[tuple[int, str]] = []
    after = 0
    deadline = time.monotonic() + LIFETIME_S
    say("ready")
    while time.monotonic() < deadline:
        token = backend.events_change_token()
        events = backend.read_all(after, 97)  # an odd page size: pages end anywhere
        for event in events:
            seen.append((event.position, event.id))
            after = event.position
        if any(e.type == STOP_TYPE for e in events):
            break
        if not events:
            backend.wait_for_events(token, 5.0)
    backend.close()
    say(json.dumps({"seen": seen}))


def guarded(fn: Any) -> Any:
    def run(*args: Any) -> None:
        try:
            fn(*args)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(3)

    return run


ROLES = {"writer": writer, "subscriber": subscriber}

if __name__ == "__main__":
    role, *arguments = sys.argv[1:]
    function: Any = ROLES[role]
    guarded(function)(*(int(a) if a.isdigit() else a for a in arguments))
