"""Snapshots on memory and SQLite: taken every N events, used on load (only
the tail is read), used in time travel, upcast like events, ignored when no
upcaster bridges them, and never able to fail a save."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from unbundled.eventstore import EventStore, Snapshot
from unbundled.eventstore.aggregate import Aggregate, Repository, SnapshotState, applies
from unbundled.eventstore.serialization import Event
from unbundled.examples.bank import BankAccount
from unbundled.testing import SimClock

from .conftest import rows_read


def _account(accounts: Repository[BankAccount], id: str = "1") -> BankAccount:
    account = accounts.create(id)
    account.open(customer_id="c-1", owner="Ada")
    accounts.save(account)
    return account


def _snapshot_versions(store: EventStore, stream: str) -> list[int]:
    versions = []
    top: int | None = None
    while (found := store.backend.load_snapshot(stream, top)) is not None:
        versions.append(found.version)
        top = found.version - 1
        if top < 0:
            break
    return sorted(versions)


def test_a_snapshot_is_taken_each_time_the_stream_crosses_n_events(store: EventStore) -> None:
    accounts = Repository(store, BankAccount, snapshot_every=5)
    account = _account(accounts)  # version 0: 1 event
    for _ in range(11):  # one event per save: versions 1..11
        account.deposit(1)
        accounts.save(account)
    assert _snapshot_versions(store, "account-1") == [4, 9]  # the 5th and the 10th event
    for _ in range(6):  # one save of 6 events crosses 15 once: one snapshot at its end
        account.deposit(1)
    accounts.save(account)
    assert _snapshot_versions(store, "account-1") == [4, 9, 17]
    latest = store.backend.load_snapshot("account-1")
    assert latest is not None and (latest.type, latest.schema_version) == ("AccountState", 1)


def test_loading_reads_only_the_tail_after_the_snapshot(store: EventStore) -> None:
    accounts = Repository(store, BankAccount, snapshot_every=10)
    account = _account(accounts)
    for amount in range(1, 53):  # versions 1..52, snapshots at 9, 19, 29, 39, 49
        account.deposit(amount)
        accounts.save(account)

    before = rows_read(store)
    loaded = accounts.load("1")
    assert loaded.balance == sum(range(1, 53)) and loaded.version == 52
    assert (loaded.snapshot_version, loaded.replayed_events) == (49, 3)
    # The tail (50..52) plus the snapshot's own event, re-read to check it is still there.
    assert rows_read(store) - before == 4

    before = rows_read(store)
    old = accounts.load("1", as_of_version=25)  # the snapshot at 19, then 20..25
    assert (old.snapshot_version, old.replayed_events) == (19, 6)
    assert old.balance == sum(range(1, 26)) and rows_read(store) - before == 7

    plain = Repository(store, Plain)  # an aggregate without snapshots reads everything
    store.append("plain-1", [Tick() for _ in range(53)])
    before = rows_read(store)
    assert plain.load("1").ticks == 53 and rows_read(store) - before == 53


def test_time_travel_uses_a_snapshot_recorded_by_then(store: EventStore, clock: SimClock) -> None:
    accounts = Repository(store, BankAccount, snapshot_every=4)
    account = _account(accounts)
    times = []
    for _ in range(12):  # versions 1..12, a minute apart; snapshots at 3, 7, 11
        clock.advance(60_000)
        account.deposit(10)
        accounts.save(account)
        times.append(clock())
    at_v8 = accounts.load("1", as_of_time=times[7])
    assert (at_v8.version, at_v8.balance, at_v8.snapshot_version) == (8, 80, 7)
    at_v2 = accounts.load("1", as_of_time=times[1])  # before any snapshot's event
    assert (at_v2.version, at_v2.balance, at_v2.snapshot_version) == (2, 20, None)
    assert accounts.load("1", as_of_time=clock()).snapshot_version == 11


def test_a_snapshot_from_before_a_soft_delete_is_not_used(store: EventStore) -> None:
    accounts = Repository(store, BankAccount, snapshot_every=3)
    account = _account(accounts)
    for _ in range(5):
        account.deposit(100)
        accounts.save(account)
    assert _snapshot_versions(store, "account-1") == [2, 5]
    store.delete("account-1")  # reads stop; a new account may take the name
    unsnapshotted = Repository(store, BankAccount)  # keeps the v5 snapshot the latest
    again = _account(unsnapshotted)
    again.deposit(1)
    unsnapshotted.save(again)
    loaded = unsnapshotted.load("1")
    assert (loaded.balance, loaded.version, loaded.snapshot_version) == (1, 7, None)


# --- snapshot schema evolution ----------------------------------------------------------


class Added(Event, frozen=True):
    n: int


class Tick(Event, frozen=True):
    pass


class Plain(Aggregate):
    category = "plain"

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.ticks = 0

    @applies(Tick)
    def _tick(self, event: Tick) -> None:
        self.ticks += 1


class CounterState(SnapshotState, frozen=True):
    """v1 stored {"n": total}; v2 renamed it {"count": total}; v3 added the unit."""

    schema_version = 3
    count: int
    unit: str


class Counter(Aggregate):
    category = "counter"
    snapshot_type = CounterState

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.total = 0
        self.unit = "items"

    @applies(Added)
    def _added(self, event: Added) -> None:
        self.total += event.n

    def to_snapshot(self) -> CounterState:
        return CounterState(count=self.total, unit=self.unit)

    def restore(self, state: CounterState) -> None:
        self.total, self.unit = state.count, state.unit


def _counter_with_old_snapshot(store: EventStore, clock: SimClock, schema_version: int) -> None:
    """Ten events, a snapshot at version 9 as old code wrote it, three more events."""
    store.append("counter-c", [Added(n=1) for _ in range(10)])
    data = {1: b'{"n":10}', 2: b'{"count":10}', 9: b'{"count":10,"unit":"x","new":1}'}
    store.backend.save_snapshot(
        Snapshot("counter-c", 9, "CounterState", schema_version, data[schema_version], clock())
    )
    store.append("counter-c", [Added(n=1) for _ in range(3)])


def _register_upcasters(counters: Repository[Counter]) -> None:
    @counters.snapshot_upcaster("CounterState", 1)
    def rename(state: dict[str, Any]) -> dict[str, Any]:
        return {"count": state["n"]}

    @counters.snapshot_upcaster("CounterState", 2)
    def add_unit(state: dict[str, Any]) -> dict[str, Any]:
        return {**state, "unit": "items"}


@pytest.mark.parametrize("stored_version", [1, 2])
def test_an_old_snapshot_is_upcast_through_the_chain(
    store: EventStore, clock: SimClock, stored_version: int
) -> None:
    _counter_with_old_snapshot(store, clock, stored_version)
    counters = Repository(store, Counter, snapshot_every=100)
    _register_upcasters(counters)
    before = rows_read(store)
    loaded = counters.load("c")
    assert (loaded.snapshot_version, loaded.replayed_events) == (9, 3)
    assert (loaded.total, loaded.unit) == (13, "items")
    assert rows_read(store) - before == 4


def test_a_snapshot_no_upcaster_bridges_is_ignored(store: EventStore, clock: SimClock) -> None:
    _counter_with_old_snapshot(store, clock, 1)
    loaded = Repository(store, Counter).load("c")  # no upcasters: replay everything
    assert (loaded.total, loaded.snapshot_version, loaded.replayed_events) == (13, None, 13)


def test_a_snapshot_newer_than_the_code_is_ignored(store: EventStore, clock: SimClock) -> None:
    _counter_with_old_snapshot(store, clock, 9)
    loaded = Repository(store, Counter).load("c")
    assert (loaded.total, loaded.snapshot_version) == (13, None)


# --- best effort ------------------------------------------------------------------------


class Fragile(Counter):
    def to_snapshot(self) -> CounterState:
        raise RuntimeError("a bug in to_snapshot")


def test_a_failing_snapshot_never_fails_the_save(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    fragile = Repository(store, Fragile, snapshot_every=2)
    counter = fragile.create("f")
    counter.record(Added(n=1))
    counter.record(Added(n=2))
    with caplog.at_level(logging.WARNING, logger="unbundled.eventstore"):
        result = fragile.save(counter)
    assert result is not None and result.last_version == 1  # the events are stored
    assert fragile.snapshot_failures == 1 and "a bug in to_snapshot" in caplog.text
    assert store.backend.load_snapshot("counter-f") is None
    assert fragile.load("f").total == 3
