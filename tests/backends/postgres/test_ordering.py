"""Global order with many processes on one PostgreSQL database.

8 writer processes append concurrently to private and shared streams while
2 subscriber processes tail ``$all`` (read_all + wait_for_events). At the
end every subscriber has seen every event exactly once, in position order
with no gap, and every expected-version conflict was reported: each attempt
either committed where it was told or raised, and nothing else is stored.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from unbundled.backends.postgres import PostgresBackend
from unbundled.eventstore import ANY, EventStore, NewEvent

from ._children import STOP_TYPE

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[3]
WRITERS, THREADS, ITERATIONS = 8, 4, 40


def spawn(role: str, *args: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.backends.postgres._children", role, *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def ready(child: subprocess.Popen[bytes]) -> None:
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line == b"ready\n", (
        f"child failed to start: {child.stderr.read() if child.stderr else ''!r}"
    )


def report(child: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def test_subscribers_see_every_event_once_in_order_and_conflicts_are_reported(
    pg_url: str,
) -> None:
    PostgresBackend(pg_url).close()  # create the schema before the race
    children: list[subprocess.Popen[bytes]] = []
    try:
        subscribers = [spawn("subscriber", pg_url) for _ in range(2)]
        children += subscribers
        for child in subscribers:
            ready(child)
        writers = [spawn("writer", pg_url, f"w{n}", THREADS, ITERATIONS) for n in range(WRITERS)]
        children += writers
        attempts = [a for child in writers for a in report(child)["attempts"]]
        with EventStore.open(pg_url) as store:
            store.append("control", [NewEvent(str(uuid.uuid4()), STOP_TYPE, b"{}")], ANY)
            stored = store.read_all_raw(0, limit=100_000)
        seen = [report(child)["seen"] for child in subscribers]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    assert len(attempts) == WRITERS * THREADS * ITERATIONS * 2
    committed = [a for a in attempts if "position" in a]
    conflicts = [a for a in attempts if "conflict" in a]
    assert len(committed) + len(conflicts) == len(attempts)
    assert conflicts, "the shared streams saw no race at all"
    for attempt in conflicts:
        assert attempt["stream"].startswith("shared-")
        assert attempt["conflict"] != attempt["expected"]

    # Storage holds exactly the committed attempts (and the Stop event),
    # each where its writer was told, at dense positions.
    assert [e.position for e in stored] == list(range(1, len(committed) + 2))
    by_id = {e.id: e for e in stored}
    for attempt in committed:
        event = by_id.pop(attempt["id"])
        assert (event.stream, event.version, event.position) == (
            attempt["stream"],
            attempt["version"],
            attempt["position"],
        )
    assert [e.type for e in by_id.values()] == [STOP_TYPE]

    # Streams: versions dense from 0, and one committed append per version.
    versions: dict[str, list[int]] = defaultdict(list)
    for event in stored:
        versions[event.stream].append(event.version)
    for stream, found in versions.items():
        assert found == list(range(len(found))), stream
    appends = Counter(a["stream"] for a in committed)
    assert all(len(versions[s]) == n for s, n in appends.items())

    # Every subscriber saw every event once, in position order.
    expected = [[e.position, e.id] for e in stored]
    for got in seen:
        assert got == expected
