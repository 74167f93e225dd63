"""Projections: read model and checkpoint commit together; failures leave
nothing; rival runners cannot both advance; rebuild equals the live result."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unbundled import Closed, NotSupported, ProjectionConflict, UsageError
from unbundled.eventstore import (
    Event,
    EventStore,
    Projection,
    ProjectionRunner,
    ProjectionTxn,
    StoredEvent,
    projection_status,
)
from unbundled.eventstore.read_models import raw_documents

from ._helpers import (
    BALANCES,
    EVENTS,
    Balances,
    Deposited,
    Opened,
    Withdrawn,
    append_in_thread,
    expected_balances,
)

DEADLINE_S = 30.0


class Counts(Projection):
    """Events per type, over every category."""

    name = "counts"
    collections = ("counts",)

    def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
        old = txn.get("counts", event.type)
        txn.put("counts", event.type, b"%d" % (int(old or b"0") + 1))


class SqlBalances(Projection):
    """Balances in a table of their own, written through ``txn.sql``."""

    name = "sql_balances"
    categories = ("account",)

    def reset(self, txn: ProjectionTxn) -> None:
        txn.sql.execute(
            "CREATE TABLE IF NOT EXISTS rm_balances "
            "(stream TEXT PRIMARY KEY, amount INTEGER NOT NULL, events INTEGER NOT NULL)"
        )
        txn.sql.execute("DELETE FROM rm_balances")

    def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
        delta = 0
        if isinstance(event.event, Deposited):
            delta = event.event.amount
        elif isinstance(event.event, Withdrawn):
            delta = -event.event.amount
        txn.sql.execute(
            "INSERT INTO rm_balances VALUES (?, ?, 1) ON CONFLICT(stream) DO UPDATE SET "
            "amount = amount + excluded.amount, events = events + 1",
            (event.stream, delta),
        )


class FailsAt(Balances):
    """Balances whose handler fails at one position (a bug in the projection)."""

    name = "failing"
    collections = ("balances",)

    def __init__(self, position: int) -> None:
        self.position = position

    def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
        super().handle(event, txn)  # writes a document first: it must not survive
        if event.position == self.position:
            raise ValueError(f"cannot handle {event.position}")


def fill(store: EventStore, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        stream = f"account-{i % 7}" if i % 5 else f"order-{i % 3}"
        event = Withdrawn(amount=i % 4) if i % 3 == 0 else Deposited(amount=i)
        store.append(stream, [event])


def counts(store: EventStore) -> dict[str, int]:
    return {k: int(v) for k, v in raw_documents(store, "counts").items()}


def expected_counts(store: EventStore) -> dict[str, int]:
    out: dict[str, int] = {}
    for event in store.read_all(0, limit=10_000):
        out[event.type] = out.get(event.type, 0) + 1
    return out


def test_catch_up_writes_documents_with_the_checkpoint(store: EventStore) -> None:
    fill(store, 120)
    runner = store.projections(Balances(), Counts(), batch_size=16)
    before = runner.status()
    assert before["balances"].checkpoint == 0 and before["balances"].lag == 120
    assert runner.catch_up() == len(store.read_all(0, categories=["account"])) + 120
    assert BALANCES.to_dict(store) == expected_balances(store)
    assert counts(store) == expected_counts(store)
    status = runner.status()
    # The filtered projection's checkpoint moved past the unwanted tail too.
    assert {s.checkpoint for s in status.values()} == {120}
    assert {s.lag for s in status.values()} == {0}
    assert store.backend.checkpoints() == {"balances": 120, "counts": 120}
    assert set(projection_status(store)) == {"balances", "counts"}
    assert runner.catch_up() == 0  # nothing new: nothing applied twice


def test_runner_follows_live_appends_and_resumes_after_restart(store: EventStore) -> None:
    fill(store, 50)
    with store.projections(Balances(), Counts(), batch_size=8) as runner:
        writer = append_in_thread(store, 80, lambda i: f"account-{i % 4}")
        writer.join()
        assert runner.wait_caught_up(DEADLINE_S)
        assert BALANCES.to_dict(store) == expected_balances(store)
        assert counts(store) == expected_counts(store)
    fill(store, 30, start=50)  # while no runner runs
    restarted = store.projections(Balances(), Counts())
    with restarted:
        assert restarted.wait_caught_up(DEADLINE_S)
    # It resumed from the stored checkpoints: only the new events were applied
    # (counted once its threads have stopped, so every commit is counted).
    assert restarted.status()["counts"].applied == 30
    assert BALANCES.to_dict(store) == expected_balances(store)
    assert counts(store) == expected_counts(store)


def test_a_failing_handler_leaves_nothing_and_stops_only_its_projection(
    store: EventStore,
) -> None:
    fill(store, 40)
    runner = store.projections(FailsAt(position=19), Counts(), batch_size=10)
    runner.start()
    try:
        with pytest.raises(ValueError, match="cannot handle 19"):
            runner.wait_caught_up(DEADLINE_S)
        runner._worker("failing").thread.join(DEADLINE_S)  # type: ignore[union-attr]
        status = runner.status()
        failing = status["failing"]
        assert not failing.running and isinstance(failing.error, ValueError)
        # Account events are at positions 2-5, 7-10, 12-15...: the first batch
        # of ten ends at 13; the second (14..25) failed as a whole, so neither
        # its documents nor its checkpoint are there.
        assert failing.checkpoint == 13
        documents = BALANCES.to_dict(store)
        assert max(b.last_position for b in documents.values()) == 13
        assert documents == expected_balances(store, upto=13)
        # The other projection is unaffected and keeps following.
        fill(store, 10, start=40)
        while runner.status()["counts"].checkpoint < 50:
            assert runner.status()["counts"].running
            store.backend.wait_for_events(store.backend.events_change_token(), 0.05)
        assert counts(store) == expected_counts(store)
    finally:
        runner.stop()


@pytest.fixture
def two_stores(store: EventStore, store_url: str) -> Iterator[tuple[EventStore, EventStore]]:
    """Two handles on one store: two backends (as two processes would have),
    except in memory, where there is only one."""
    if store_url.startswith("memory"):
        yield store, store
        return
    with EventStore.open(store_url, sync="normal", events=EVENTS) as other:
        yield store, other


class DepositedV2(Event, frozen=True):
    """``Deposited`` as a newer release reads it: stored v1 events are upcast."""

    event_type = "Deposited"
    schema_version = 2
    amount: int


def racing_store(backend_of: EventStore, rival: ProjectionRunner) -> EventStore:
    """A second facade whose decoding of the first v1 ``Deposited`` lets
    ``rival`` catch up first. Decoding runs between a runner's read and its
    commit, so the rival always wins that race: a deterministic conflict."""
    racing = EventStore(backend_of.backend, events=[DepositedV2])
    fired = False

    @racing.serializer.upcaster("Deposited", 1)
    def upcast(data: dict[str, Any]) -> dict[str, Any]:
        nonlocal fired
        if not fired:
            fired = True
            rival.catch_up()
        return data

    return racing


def test_a_runner_that_loses_the_race_gets_projection_conflict(
    two_stores: tuple[EventStore, EventStore],
) -> None:
    store, other = two_stores
    fill(store, 30)
    rival = store.projections(Counts())
    loser = racing_store(other, rival).projections(Counts())
    with pytest.raises(ProjectionConflict) as caught:
        loser.catch_up()
    assert caught.value.details == {"projection": "counts", "expected": 0, "actual": 30}
    assert counts(store) == expected_counts(store)  # nothing of the loser's batch applied
    fill(store, 5, start=30)
    assert loser.catch_up() == 5  # re-reads the checkpoint: only what is new
    assert counts(store) == expected_counts(store)


def test_a_running_runner_backs_off_after_a_conflict(
    two_stores: tuple[EventStore, EventStore],
) -> None:
    store, other = two_stores
    fill(store, 30)
    rival = store.projections(Counts())
    loser = ProjectionRunner(
        racing_store(other, rival), [Counts()], batch_size=8, conflict_backoff_s=0.01
    )
    with loser:
        assert loser.wait_caught_up(DEADLINE_S)
        # The rival caught up from inside the loser's first step; the loser's
        # commit of that batch then failed. Wait for that before appending
        # more, or the rival (still catching up) would take those too.
        deadline = time.monotonic() + DEADLINE_S
        while loser.status()["counts"].conflicts == 0:
            assert time.monotonic() < deadline and loser.status()["counts"].running
            time.sleep(0.005)
        fill(store, 10, start=30)
        assert loser.wait_caught_up(DEADLINE_S)
    status = loser.status()["counts"]
    assert status.conflicts == 1 and status.error is None
    assert status.applied == 10  # the rival took the first 30, it the rest
    assert counts(store) == expected_counts(store)


def test_two_runners_of_one_projection_keep_the_read_model_right(
    two_stores: tuple[EventStore, EventStore],
) -> None:
    store, other = two_stores
    first = store.projections(Balances(), batch_size=5)
    second = ProjectionRunner(other, [Balances()], batch_size=5, conflict_backoff_s=0.01)
    with first, second:
        for burst in range(30):
            store.append_many(
                [
                    (f"account-{(burst + k) % 6}", [Deposited(amount=burst * 10 + k)], -2)
                    for k in range(4)
                ]
            )
        assert first.wait_caught_up(DEADLINE_S) and second.wait_caught_up(DEADLINE_S)
    # Read after both stopped: `applied` is counted just after each commit, so
    # while running it can trail the checkpoint that wait_caught_up saw.
    statuses = [first.status()["balances"], second.status()["balances"]]
    assert all(s.error is None for s in statuses)
    # Between them they applied each event once: the handler refuses a repeat,
    # and a repeat would show in the balances.
    assert sum(s.applied for s in statuses) == 120
    assert BALANCES.to_dict(store) == expected_balances(store)


def test_rebuild_equals_the_live_result(store: EventStore) -> None:
    fill(store, 60)
    with store.projections(Balances(), Counts(), batch_size=7) as runner:
        append_in_thread(store, 60, lambda i: f"account-{i % 9}", start=60).join()
        assert runner.wait_caught_up(DEADLINE_S)
        live_balances = BALANCES.to_dict(store)
        live_counts = counts(store)
        runner.rebuild("balances")  # while running: its thread replays it
        assert runner.wait_caught_up(DEADLINE_S)
        assert BALANCES.to_dict(store) == live_balances
        assert counts(store) == live_counts
    assert live_balances == expected_balances(store)
    # A rebuild of a stopped runner resets now and replays at the next catch-up.
    runner.rebuild("counts")
    assert raw_documents(store, "counts") == {}
    assert runner.status()["counts"].checkpoint == 0
    runner.catch_up()
    assert counts(store) == live_counts


def test_sql_read_model_on_sqlite(tmp_path: Path) -> None:
    with EventStore.open(tmp_path / "events.db", sync="normal", events=EVENTS) as store:
        fill(store, 90)
        runner = store.projections(SqlBalances(), Balances(), batch_size=11)
        runner.catch_up()

        def table() -> dict[str, tuple[int, int]]:
            conn = sqlite3.connect(tmp_path / "events.db")
            try:
                rows = conn.execute("SELECT stream, amount, events FROM rm_balances").fetchall()
            finally:
                conn.close()
            return {s: (a, n) for s, a, n in rows}

        expected = {s: (b.amount, b.events) for s, b in expected_balances(store).items()}
        assert table() == expected
        runner.rebuild("sql_balances")
        assert table() == {}  # emptied by reset() in the rebuild's transaction
        fill(store, 10, start=90)
        runner.catch_up()
        expected = {s: (b.amount, b.events) for s, b in expected_balances(store).items()}
        assert table() == expected


def test_sql_read_model_is_not_supported_on_memory() -> None:
    with EventStore.open("memory://", events=EVENTS) as store:
        store.append("account-1", [Opened(owner="ada")])
        with pytest.raises(NotSupported):
            store.projections(SqlBalances()).catch_up()
        assert store.backend.checkpoints().get("sql_balances", 0) == 0


def test_a_failed_batch_on_sqlite_rolls_back_sql_too(tmp_path: Path) -> None:
    class Breaks(SqlBalances):
        name = "breaks"

        def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
            super().handle(event, txn)
            if event.position == 5:
                raise RuntimeError("boom")

    with EventStore.open(tmp_path / "events.db", sync="normal", events=EVENTS) as store:
        for _ in range(8):
            store.append("account-1", [Deposited(amount=1)])
        with pytest.raises(RuntimeError):
            store.projections(Breaks()).catch_up()
        with pytest.raises(sqlite3.OperationalError):  # not even reset()'s CREATE TABLE
            conn = sqlite3.connect(tmp_path / "events.db")
            try:
                conn.execute("SELECT * FROM rm_balances")
            finally:
                conn.close()
        assert store.backend.checkpoints().get("breaks", 0) == 0


def test_runner_arguments() -> None:
    class Nameless(Projection):
        def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
            pass

    with EventStore.open("memory://") as store:
        with pytest.raises(UsageError):
            store.projections(Nameless())
        with pytest.raises(UsageError):
            store.projections(Balances(), Balances())
        with pytest.raises(UsageError):
            store.projections(Balances(), batch_size=0)
        runner = store.projections(Balances())
        with pytest.raises(UsageError):
            runner.rebuild("missing")
        with runner, pytest.raises(UsageError):
            runner.catch_up()


def test_stop_is_prompt_while_idle(store: EventStore) -> None:
    runner = store.projections(Balances(), Counts()).start()
    threads = [w.thread for w in runner._workers.values()]
    runner.stop()
    assert all(t is not None and not t.is_alive() for t in threads)
    assert not any(s.running for s in runner.status().values())


def test_closing_the_store_ends_running_projections(tmp_path: Path) -> None:
    for url in ("memory://", str(tmp_path / "events.db")):
        store = EventStore.open(url, sync="normal", events=EVENTS)
        runner = store.projections(Balances(), Counts()).start()
        worker = store.subscribe(handler=lambda event: None)
        store.close()
        for projection in runner._workers.values():
            assert projection.thread is not None
            projection.thread.join(DEADLINE_S)
            assert isinstance(projection.error, Closed)
        with pytest.raises(Closed):
            worker.join(DEADLINE_S)
        assert not worker.running
        runner.stop()
