"""Actors for tests/database/test_unit_sharing.py, and its close-order child.

Each actor owns a stream, a log key, a consumer group, an idempotency key
prefix and a KV counter, and counts (in a :class:`Tally`) what it was told
was written: by transactions that write every part together, and by plain
calls to one part. :func:`check_tallies` then says the database holds
exactly that.

``python -m tests.database._sharing close <memory|sqlite> <dir>`` closes a
database in every order while actors use it, in a process of its own (a
crash there fails the test instead of ending the test run); it prints
``closed in <n> orders`` and exits 0, or prints what went wrong and exits 1.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import unbundled
from unbundled import Closed, NotFound, TopicPartition
from unbundled.database import AsyncDatabase, Database
from unbundled.eventstore import Event

PARTS = ("log", "events", "idempotency", "kv")
CLOSERS = ("database", *PARTS)
JOIN_S = 60.0  # an actor still running after this is a hang


class Noted(Event, frozen=True):
    actor: int
    n: int


@dataclass
class Tally:
    """What one actor was told was written, per part."""

    actor: int
    events: int = 0  # = the stream's next version
    records: int = 0
    keys: int = 0
    counter: int = 0
    transactions: int = 0  # = the group's committed offset
    closed: int = 0  # calls that raised Closed (each ends the actor)

    @property
    def stream(self) -> str:
        return f"acc-{self.actor}"

    @property
    def key(self) -> bytes:
        return b"%d" % self.actor

    @property
    def group(self) -> str:
        return f"g-{self.actor}"

    @property
    def counter_key(self) -> str:
        return f"count-{self.actor}"

    def request(self) -> str:
        return f"req-{self.actor}-{self.keys}"

    def count(self) -> bytes | None:
        """The counter's value now (None before its first write)."""
        return b"%d" % self.counter if self.counter else None

    def next_count(self) -> bytes:
        return b"%d" % (self.counter + 1)

    def offsets(self) -> dict[TopicPartition, int]:
        return {TopicPartition("in", 0): self.transactions + 1}

    def committed(self, *, transaction: bool = False, part: str = "") -> None:
        """Count a transaction (every part), or a plain call to ``part``."""
        every = transaction
        self.events += every or part == "events"
        self.records += every or part == "log"
        self.keys += every or part == "idempotency"
        self.counter += every or part == "kv"
        self.transactions += every


def open_db(url: str) -> Database:
    db = unbundled.open(url, sync="normal", events=[Noted])
    db.log.create_topic("out", 2, exist_ok=True)
    db.log.create_topic("in", 1, exist_ok=True)
    return db


async def open_async(url: str) -> AsyncDatabase:
    db = await unbundled.open_async(url, sync="normal", events=[Noted])
    await db.log.create_topic("out", 2, exist_ok=True)
    await db.log.create_topic("in", 1, exist_ok=True)
    return db


# --- sync actors ---------------------------------------------------------------------


def transaction(db: Database, t: Tally) -> None:
    """One write to every part, together."""
    attempt = db.idempotency.attempt(t.request(), None)
    with db.transaction() as tx:
        tx.append_events(t.stream, [Noted(actor=t.actor, n=t.events)], t.events - 1)
        tx.append("out", b"tx", key=t.key)
        tx.complete(attempt, t.keys)
        tx.commit_offsets(group=t.group, offsets=t.offsets())
        tx.kv.compare_and_set(t.counter_key, new=t.next_count(), expected_value=t.count())
    t.committed(transaction=True)


def plain(db: Database, t: Tally, part: str) -> None:
    """One plain call to ``part``, outside any transaction."""
    if part == "events":
        db.events.append(t.stream, [Noted(actor=t.actor, n=t.events)], t.events - 1)
    elif part == "log":
        db.log.append("out", b"plain", key=t.key)
    elif part == "idempotency":
        keys = t.keys
        assert db.idempotency.call(t.request(), None, lambda _: keys) == keys
    else:
        db.kv.compare_and_set(t.counter_key, new=t.next_count(), expected_value=t.count())
    t.committed(part=part)


def act(db: Database, t: Tally, rounds: int) -> None:
    """``rounds`` operations: transactions, plain calls and reads, mixed.
    ``Closed`` ends the actor (and is counted)."""
    rng = random.Random(t.actor)
    for _ in range(rounds):
        try:
            choice = rng.random()
            if choice < 0.4:
                transaction(db, t)
            elif choice < 0.9:
                plain(db, t, rng.choice(PARTS))
            else:  # reads meanwhile
                db.events.read_all(limit=50)
                db.log.read("out", rng.randrange(2), 0, records_max=20)
                db.idempotency.records(limit=20)
                db.kv.read(t.counter_key)
        except Closed:
            t.closed += 1
            return


def start(db: Database, tallies: list[Tally], rounds: int) -> list[threading.Thread]:
    threads = [
        threading.Thread(target=act, args=(db, t, rounds), name=f"actor-{t.actor}") for t in tallies
    ]
    for thread in threads:
        thread.start()
    return threads


def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(JOIN_S)
        assert not thread.is_alive(), f"{thread.name} hangs"


# --- async actors --------------------------------------------------------------------


async def atransaction(db: AsyncDatabase, t: Tally) -> None:
    attempt = await db.idempotency.attempt(t.request(), None)
    async with db.transaction() as tx:
        tx.append_events(t.stream, [Noted(actor=t.actor, n=t.events)], t.events - 1)
        await tx.append("out", b"tx", key=t.key)
        tx.complete(attempt, t.keys)
        tx.commit_offsets(group=t.group, offsets=t.offsets())
        tx.kv.compare_and_set(t.counter_key, new=t.next_count(), expected_value=t.count())
    t.committed(transaction=True)


async def aplain(db: AsyncDatabase, t: Tally, part: str) -> None:
    if part == "events":
        await db.events.append(t.stream, [Noted(actor=t.actor, n=t.events)], t.events - 1)
    elif part == "log":
        await db.log.append("out", b"plain", key=t.key)
    elif part == "idempotency":
        keys = t.keys

        async def handler(_: object) -> int:
            return keys

        assert await db.idempotency.call(t.request(), None, handler) == keys
    else:  # the KV part is synchronous (short calls)
        db.kv.compare_and_set(t.counter_key, new=t.next_count(), expected_value=t.count())
    t.committed(part=part)


async def aact(db: AsyncDatabase, t: Tally, rounds: int) -> None:
    """The async twin of :func:`act`."""
    rng = random.Random(t.actor)
    for _ in range(rounds):
        try:
            choice = rng.random()
            if choice < 0.4:
                await atransaction(db, t)
            elif choice < 0.9:
                await aplain(db, t, rng.choice(PARTS))
            else:
                await db.events.read_all(limit=50)
                await db.log.read("out", rng.randrange(2), 0, records_max=20)
                await db.idempotency.records(limit=20)
        except Closed:
            t.closed += 1
            return


# --- what the database holds ----------------------------------------------------------


def check_tallies(db: Database, tallies: list[Tally]) -> None:
    """The database holds exactly what the actors were told was written."""
    records = [r for p in range(2) for r in db.log.scan("out", p)]
    keys = db.idempotency.records(limit=10_000)
    for t in tallies:
        if t.events:
            events = [e.event for e in db.events.read(t.stream)]
            assert events == [Noted(actor=t.actor, n=n) for n in range(t.events)], t
        else:
            assert db.events.state(t.stream).version == -1, t
        assert sum(r.key == t.key for r in records) == t.records, t
        prefix = f"req-{t.actor}-"
        done = sorted(r.key for r in keys if r.key.startswith(prefix) and r.state == "completed")
        assert done == sorted(f"{prefix}{n}" for n in range(t.keys)), t
        found = db.kv.read(t.counter_key)
        assert (None if found is None else tuple(found)) == (
            None if t.counter == 0 else (t.count(), t.counter)
        ), t
        try:
            offsets = db.log.describe_group(t.group).committed
        except NotFound:
            offsets = {}
        assert offsets.get(TopicPartition("in", 0), 0) == t.transactions, t


# --- closing in every order while the actors run (the child process) -----------------


def touch(part: Any) -> None:
    """A call on a part (on a closed one, it raises ``Closed``)."""
    if isinstance(part, unbundled.Log):
        part.topics()
    elif isinstance(part, unbundled.EventStore):
        part.streams()
    elif isinstance(part, unbundled.Idempotency):
        part.get("k")
    else:
        part.read("k")


def close_in_order(url: str, order: tuple[str, ...]) -> list[Tally]:
    """Close the database and its parts in ``order`` while 4 actors use it;
    every actor ends with ``Closed``, nothing hangs. Returns the tallies."""
    db = open_db(url)
    handles: dict[str, Any] = {"database": db, **{name: getattr(db, name) for name in PARTS}}
    tallies = [Tally(i) for i in range(4)]
    # The actors run until a call raises Closed: at the latest once the
    # database is closed, whatever the order.
    threads = start(db, tallies, 10**6)
    for name in order:
        handles[name].close()
    for name in PARTS:
        handles[name].close()  # idempotent, after the database too
        expect_closed(lambda n=name: touch(handles[n]), f"{name} after {order}")
        expect_closed(lambda n=name: getattr(db, n), f"db.{name} after {order}")
    expect_closed(db.transaction, f"db.transaction() after {order}")
    join(threads)
    assert all(t.closed == 1 for t in tallies), (order, tallies)
    return tallies


def expect_closed(call: Any, what: str) -> None:
    try:
        call()
    except Closed:
        return
    raise AssertionError(f"{what} did not raise Closed")


async def aclose_in_order(url: str, order: tuple[str, ...]) -> None:
    """The async twin of :func:`close_in_order`, with 64 tasks."""
    db = await open_async(url)
    handles: dict[str, Any] = {"database": db, **{name: getattr(db, name) for name in PARTS}}
    tallies = [Tally(i) for i in range(64)]
    tasks = [asyncio.create_task(aact(db, t, 10**6)) for t in tallies]
    await asyncio.sleep(0.01)
    for name in order:
        closed = handles[name].close()
        if asyncio.iscoroutine(closed):
            await closed
    await asyncio.wait_for(asyncio.gather(*tasks), JOIN_S)
    assert all(t.closed == 1 for t in tallies), (order, tallies)


def close_everywhere(backend: str, root: Path) -> int:
    """Every order, sync and async; on SQLite each file afterwards holds what
    the actors were told. Returns how many orders were run."""
    orders = list(itertools.permutations(CLOSERS))
    for number, order in enumerate(orders):
        url = "memory://" if backend == "memory" else str(root / f"sync-{number}.db")
        tallies = close_in_order(url, order)
        if backend == "sqlite":
            with open_db(url) as db:
                check_tallies(db, tallies)
        url = "memory://" if backend == "memory" else str(root / f"async-{number}.db")
        asyncio.run(aclose_in_order(url, order))
    return len(orders)


def main(argv: list[str]) -> int:
    failures: list[str] = []

    def hook(args: threading.ExceptHookArgs) -> None:
        failures.append("".join(traceback.format_exception(args.exc_value)))

    threading.excepthook = hook
    _, backend, root = argv
    try:
        count = close_everywhere(backend, Path(root))
    finally:
        if failures:  # also when an assertion above failed: they may say why
            print("a thread died:\n" + "\n".join(failures), file=sys.stderr)
    if failures:
        return 1
    print(f"closed in {count} orders")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
