"""Crash test of the unit of work: SIGKILL never leaves part of a transaction.

Two worker processes (tests/database/_unit_worker.py) run mixed transactions
on one SQLite file, or one PostgreSQL schema, with ``sync="full"``: each
transaction appends an event (with its expected version), an outbox record,
completes an idempotency key,
commits a consumer group's offset and compare-and-sets a KV counter. The
test SIGKILLs a random worker at a random moment (while it starts, resumes,
claims a key, or commits) at least 30 times; after each kill, with the other
worker still writing, it opens the file afresh and checks the invariants
that tie the parts together for the killed worker, with ``c`` its committed
offset:

1. the store opens (no ``CorruptionError``), and SQLite's ``PRAGMA
   quick_check`` passes (every few kills and at the end);
2. the stream holds events ``0 .. c-1`` (versions and inputs in order), the
   outbox partition the records ``0 .. c-1``, the keys ``cmd-w-0 .. c-1``
   are completed with their results, no other key is completed (at most key
   ``c`` is in progress), and the counter is ``c`` at version ``c``: every
   transaction is wholly there or wholly absent;
3. nothing acknowledged is lost and nothing unacknowledged beyond the one in
   flight is there: ``last ack + 1 <= c <= last ack + 2``;
4. the restarted worker resumes at ``c``, a retry of command ``c-1`` is
   answered with its stored result, and its acknowledgements continue
   ``c, c+1, ...`` (exactly-once in effect).

At the end each worker finishes a few more inputs unkilled and ``$all``
holds every event once, in position order. Set ``UNBUNDLED_CRASH_SEED`` to
replay a seed printed by a failure (the plan replays, not the exact timing).
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path

import msgspec
import pytest

import unbundled
from tests import matrix
from tests.crash._helpers import ROOT, check_alive, reaped, wait_until
from unbundled import Message, StreamNotFound
from unbundled.idempotency import IdempotencyRecord
from unbundled.testing.child import ChildProcess

from ._unit_worker import Counted, committed, key, open_db, result

SEED = int(os.environ.get("UNBUNDLED_CRASH_SEED", random.SystemRandom().randrange(2**32)))
WORKERS = 2
KILLS = {"sqlite": 30, "postgres": 6}  # fewer on the server: the same paths, each kill slower
UNTIL = 10**9  # the input a worker stops at while it may be killed: never
FEED = 2_000  # input records added to a partition when its worker gets near the end
FINISH = 10  # inputs each worker handles unkilled at the end
QUICK_CHECK_EVERY = 5  # kills between PRAGMA quick_check runs
ACK_TIMEOUT_S = 60.0  # generous: a loaded machine; a stuck worker still fails


def spawn(path: str, worker: int, until: int) -> ChildProcess:
    return ChildProcess(
        ["-m", "tests.database._unit_worker", path, str(worker), str(until)], cwd=ROOT
    )


class Worker:
    """One worker's incarnations and what they reported."""

    def __init__(self, path: str, worker: int) -> None:
        self.path = path
        self.worker = worker
        self.child: ChildProcess | None = None
        self.acked = -1  # the last input acknowledged (by any incarnation)
        self.resume: int | None = None  # where the next incarnation must resume
        self.resumed = False  # this incarnation said where it resumed
        self.replays = 0
        self.done = False

    def start(self, until: int, children: list[ChildProcess]) -> None:
        self.child = spawn(self.path, self.worker, until)
        children.append(self.child)
        self.resumed = self.done = False

    def absorb(self, lines: list[str]) -> None:
        """Check each report against what came before (seed in every failure)."""
        where = f"seed={SEED} worker {self.worker}"
        for line in lines:
            word, _, arg = line.partition(" ")
            if word == "resume":
                assert self.resume is None or int(arg) == self.resume, (
                    f"{where}: resumed at {arg}, committed state says {self.resume}"
                )
                assert int(arg) >= self.acked + 1, f"{where}: resumed before an acked input"
                self.acked = int(arg) - 1  # acks go on from here (one unacked may be done)
                self.resumed = True
            elif word == "replayed":
                assert int(arg) == self.acked, (
                    f"{where}: replayed {arg}, resumed after {self.acked}"
                )
                self.replays += 1
            elif word == "ack":
                assert self.resumed and int(arg) == self.acked + 1, (
                    f"{where}: ack {arg} after {self.acked}: inputs must go one by one"
                )
                self.acked = int(arg)
            elif word == "done":
                self.done = True
            else:
                raise AssertionError(f"{where}: unexpected line {line!r}")

    def pump(self) -> None:
        assert self.child is not None
        self.absorb(self.child.read_lines(0))
        if not self.done:
            check_alive(self.child, f"seed={SEED} worker {self.worker}")

    def kill(self) -> None:
        assert self.child is not None
        self.child.kill()
        self.absorb(self.child.drain())


def check_worker(path: str, worker: int, acked: int, moments: dict[str, int] | None = None) -> int:
    """The invariants of one stopped worker's transactions; returns ``c``.
    ``moments`` counts what the kill interrupted (for the record)."""
    where = f"seed={SEED} worker {worker}"
    with open_db(path) as db:  # opening it is check 1
        c = committed(db, worker)
        assert acked + 1 <= c <= acked + 2, f"{where}: offset {c}, last ack {acked}"
        inputs = [f"in-{worker}-{n}" for n in range(c)]
        if c:
            events = db.events.read(f"acc-{worker}")
            got = [(e.version, e.event) for e in events]
            want = [(n, Counted(n=n, input=inputs[n])) for n in range(c)]
            assert got == want, f"{where}: events {got[-3:]} != {want[-3:]} (c={c})"
        else:
            try:
                db.events.read(f"acc-{worker}")
            except StreamNotFound:
                pass
            else:
                raise AssertionError(f"{where}: events without a committed offset")
        outbox = [r.value for r in db.log.scan("outbox", worker)]
        assert outbox == [f"{worker}:{n}".encode() for n in range(c)], f"{where}: outbox (c={c})"
        mine = [r for r in all_keys(db) if r.key.startswith(f"cmd-{worker}-")]
        done = {
            r.key: msgspec.json.decode(r.result or b"null") for r in mine if r.state == "completed"
        }
        assert done == {key(worker, n): result(n, inputs[n]) for n in range(c)}, (
            f"{where}: completed keys (c={c})"
        )
        pending = {r.key for r in mine if r.state == "in_progress"}
        assert pending <= {key(worker, c)}, f"{where}: keys {pending} in progress (c={c})"
        if moments is not None:
            moments["claimed, not committed"] += bool(pending)
            moments["committed, not acknowledged"] += c == acked + 2
        counter = db.kv.read(f"count-{worker}")
        expected = None if c == 0 else (b"%d" % c, c)
        assert (None if counter is None else tuple(counter)) == expected, (
            f"{where}: counter {counter}, offset {c}"
        )
    return c


def all_keys(db: unbundled.Database) -> list[IdempotencyRecord]:
    out: list[IdempotencyRecord] = []
    while True:
        page = db.idempotency.records(after=out[-1].key if out else "", limit=1000)
        out.extend(page)
        if len(page) < 1000:
            return out


def quick_check(path: str, what: str) -> None:
    if "://" in path:
        return  # PostgreSQL checks its own pages
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        result = conn.execute("PRAGMA quick_check").fetchall()
    finally:
        conn.close()
    assert result == [("ok",)], f"seed={SEED} {what}: quick_check says {result[:5]}"


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_mixed_transactions_are_whole_across_sigkill(backend: str, tmp_path: Path) -> None:
    with matrix.isolated(backend, tmp_path, "unit") as path:
        run_crashes(path, KILLS[backend])


def run_crashes(path: str, kills: int) -> None:
    rng = random.Random(SEED)
    print(f"unit-of-work crash test: UNBUNDLED_CRASH_SEED={SEED}")
    workers = [Worker(path, w) for w in range(WORKERS)]
    moments = {"claimed, not committed": 0, "committed, not acknowledged": 0}
    filled = [0] * WORKERS
    # The parent feeds the input as the workers go (a third writer of the file).
    with unbundled.open(path, sync="full") as feeder, reaped() as children:
        feeder.log.create_topic("in", WORKERS)
        feeder.log.create_topic("outbox", WORKERS)

        def feed() -> None:
            for w, worker in enumerate(workers):
                if filled[w] - worker.acked < FEED // 2:
                    more = range(filled[w], filled[w] + FEED)
                    feeder.log.append_batch(
                        "in", [Message(f"in-{w}-{n}".encode(), partition=w) for n in more]
                    )
                    filled[w] += FEED

        def pump() -> None:
            for worker in workers:
                worker.pump()
            feed()

        feed()
        for worker in workers:
            worker.start(UNTIL, children)

        for kill in range(1, kills + 1):
            victim = workers[rng.randrange(WORKERS)]
            if rng.random() < 0.15:  # while it starts, resumes or waits for a key's lease
                wait_until(lambda: False, rng.uniform(0.0, 0.4), "", pump, fail=False)
            else:
                wanted = victim.acked + rng.randint(1, 6)
                wait_until(
                    lambda v=victim, n=wanted: v.acked >= n,  # type: ignore[misc]
                    ACK_TIMEOUT_S,
                    f"worker {victim.worker} to ack input {wanted} (seed={SEED})",
                    pump,
                )
                time.sleep(rng.uniform(0.0, 0.004))  # often lands mid-commit
            victim.kill()
            victim.resume = check_worker(path, victim.worker, victim.acked, moments)
            if kill % QUICK_CHECK_EVERY == 0:
                quick_check(path, f"after kill {kill}")
            victim.start(UNTIL, children)
        # Stop both, then let each finish a few more inputs unkilled.
        for worker in workers:
            worker.kill()
            worker.resume = check_worker(path, worker.worker, worker.acked, moments)
            worker.start(worker.resume + FINISH, children)
        wait_until(lambda: all(w.done for w in workers), ACK_TIMEOUT_S, "the finish", pump)
        for worker in workers:
            assert worker.child is not None and worker.child.wait(30) == 0
            worker.absorb(worker.child.drain())
    quick_check(path, "at the end")
    total = 0
    for worker in workers:
        assert worker.resume is not None
        c = check_worker(path, worker.worker, worker.acked)
        assert c == worker.resume + FINISH == worker.acked + 1, f"seed={SEED}"
        total += c
    # The replays show restarts found the committed state and its results.
    assert sum(w.replays for w in workers) > 0, f"seed={SEED}"
    print(f"{total} transactions, {sum(w.replays for w in workers)} replays, {moments}")
    with open_db(path) as db:
        positions: list[int] = []
        while page := db.events.read_all(positions[-1] if positions else 0, limit=1000):
            positions.extend(e.position for e in page)
        assert positions == sorted(set(positions)) and len(positions) == total, f"seed={SEED}"
