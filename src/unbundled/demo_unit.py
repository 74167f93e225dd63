"""The unit-of-work part of ``make demo``: one transaction across the parts.

1. Eight threads run withdrawals on a fresh SQLite file (``sync="full"``),
   each one idempotent command: claim the request's key, then in **one**
   transaction append a ``Withdrawn`` event (with its expected version),
   the outbox record on the ``payments`` topic, a key-value counter
   (compare-and-set) and the reply for retries.
2. Every request is sent again (the client retried): every retry gets the
   stored reply and nothing is written twice.
3. Two writers race for one account with the same expected version: one
   wins, the other gets ``WrongExpectedVersion`` and writes nothing.
4. A worker *process* doing such transactions is SIGKILLed three times at
   random moments: after each kill, every transaction is wholly there or
   wholly absent, the parts agree with each other, and a restarted worker
   carries on where the committed state says.

Worker processes run ``python -m unbundled.demo_unit worker DB FIRST``.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path

import msgspec
from rich.console import Console
from rich.markup import escape

from .database import Database
from .database import open as open_database
from .demo_events import Check, report_checks
from .errors import Error, StreamNotFound, WrongExpectedVersion
from .eventstore import NO_STREAM, Event
from .testing.child import ChildProcess

THREADS, COMMANDS = 8, 40  # commands per thread
KILLS = 3
TOPIC = "payments"


class Withdrawn(Event, frozen=True):
    """Money left an account (the demo's one event type)."""

    event_type = "DemoWithdrawn"
    amount: int


class Payment(msgspec.Struct, frozen=True):
    """The outbox record of a withdrawal."""

    account: str
    amount: int
    request: str


def run_unit_demo(console: Console, workdir: Path) -> bool:
    """Run the demo in ``workdir``, printing as it goes; True if every check passed."""
    workdir.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]unbundled demo: one transaction across the parts")
    try:
        checks = _demo(console, workdir)
    except Error as exc:
        console.print(f"[red]unit-of-work demo: failed: {escape(str(exc))}")
        return False
    return report_checks(console, "unit-of-work demo", checks)


def _open(db: Path) -> Database:
    return open_database(db, sync="full", events=[Withdrawn])


def withdraw(db: Database, request: str, account: str, amount: int) -> dict[str, int]:
    """The idempotent command: one transaction across four parts."""
    attempt = db.idempotency.attempt(request, {"account": account, "amount": amount})
    if attempt.replayed:
        result: dict[str, int] = attempt.result
        return result
    try:
        try:
            version = db.events.read_raw(f"account-{account}", backwards=True, limit=1)[0].version
        except StreamNotFound:
            version = NO_STREAM
        counter = db.kv.read(f"withdrawals:{account}")
        with db.transaction() as tx:
            tx.append_events(f"account-{account}", [Withdrawn(amount=amount)], version)
            tx.append(
                TOPIC,
                msgspec.json.encode(Payment(account, amount, request)),
                key=account.encode(),
            )
            done = int(counter.value) + 1 if counter else 1
            tx.kv.compare_and_set(
                f"withdrawals:{account}",
                new=b"%d" % done,
                expected_version=counter.version if counter else 0,
            )
            reply = {"withdrawals": done}
            tx.complete(attempt, reply)
        return reply
    except BaseException:
        db.idempotency.release(attempt)
        raise


def _demo(console: Console, workdir: Path) -> list[Check]:
    db_path = workdir / "unit.db"
    with _open(db_path) as db:
        db.log.create_topic(TOPIC, partitions=4)
        with console.status(
            f"{THREADS} threads x {COMMANDS} withdrawals, one transaction each ..."
        ):
            started = time.perf_counter()
            replies = _threads(db)
            elapsed = time.perf_counter() - started
        checks = [_whole(db, THREADS * COMMANDS, elapsed)]
        with console.status("every request sent again ..."):
            checks.append(_retries(db, replies))
        checks.append(_race(db))
    with console.status(f"a worker process SIGKILLed {KILLS} times ..."):
        checks.append(_crashes(workdir))
    return checks


def _threads(db: Database) -> dict[str, dict[str, int]]:
    replies: dict[str, dict[str, int]] = {}
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for i in range(COMMANDS):
                request = f"req-{thread}-{i}"
                replies[request] = withdraw(db, request, f"t{thread}", 1 + i % 5)
        except BaseException as exc:  # reported below, not lost with the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return replies


def _counts(db: Database) -> tuple[int, int, int, int]:
    """Events, outbox records, completed keys, and the counters' sum."""
    events, after = [], 0
    while batch := db.events.read_all_raw(after, limit=1000):
        events.extend(batch)
        after = batch[-1].position
    outbox = sum(db.log.end_offsets(TOPIC).values())
    keys, last = 0, ""
    while page := db.idempotency.records(state="completed", after=last, limit=1000):
        keys += len(page)
        last = page[-1].key
    counters = 0
    for account in {e.stream.removeprefix("account-") for e in events}:
        seen = db.kv.read(f"withdrawals:{account}")
        counters += int(seen.value) if seen else 0
    return len(events), outbox, keys, counters


def _whole(db: Database, expected: int, elapsed: float) -> Check:
    events, outbox, keys, counters = _counts(db)
    ok = events == outbox == keys == counters == expected
    return (
        "each command's event, outbox record, counter and reply committed together",
        ok,
        f"{expected} transactions from {THREADS} threads in {elapsed:.2f} s: {events} events, "
        f"{outbox} outbox records, {keys} stored replies, counters sum {counters}",
    )


def _retries(db: Database, replies: dict[str, dict[str, int]]) -> Check:
    before = _counts(db)
    again = {}
    for request, reply in replies.items():
        thread, i = request.split("-")[1:]
        again[request] = withdraw(db, request, f"t{thread}", 1 + int(i) % 5)
        if again[request] != reply:
            break
    after = _counts(db)
    ok = again == replies and before == after
    return (
        "a retried request gets the stored reply and writes nothing",
        ok,
        f"{len(replies)} retries: replies {'identical' if again == replies else 'DIFFERENT'}, "
        f"counts {'unchanged' if before == after else f'{before} -> {after}'}",
    )


def _race(db: Database) -> Check:
    version = db.events.read_raw("account-t0", backwards=True, limit=1)[0].version
    outcomes = []
    before = _counts(db)
    for writer in ("a", "b"):
        try:
            with db.transaction() as tx:
                tx.append_events("account-t0", [Withdrawn(amount=7)], version)
                tx.append(TOPIC, msgspec.json.encode(Payment("t0", 7, f"race-{writer}")))
            outcomes.append("won")
        except WrongExpectedVersion:
            outcomes.append("WrongExpectedVersion")
    events, outbox, _, _ = _counts(db)
    ok = outcomes == ["won", "WrongExpectedVersion"] and (events, outbox) == (
        before[0] + 1,
        before[1] + 1,
    )
    return (
        "a conflict writes nothing of its transaction",
        ok,
        f"two writers at version {version}: {' / '.join(outcomes)}; one event and one outbox "
        "record more, not two",
    )


def _crashes(workdir: Path) -> Check:
    db_path = workdir / "crash.db"
    with _open(db_path) as db:
        db.log.create_topic(TOPIC, partitions=1)
    rng = random.Random()
    notes = []
    ok = True
    for kill in range(KILLS + 1):
        with _open(db_path) as db:
            events, outbox, keys, counters = _counts(db)
        whole = events == outbox == keys == counters
        ok = ok and whole
        notes.append(f"{events}/{outbox}/{keys}/{counters}")
        if kill == KILLS:
            break
        # Each worker takes fresh request keys: a key the killed one claimed
        # but never completed stays held until its lease runs out.
        first = str((kill + 1) * 1_000_000)
        with ChildProcess(["-m", "unbundled.demo_unit", "worker", str(db_path), first]) as child:
            if child.wait_for(lambda line: line == "ready", 30.0) is None:
                raise Error("the demo's worker process did not start")
            time.sleep(rng.uniform(0.3, 0.9))
            child.kill()  # SIGKILL, wherever it is
    return (
        "after each SIGKILL, every transaction is whole or absent",
        ok,
        f"{KILLS} kills of a worker mid-transaction; events/outbox/replies/counter after each: "
        + ", ".join(notes),
    )


def _worker(db_path: str, first: int) -> None:
    """Withdraw forever from request ``first`` on (until killed)."""
    with _open(Path(db_path)) as db:
        print("ready", flush=True)
        i = first
        while True:
            withdraw(db, f"crash-{i}", "c", 1)
            i += 1


def _main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "worker":
        _worker(argv[1], int(argv[2]))
        return 0
    print("usage: python -m unbundled.demo_unit worker DB FIRST", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
