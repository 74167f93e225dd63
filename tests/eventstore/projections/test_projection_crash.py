"""The projection crash test: a ProjectionRunner SIGKILLed at random points,
over and over, never applies an event twice and never misses one.

A child process runs a :class:`ProjectionRunner` over a SQLite store with two
projections side by side: per-account balances kept both as documents and as
rows of a SQL table (``txn.sql``), and per-category counts. Meanwhile the
parent appends events from a thread. The parent SIGKILLs the child at a
seed-chosen moment (during start-up or while it projects), restarts it, and
after every kill checks that each read model equals the balances computed
from scratch from ``read_all`` *up to that projection's checkpoint*: the
documents, the SQL rows and the checkpoint committed together or not at all.
At the end it lets a last child catch up and checks the read models equal a
from-scratch rebuild of the whole log.

Set ``UNBUNDLED_CRASH_SEED`` to replay a seed printed by a failure (the
kill plan replays; the exact interleaving depends on timing).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import sys
import threading
import time
import traceback
from pathlib import Path

import msgspec
import pytest

from unbundled.eventstore import (
    ANY,
    Event,
    EventStore,
    Projection,
    ProjectionRunner,
    ProjectionTxn,
)
from unbundled.eventstore.api import StoredEvent
from unbundled.eventstore.read_models import Documents, raw_documents
from unbundled.testing.child import ChildProcess

from ._helpers import EVENTS, Deposited, Opened, Withdrawn

ROOT = Path(__file__).resolve().parents[3]
SEED = int(os.environ.get("UNBUNDLED_CRASH_SEED", random.SystemRandom().randrange(2**32)))
KILLS = 40
ACCOUNTS = 12
START_TIMEOUT_S = 60.0
CATCH_UP_TIMEOUT_S = 60.0
CHILD_LIFETIME_S = 120.0  # a child the parent forgot exits on its own


class Balance(msgspec.Struct, frozen=True):
    amount: int = 0
    events: int = 0
    position_sum: int = 0  # a repeated or missed event shows here too
    last_position: int = 0


def delta(event: StoredEvent) -> int:
    if isinstance(event.event, Deposited):
        return event.event.amount
    if isinstance(event.event, Withdrawn):
        return -event.event.amount
    return 0


BALANCES = Documents("crash_balances", Balance)


class CrashBalances(Projection):
    """Balances as documents and, in the same transaction, as SQL rows."""

    name = "crash_balances"
    categories = ("account",)
    collections = ("crash_balances",)

    def reset(self, txn: ProjectionTxn) -> None:
        txn.sql.execute(
            "CREATE TABLE IF NOT EXISTS crash_sql (stream TEXT PRIMARY KEY, "
            "amount INTEGER NOT NULL, events INTEGER NOT NULL, position_sum INTEGER NOT NULL)"
        )
        txn.sql.execute("DELETE FROM crash_sql")

    def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
        old = BALANCES.get(txn, event.stream) or Balance()
        if event.position <= old.last_position:
            raise AssertionError(f"{event.stream}: position {event.position} applied twice")
        change = delta(event)
        BALANCES.put(
            txn,
            event.stream,
            Balance(
                old.amount + change,
                old.events + 1,
                old.position_sum + event.position,
                event.position,
            ),
        )
        txn.sql.execute(
            "INSERT INTO crash_sql VALUES (?, ?, 1, ?) ON CONFLICT(stream) DO UPDATE SET "
            "amount = amount + excluded.amount, events = events + 1, "
            "position_sum = position_sum + excluded.position_sum",
            (event.stream, change, event.position),
        )


class CategoryCounts(Projection):
    """Events per category, over every category (runs beside the other)."""

    name = "crash_counts"
    collections = ("crash_counts",)

    def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
        category = event.stream.partition("-")[0]
        old = txn.get("crash_counts", category)
        txn.put("crash_counts", category, b"%d" % (int(old or b"0") + 1))


# --- the child -----------------------------------------------------------------------------


def child_main(db: str, batch_size: int) -> None:
    """Run the projections until killed, reporting "ready" once running."""
    parent = os.getppid()
    try:
        store = EventStore.open(db, sync="full", events=EVENTS)
        runner = ProjectionRunner(store, [CrashBalances(), CategoryCounts()], batch_size=batch_size)
        runner.start()
        os.write(1, b"ready\n")
        deadline = time.monotonic() + CHILD_LIFETIME_S
        while time.monotonic() < deadline and os.getppid() == parent:
            for status in runner.status().values():
                if status.error is not None:
                    raise status.error
            time.sleep(0.02)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)
    os._exit(0)


# --- the parent ----------------------------------------------------------------------------


class Model:
    """The read models recomputed from scratch from ``read_all``, no projection code."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.events: list[tuple[int, str, int]] = []  # (position, stream, delta) of every event
        self.loaded = 0

    def load(self) -> None:
        while True:
            page = self.store.read_all(self.loaded, limit=5000)
            self.events.extend((e.position, e.stream, delta(e)) for e in page)
            if page:
                self.loaded = page[-1].position
            if len(page) < 5000:
                return

    def balances(self, upto: int) -> dict[str, Balance]:
        out: dict[str, Balance] = {}
        for position, stream, change in self.events:
            if position > upto:
                break
            if not stream.startswith("account-"):
                continue
            old = out.get(stream, Balance())
            out[stream] = Balance(
                old.amount + change, old.events + 1, old.position_sum + position, position
            )
        return out

    def counts(self, upto: int) -> dict[str, int]:
        out: dict[str, int] = {}
        for position, stream, _ in self.events:
            if position > upto:
                break
            category = stream.partition("-")[0]
            out[category] = out.get(category, 0) + 1
        return out


def sql_rows(db: Path) -> dict[str, tuple[int, int, int]]:
    conn = sqlite3.connect(db)
    try:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'crash_sql'"
        ).fetchone()
        rows = conn.execute("SELECT * FROM crash_sql").fetchall() if exists else []
    finally:
        conn.close()
    return {stream: (amount, events, total) for stream, amount, events, total in rows}


def check_read_models(store: EventStore, db: Path, model: Model, when: str) -> tuple[int, int]:
    """With no runner alive: each read model equals the recomputation up to
    its own checkpoint. Returns the two checkpoints."""
    model.load()
    checkpoints = store.backend.checkpoints()
    balances_at = checkpoints.get("crash_balances", 0)
    counts_at = checkpoints.get("crash_counts", 0)
    assert balances_at <= model.loaded and counts_at <= model.loaded
    expected = model.balances(balances_at)
    assert BALANCES.to_dict(store) == expected, (
        f"seed={SEED}: {when}: the balance documents differ from a rebuild up to "
        f"checkpoint {balances_at}"
    )
    rows = {s: (b.amount, b.events, b.position_sum) for s, b in expected.items()}
    assert sql_rows(db) == rows, (
        f"seed={SEED}: {when}: the SQL balances differ from a rebuild up to "
        f"checkpoint {balances_at}"
    )
    counts = {k: int(v) for k, v in raw_documents(store, "crash_counts").items()}
    assert counts == model.counts(counts_at), (
        f"seed={SEED}: {when}: the category counts differ from a rebuild up to "
        f"checkpoint {counts_at}"
    )
    return balances_at, counts_at


class Appender:
    """Appends events from a thread of the parent while children project."""

    def __init__(self, store: EventStore, seed: int) -> None:
        self.store = store
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        rng = self.rng
        streams = [f"account-{a}" for a in range(ACCOUNTS)] + [f"order-{o}" for o in range(3)]
        try:
            while not self.stop.is_set():
                # One atomic append to one to three distinct streams.
                writes: list[tuple[str, list[Event], int]] = []
                for stream in rng.sample(streams, rng.randint(1, 3)):
                    amount = rng.randint(1, 100)
                    event: Event = Opened(owner="x")
                    if stream.startswith("account-"):
                        event = (
                            Deposited(amount=amount)
                            if rng.random() < 0.6
                            else Withdrawn(amount=amount)
                        )
                    writes.append((stream, [event], ANY))
                self.store.append_many(writes)
                self.stop.wait(0.003)
        except BaseException as exc:
            self.error = exc


def spawn(db: Path, batch_size: int) -> ChildProcess:
    return ChildProcess(
        [
            "-m",
            "tests.eventstore.projections.test_projection_crash",
            "child",
            str(db),
            str(batch_size),
        ],
        cwd=ROOT,
    )


def kill_once(db: Path, rng: random.Random, kill: int) -> None:
    """Start a runner child and SIGKILL it at a seed-chosen moment."""
    batch_size = rng.choice([1, 2, 3, 7, 16, 50])
    with spawn(db, batch_size) as child:
        if rng.random() < 0.1:
            time.sleep(rng.uniform(0.0, 0.25))  # during start-up: imports, opening the file
        else:
            ready = child.wait_for(lambda line: line == "ready", START_TIMEOUT_S)
            assert ready is not None, (
                f"seed={SEED}: kill {kill}: the runner did not start: {child.stderr_text()}"
            )
            time.sleep(rng.uniform(0.0, 0.5))  # while it projects
        exited = child.proc.poll()
        child.kill()
        assert exited is None and child.proc.returncode == -signal.SIGKILL, (
            f"seed={SEED}: kill {kill}: the runner exited by itself "
            f"(status {child.proc.returncode}): {child.stderr_text()}"
        )


@pytest.mark.slow
def test_projection_runner_survives_sigkill(tmp_path: Path) -> None:
    print(f"projection crash test: UNBUNDLED_CRASH_SEED={SEED}")  # shown on any failure
    db = tmp_path / "events.db"
    rng = random.Random(SEED)
    with EventStore.open(db, sync="normal", events=EVENTS) as store:
        model = Model(store)
        appender = Appender(store, SEED)
        appender.thread.start()
        progress: list[tuple[int, int]] = []
        try:
            for kill in range(1, KILLS + 1):
                kill_once(db, rng, kill)
                assert appender.error is None, f"seed={SEED}: appending failed"
                progress.append(check_read_models(store, db, model, f"after kill {kill}"))
        finally:
            appender.stop.set()
            appender.thread.join(30)
        assert appender.error is None, f"seed={SEED}: appending failed: {appender.error!r}"

        # The runners made progress between kills (the test is not vacuous).
        assert progress[-1][0] > 0 and progress[-1][1] > 0, f"seed={SEED}: {progress}"

        # A last runner catches up with everything; then a from-scratch comparison.
        with spawn(db, 64) as child:
            assert child.wait_for(lambda line: line == "ready", START_TIMEOUT_S) is not None, (
                f"seed={SEED}: the last runner did not start: {child.stderr_text()}"
            )
            target = store.safe_position()
            deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
            backend = store.backend
            token = backend.events_change_token()
            while min(backend.checkpoints().values(), default=0) < target:
                assert child.proc.poll() is None, f"seed={SEED}: {child.stderr_text()}"
                assert time.monotonic() < deadline, f"seed={SEED}: the runner did not catch up"
                token = backend.wait_for_events(token, 0.1)  # the child's commits move it
            child.kill()
        at = check_read_models(store, db, model, "at the end")
        assert at == (target, target), f"seed={SEED}: checkpoints {at}, end {target}"
        assert len(model.balances(target)) == ACCOUNTS, f"seed={SEED}"


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child_main(sys.argv[2], int(sys.argv[3]))
