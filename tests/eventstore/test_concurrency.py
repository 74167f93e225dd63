"""Concurrent writers and subscribers in separate processes on one SQLite file.

Eight writer processes append to their own stream (exact expected versions:
never a conflict) and to two shared streams (expected versions they learn
only from their own appends and from conflicts, so they conflict often),
alone and in multi-stream appends; two subscriber processes tail ``$all``
with ``read_all`` and ``wait_for_events``. At the end every subscriber saw
every event exactly once, in position order; every attempt was either
acknowledged or reported as a conflict; and every stream's versions are dense.

The children are this module run as a script (``python -m
tests.eventstore.test_concurrency <role> ...``); each writes its report to a
JSON file.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from unbundled.errors import WrongExpectedVersion
from unbundled.eventstore import ANY, NO_STREAM, EventStore, NewEvent
from unbundled.testing.child import ChildProcess

ROOT = Path(__file__).resolve().parents[2]
WRITERS, SUBSCRIBERS, ROUNDS = 8, 2, 30
SHARED = ["shared-0", "shared-1"]
RETRIES_MAX = 200  # a writer that loses this many races in a row is starved: a bug
DEADLINE_S = 120.0


def _event(kind: str, note: str) -> NewEvent:
    return NewEvent(str(uuid.uuid4()), kind, json.dumps({"note": note}).encode())


def _open(db: str) -> EventStore:
    return EventStore.open(db, sync="normal", maintenance_interval_s=None)


def writer(db: str, name: str, report: str) -> None:
    """Append ROUNDS times to ``own-<name>`` and to a shared stream, every
    third round in one multi-stream append; count attempts and conflicts."""
    acked: list[dict[str, Any]] = []
    conflicts: list[dict[str, Any]] = []
    attempts = 0
    own = f"own-{name}"
    own_version = NO_STREAM
    known = dict.fromkeys(SHARED, NO_STREAM)  # learnt from our appends and conflicts only
    with _open(db) as store:
        for i in range(ROUNDS):
            shared = SHARED[i % 2]
            for _ in range(RETRIES_MAX):
                attempts += 1
                mine = [_event("Own", f"{name}-{i}")]
                theirs = [_event("Shared", f"{name}-{i}"), _event("Shared", f"{name}-{i}b")]
                try:
                    if i % 3 == 0:
                        results = store.append_many(
                            [(own, mine, own_version), (shared, theirs, known[shared])]
                        )
                        written = [(mine, results[0]), (theirs, results[1])]
                    else:
                        result = store.append(shared, theirs, known[shared])
                        written = [(theirs, result)]
                        written.append((mine, store.append(own, mine, own_version)))
                except WrongExpectedVersion as exc:
                    conflicts.append(dict(exc.details))
                    assert exc.details["stream"] == shared, exc.details
                    known[shared] = exc.details["actual"]
                    continue
                for events, result in written:
                    acked.append(
                        {
                            "stream": result.stream,
                            "first": result.first_version,
                            "positions": list(result.positions),
                            "ids": [e.id for e in events],
                        }
                    )
                    if result.stream == own:
                        own_version = result.last_version
                    else:
                        known[shared] = result.last_version
                break
            else:
                raise AssertionError(f"{name} lost {RETRIES_MAX} races in a row on {shared}")
    Path(report).write_text(
        json.dumps({"attempts": attempts, "acked": acked, "conflicts": conflicts})
    )


def subscriber(db: str, report: str) -> None:
    """Tail ``$all`` from the start until the ``control`` stream's stop event."""
    seen: list[tuple[int, str, str, int]] = []
    with _open(db) as store:
        backend = store.backend
        print("ready", flush=True)
        after = 0
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            token = backend.events_change_token()  # before reading: no wake-up is lost
            page = store.read_all_raw(after, limit=300)
            seen.extend((e.position, e.id, e.stream, e.version) for e in page)
            if page:
                after = page[-1].position
                if page[-1].stream == "control":
                    break
                continue
            backend.wait_for_events(token, 5.0)
    Path(report).write_text(json.dumps(seen))


def _exit_with_parent() -> None:
    """A child whose test died exits too, leaving no orphans behind."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(4)

    threading.Thread(target=watch, daemon=True).start()


def _spawn(*args: object) -> ChildProcess:
    return ChildProcess(["-m", "tests.eventstore.test_concurrency", *map(str, args)], cwd=ROOT)


def _wait(children: list[ChildProcess]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    for child in children:
        status = child.wait(max(0.0, deadline - time.monotonic()))
        assert status == 0, f"child exited with {status}: {child.stderr_text()}"


def test_writers_and_subscribers_in_processes(tmp_path: Path) -> None:
    db = str(tmp_path / "events.db")
    _open(db).close()  # create the file once, before the race
    children: list[ChildProcess] = []
    try:
        subscribers = [_spawn("subscriber", db, tmp_path / f"sub{n}.json") for n in range(2)]
        children.extend(subscribers)
        for child in subscribers:
            assert child.wait_for(lambda line: line == "ready", 60) == "ready", child.stderr_text()
        writers = [_spawn("writer", db, f"w{n}", tmp_path / f"w{n}.json") for n in range(WRITERS)]
        children.extend(writers)
        _wait(writers)
        with _open(db) as store:
            store.append("control", [_event("Stop", "all written")], NO_STREAM)
        _wait(subscribers)
        with _open(db) as store:
            _check(store, tmp_path)
    finally:
        for child in children:
            child.close()


def _check(store: EventStore, tmp_path: Path) -> None:
    everything = store.read_all_raw(0, limit=100_000)
    assert [e.position for e in everything] == list(range(1, len(everything) + 1))
    where = {e.id: (e.stream, e.version, e.position) for e in everything}
    acked_ids: list[str] = []
    conflicts = 0
    for n in range(WRITERS):
        report = json.loads((tmp_path / f"w{n}.json").read_text())
        # Every attempt either landed (one acknowledgement per append of a
        # round, two for the multi-stream one) or was reported as a conflict.
        assert report["attempts"] == ROUNDS + len(report["conflicts"])
        conflicts += len(report["conflicts"])
        for conflict in report["conflicts"]:
            assert conflict["expected"] != conflict["actual"], conflict
        for ack in report["acked"]:
            for i, event_id in enumerate(ack["ids"]):
                expected = (ack["stream"], ack["first"] + i, ack["positions"][i])
                assert where[event_id] == expected, (event_id, where.get(event_id), expected)
                acked_ids.append(event_id)
        assert [e.version for e in store.read(f"own-w{n}")] == list(range(ROUNDS))
    assert conflicts >= WRITERS - len(SHARED), "writers that start late must conflict"
    assert len(set(acked_ids)) == len(acked_ids) == len(everything) - 1
    for stream in SHARED:
        versions = [e.version for e in store.read(stream)]
        assert versions == list(range(len(versions))), f"{stream} versions are not dense"
    assert sum(len(store.read(s)) for s in SHARED) == 2 * WRITERS * ROUNDS
    expected_seen = [[e.position, e.id, e.stream, e.version] for e in everything]
    for n in range(SUBSCRIBERS):
        seen = json.loads((tmp_path / f"sub{n}.json").read_text())
        assert seen == expected_seen, f"subscriber {n} missed, repeated or reordered events"
    assert store.append("control", [_event("Late", "after")], ANY).first_version == 1


if __name__ == "__main__":
    _exit_with_parent()
    role, *args = sys.argv[1:]
    if role == "writer":
        writer(*args)
    elif role == "subscriber":
        subscriber(*args)
    else:
        raise SystemExit(f"unknown role {role!r}")
