"""Aggregates on memory and SQLite: commands, replay, optimistic concurrency,
time travel, and a property: the aggregate agrees with a direct fold."""

from __future__ import annotations

import copy
import doctest
import pickle
import tempfile
import threading
import types
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

import unbundled.eventstore.aggregate as aggregate_module
import unbundled.examples.bank as bank_module
from unbundled.errors import (
    ConflictError,
    StreamNotFound,
    UsageError,
    WrongExpectedVersion,
)
from unbundled.eventstore import NO_STREAM, Event, EventStore, NewEvent
from unbundled.eventstore.aggregate import Aggregate, Repository, applies
from unbundled.examples.bank import (
    BankAccount,
    BankError,
    Deposited,
    InsufficientFunds,
    Opened,
    Withdrawn,
)
from unbundled.testing import SimClock

from .conftest import open_store


def test_commands_record_events_and_load_replays_them(store: EventStore) -> None:
    accounts = Repository(store, BankAccount)
    account = accounts.create("1")
    assert (account.stream, account.version) == ("account-1", NO_STREAM)
    account.open(customer_id="c-1", owner="Ada")
    account.deposit(100)
    account.withdraw(30)
    assert account.balance == 70 and account.version == 2 and len(account.pending) == 3

    result = accounts.save(account)
    assert result is not None and (result.first_version, result.last_version) == (0, 2)
    assert not account.pending and accounts.save(account) is None  # nothing left to save

    loaded = accounts.load("1")
    assert (loaded.balance, loaded.owner, loaded.customer_id) == (70, "Ada", "c-1")
    assert loaded.version == 2 and loaded.replayed_events == 3 and loaded.snapshot_version is None
    stored = [e.event for e in store.read("account-1")]
    assert stored == [
        Opened(customer_id="c-1", owner="Ada"),
        Deposited(amount=100),
        Withdrawn(amount=30),
    ]

    loaded.deposit(5)
    accounts.save(loaded)
    assert accounts.load("1").balance == 75 and store.state("account-1").version == 3


def test_a_fresh_repository_decodes_events_it_never_wrote(url: str, clock: SimClock) -> None:
    with open_store(url, clock) as store:
        accounts = Repository(store, BankAccount)
        account = accounts.create("1")
        account.open(customer_id="c-1", owner="Ada")
        account.deposit(10)
        accounts.save(account)
    if url.startswith("memory"):
        return  # nothing survives a memory store
    with open_store(url, clock) as store:  # a new process: no class registered yet
        assert Repository(store, BankAccount).load("1").balance == 10


def test_rules_refuse_commands_and_record_nothing(store: EventStore) -> None:
    accounts = Repository(store, BankAccount)
    account = accounts.create("1")
    with pytest.raises(BankError, match="not open"):
        account.deposit(10)
    account.open(customer_id="c-1", owner="Ada")
    with pytest.raises(BankError, match="already open"):
        account.open(customer_id="c-1", owner="Ada")
    account.deposit(50)
    with pytest.raises(InsufficientFunds) as refused:
        account.withdraw(51)
    assert (refused.value.balance, refused.value.amount) == (50, 51)
    assert not isinstance(refused.value, ConflictError)  # retrying cannot help
    assert pickle.loads(pickle.dumps(refused.value)).amount == 51
    for bad in (0, -5, 1.5):
        with pytest.raises(ValueError, match="positive"):
            account.deposit(bad)  # type: ignore[arg-type]
    assert (account.balance, account.version, len(account.pending)) == (50, 1, 2)


def test_concurrent_save_raises_wrong_expected_version_naming_the_stream(
    store: EventStore,
) -> None:
    accounts = Repository(store, BankAccount)
    account = accounts.create("1")
    account.open(customer_id="c-1", owner="Ada")
    account.deposit(100)
    accounts.save(account)

    first, second = accounts.load("1"), accounts.load("1")
    first.withdraw(80)
    second.withdraw(80)  # each alone is fine; both would overdraw
    accounts.save(first)
    with pytest.raises(WrongExpectedVersion) as conflict:
        accounts.save(second)
    assert conflict.value.details == {"stream": "account-1", "expected": 1, "actual": 2}
    assert "account-1" in str(conflict.value)
    assert len(second.pending) == 1  # kept: nothing was written
    assert store.state("account-1").version == 2

    again = accounts.load("1")  # reload and retry the command: now the rule decides
    with pytest.raises(InsufficientFunds):
        again.withdraw(80)
    assert accounts.load("1").balance == 20


def test_creating_an_existing_aggregate_conflicts(store: EventStore) -> None:
    accounts = Repository(store, BankAccount)
    for _ in range(2):
        account = accounts.create("same")
        account.open(customer_id="c-1", owner="Ada")
        if store.state("account-same").version == NO_STREAM:
            accounts.save(account)
        else:
            with pytest.raises(WrongExpectedVersion) as conflict:
                accounts.save(account)
            assert conflict.value.details["expected"] == NO_STREAM


def test_threads_saving_with_retry_lose_no_update(store: EventStore) -> None:
    accounts = Repository(store, BankAccount)
    account = accounts.create("shared")
    account.open(customer_id="c-1", owner="Ada")
    accounts.save(account)
    conflicts = [0] * 4

    def deposit_ten_times(worker: int) -> None:
        for _ in range(10):
            while True:
                mine = accounts.load("shared")
                mine.deposit(1)
                try:
                    accounts.save(mine)
                    break
                except WrongExpectedVersion:
                    conflicts[worker] += 1

    threads = [threading.Thread(target=deposit_ten_times, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = accounts.load("shared")
    assert final.balance == 40 and final.version == 40  # every deposit once, none lost


def test_a_retried_save_is_written_once(store: EventStore) -> None:
    accounts = Repository(store, BankAccount)
    account = accounts.create("1")
    account.open(customer_id="c-1", owner="Ada")
    account.deposit(7)
    retry = copy.deepcopy(account)  # as if the first save's outcome were unknown
    first = accounts.save(account)
    assert accounts.save(retry) == first
    assert [e.version for e in store.read("account-1")] == [0, 1]


class Pinged(Event, frozen=True):
    n: int


class Ignored(Event, frozen=True):
    pass


class Pinger(Aggregate):
    category = "pinger"

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.total = 0

    @applies(Pinged)
    def _pinged(self, event: Pinged) -> None:
        self.total += event.n


def test_an_unhandled_event_is_a_clear_error(store: EventStore) -> None:
    pinger = Pinger("p")
    with pytest.raises(UsageError, match=r"Pinger does not handle Ignored events"):
        pinger.record(Ignored())
    assert pinger.pending == () and pinger.version == NO_STREAM

    store.append("pinger-p", [Pinged(n=1), Ignored()], expected_version=NO_STREAM)
    with pytest.raises(UsageError, match="Ignored"):
        Repository(store, Pinger).load("p")
    mystery = NewEvent(str(uuid.uuid4()), "Mystery", b"{}")  # no class for it anywhere
    store.append("pinger-q", [Pinged(n=1), mystery])
    with pytest.raises(UsageError, match=r"pinger-q v1 is a 'Mystery' event"):
        Repository(store, Pinger).load("q")


def test_loading_a_missing_aggregate_raises_stream_not_found(store: EventStore) -> None:
    with pytest.raises(StreamNotFound):
        Repository(store, BankAccount).load("nobody")


def test_declarations_are_checked() -> None:
    with pytest.raises(UsageError, match="category"):

        class Bad(Aggregate):
            category = "has-dash"

    with pytest.raises(UsageError, match="id"):
        BankAccount("")
    with EventStore.open("memory://") as store:
        with pytest.raises(UsageError, match="snapshot_type"):
            Repository(store, Pinger, snapshot_every=10)
        with pytest.raises(UsageError, match="snapshot_every"):
            Repository(store, BankAccount, snapshot_every=0)


# --- time travel ------------------------------------------------------------------------


def _history(store: EventStore, clock: SimClock) -> list[int]:
    """Open, then one save a minute; returns the time of each save."""
    accounts = Repository(store, BankAccount)
    account = accounts.create("1")
    account.open(customer_id="c-1", owner="Ada")
    times = []
    for amount in (100, 200, 300):
        account.deposit(amount)
        accounts.save(account)
        times.append(clock())
        clock.advance(60_000)
    return times


def test_time_travel_by_version(store: EventStore, clock: SimClock) -> None:
    _history(store, clock)
    accounts = Repository(store, BankAccount)
    assert [accounts.load("1", as_of_version=v).balance for v in range(5)] == [
        0,
        100,
        300,
        600,
        600,  # past the end: the current state
    ]
    past = accounts.load("1", as_of_version=2)
    assert past.version == 2
    past.deposit(1)
    with pytest.raises(WrongExpectedVersion):  # the past is read-only
        accounts.save(past)


def test_time_travel_by_time(store: EventStore, clock: SimClock) -> None:
    first, second, third = _history(store, clock)
    accounts = Repository(store, BankAccount)
    assert accounts.load("1", as_of_time=first).balance == 100
    assert accounts.load("1", as_of_time=second - 1).balance == 100
    assert accounts.load("1", as_of_time=second + 30_000).balance == 300
    assert accounts.load("1", as_of_time=third).balance == 600
    assert accounts.load("1", as_of_time=clock()).version == 3
    with pytest.raises(StreamNotFound, match="at or before"):
        accounts.load("1", as_of_time=first - 1)
    with pytest.raises(UsageError, match="not both"):
        accounts.load("1", as_of_time=first, as_of_version=1)


# --- a property: the aggregate agrees with a direct fold ---------------------------------

operations = st.lists(
    st.tuples(st.sampled_from(["deposit", "withdraw"]), st.integers(1, 500)), max_size=40
)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
@given(ops=operations, snapshot_every=st.integers(1, 8))
def test_balance_equals_a_direct_fold_and_never_goes_negative(
    backend: str, ops: list[tuple[str, int]], snapshot_every: int
) -> None:
    expected = 0
    for kind, amount in ops:  # the fold, written independently of the aggregate
        if kind == "deposit":
            expected += amount
        elif amount <= expected:
            expected -= amount

    with (
        tempfile.TemporaryDirectory() as directory,
        EventStore.open(
            "memory://" if backend == "memory" else f"{directory}/p.db", sync="off"
        ) as store,
    ):
        accounts = Repository(store, BankAccount, snapshot_every=snapshot_every)
        account = accounts.create("p")
        account.open(customer_id="c", owner="P")
        accounts.save(account)
        for kind, amount in ops:
            try:
                account.deposit(amount) if kind == "deposit" else account.withdraw(amount)
            except InsufficientFunds:
                assert amount > account.balance
            assert account.balance >= 0
            accounts.save(account)
        assert account.balance == expected
        loaded = accounts.load("p")  # from snapshots and events
        assert (loaded.balance, loaded.version) == (expected, account.version)
        history = [accounts.load("p", as_of_version=v).balance for v in range(loaded.version + 1)]
        assert min(history) >= 0 and history[-1] == expected


@pytest.mark.parametrize("module", [aggregate_module, bank_module], ids=lambda m: m.__name__)
def test_docstring_examples(module: types.ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
