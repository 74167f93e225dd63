"""Many callers with one idempotency key at the same moment: the handler runs once.

32 threads (memory and SQLite) and 4 processes (one SQLite file) call the same
key at once. The handler counts its runs under a lock and, inside the
result's transaction (``complete(..., effects=...)``), appends an event and
(on SQLite) inserts a row, so the database counts them too: exactly one of
each. Every caller gets the winner's result (which names the winner) or
``RequestInProgress``; callers that ask to wait all get the result.

The process children are this module run as a script (``python -m
tests.idempotency.test_concurrency child DB WAIT KEY...``); the parent
releases them for each key with one line on their stdin.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from unbundled.errors import RequestInProgress
from unbundled.eventstore import ANY, NewEvent, StreamWrite
from unbundled.idempotency import Attempt, EffectsTxn, Idempotency
from unbundled.testing.child import ChildProcess
from unbundled.testing.idempotency_contract import events_of

ROOT = Path(__file__).resolve().parents[2]
THREADS, PROCESSES = 32, 4
ROUNDS = 4  # keys per test: each is a fresh race
HANDLER_S = 0.05  # keeps the winner busy while the others arrive (never asserted on)


def _effects(key: str, winner: str, sql: bool) -> Any:
    def effects(tx: EffectsTxn) -> None:
        event = NewEvent(str(uuid.uuid4()), "Ran", msgspec.json.encode({"by": winner}))
        tx.append_events([StreamWrite(f"ran-{key}", ANY, [event])])
        if sql:
            cur = tx.sql.cursor()
            cur.execute("CREATE TABLE IF NOT EXISTS side_effects (key TEXT, winner TEXT)")
            cur.execute("INSERT INTO side_effects VALUES (?, ?)", (key, winner))

    return effects


def _handler(
    idem: Idempotency, key: str, winner: str, sql: bool, runs: list[str], lock: threading.Lock
) -> Any:
    def handler(attempt: Attempt) -> dict[str, str]:
        with lock:
            runs.append(winner)
        time.sleep(HANDLER_S)
        result = {"key": key, "winner": winner}
        idem.complete(attempt, result, effects=_effects(key, winner, sql))
        return result

    return handler


def _sql_rows(db: Path, key: str) -> list[tuple[str, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT key, winner FROM side_effects WHERE key = ?", (key,)).fetchall()
    finally:
        conn.close()


def _race(idem: Idempotency, key: str, wait: bool, sql: bool) -> tuple[list[str], list[Any]]:
    """THREADS callers released at once; returns who ran the handler and what each got."""
    barrier = threading.Barrier(THREADS)
    lock = threading.Lock()
    runs: list[str] = []
    answers: list[Any] = []

    def caller(n: int) -> None:
        handler = _handler(idem, key, f"thread-{n}", sql, runs, lock)
        barrier.wait(30)
        try:
            answer: Any = idem.call(key, {"q": 1}, handler, wait_s=60 if wait else None)
        except RequestInProgress as exc:
            answer = ("busy", exc.details["token"])
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a caller hung"
    return runs, answers


@pytest.mark.parametrize("wait", [False, True], ids=["busy", "wait"])
@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_threads_race_for_one_key(backend: str, wait: bool, tmp_path: Path) -> None:
    db = tmp_path / "idem.db"
    sql = backend == "sqlite"
    url = "memory://" if backend == "memory" else str(db)
    with Idempotency.open(url, sync="normal", maintenance_interval_s=None) as idem:
        for round_ in range(ROUNDS):
            key = f"race-{round_}"
            runs, answers = _race(idem, key, wait, sql)
            assert len(answers) == THREADS
            assert len(runs) == 1, f"{key}: the handler ran {len(runs)} times: {runs}"
            winner = {"key": key, "winner": runs[0]}
            events = events_of(idem, f"ran-{key}")
            assert [msgspec.json.decode(e.data) for e in events] == [{"by": runs[0]}]
            allowed = [winner] if wait else [winner, ("busy", 1)]
            assert all(a in allowed for a in answers), answers
            assert winner in answers
            if sql:
                assert _sql_rows(db, key) == [(key, runs[0])]
            # After the race, a retry replays without running.
            late = _handler(idem, key, "late", sql, runs, threading.Lock())
            assert idem.call(key, {"q": 1}, late) == winner
            assert len(runs) == 1


# --- processes -------------------------------------------------------------------


def child(db: str, wait: str, *keys: str) -> None:
    """For each key: say ready, wait for the go line, call, print the answer."""
    name = f"pid-{os.getpid()}"
    runs: list[str] = []
    with Idempotency.open(db, sync="normal", maintenance_interval_s=None) as idem:
        for key in keys:
            print(f"ready {key}", flush=True)
            if sys.stdin.readline().strip() != "go":
                return  # the parent is gone
            try:
                answer: Any = idem.call(
                    key,
                    {"q": 1},
                    _handler(idem, key, name, True, runs, threading.Lock()),
                    wait_s=60 if wait == "wait" else None,
                )
            except RequestInProgress as exc:
                answer = ["busy", exc.details["token"]]
            print(
                "answer " + json.dumps({"key": key, "ran": runs.count(name), "answer": answer}),
                flush=True,
            )
            runs.clear()


class _Lines:
    """A child's stdout line by line (``ChildProcess.wait_for`` drops the rest
    of a chunk after the line it returns; here nothing is dropped)."""

    def __init__(self, child: ChildProcess) -> None:
        self.child = child
        self.pending: list[str] = []

    def next(self, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        while not self.pending and not self.child.eof and time.monotonic() < deadline:
            self.pending.extend(self.child.read_lines(deadline - time.monotonic()))
        return self.pending.pop(0) if self.pending else None


@pytest.mark.parametrize("wait", ["busy", "wait"])
def test_processes_race_for_one_key(wait: str, tmp_path: Path) -> None:
    db = tmp_path / "idem.db"
    Idempotency.open(db, maintenance_interval_s=None).close()  # the schema, before the race
    keys = [f"proc-{i}" for i in range(ROUNDS)]
    children = [
        ChildProcess(
            ["-m", "tests.idempotency.test_concurrency", "child", str(db), wait, *keys],
            cwd=ROOT,
            stdin=True,
        )
        for _ in range(PROCESSES)
    ]
    lines = [_Lines(c) for c in children]
    try:
        for key in keys:
            for out in lines:
                line = out.next(60)
                assert line == f"ready {key}", f"no ready: {line} {out.child.stderr_text()}"
            for c in children:
                c.send("go")
            reports = []
            for out in lines:
                line = out.next(60)
                assert line is not None, f"a child did not answer: {out.child.stderr_text()}"
                reports.append(json.loads(line.removeprefix("answer ")))
            ran = [r for r in reports if r["ran"]]
            assert len(ran) == 1 and ran[0]["ran"] == 1, reports
            winner = ran[0]["answer"]
            assert winner["key"] == key
            rows = _sql_rows(db, key)
            assert rows == [(key, winner["winner"])], f"the effect ran {len(rows)} times"
            allowed = [winner] if wait == "wait" else [winner, ["busy", 1]]
            assert all(r["answer"] in allowed for r in reports), reports
        for c in children:
            assert c.wait(60) == 0, c.stderr_text()
    finally:
        for c in children:
            c.close()
    with Idempotency.open(db, maintenance_interval_s=None) as idem:
        for key in keys:
            assert len(events_of(idem, f"ran-{key}")) == 1
            record = idem.get(key)
            assert record is not None and record.state == "completed" and record.token == 1


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    if role != "child":
        raise SystemExit(f"unknown role {role!r}")
    child(*rest)
