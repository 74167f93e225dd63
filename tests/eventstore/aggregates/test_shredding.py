"""Crypto-shredding on memory and SQLite: personal fields round-trip exactly
while the key exists; after ``forget`` they read as None, for good, in events
and snapshots, while everything else (and every other subject) stays intact."""

from __future__ import annotations

import importlib
import sys
import uuid
from typing import Any

import pytest

from unbundled.errors import CorruptionError, NotSupported, SubjectForgotten, UsageError
from unbundled.eventstore import EventStore, NewEvent
from unbundled.eventstore.aggregate import Repository
from unbundled.eventstore.serialization import Event, Serializer
from unbundled.examples.bank import BankAccount, Deposited, Opened
from unbundled.testing import SimClock

from .conftest import open_store


def _open(accounts: Repository[BankAccount], id: str, customer: str, owner: str) -> BankAccount:
    account = accounts.create(id)
    account.open(customer_id=customer, owner=owner)
    account.deposit(100)
    accounts.save(account)
    return account


def _raw(store: EventStore) -> bytes:
    return b"".join(e.data for e in store.read_all_raw())


def test_personal_fields_are_encrypted_at_rest_and_read_back_exactly(store: EventStore) -> None:
    owner = 'Zoë O\'Brien \N{SNOWMAN} "quoted"'
    store.append("account-1", [Opened(customer_id="c-1", owner=owner), Deposited(amount=5)])
    assert [e.event for e in store.read("account-1")] == [
        Opened(customer_id="c-1", owner=owner),
        Deposited(amount=5),
    ]
    raw = _raw(store)
    assert b"Brien" not in raw and b'"$personal"' in raw and b'"customer_id":"c-1"' in raw
    assert store.read_all()[0].event.owner == owner


def test_forget_leaves_the_rest_of_the_event_and_other_subjects_intact(
    store: EventStore,
) -> None:
    accounts = Repository(store, BankAccount)
    _open(accounts, "1", "c-1", "Ada")
    _open(accounts, "2", "c-1", "Ada")  # a second account of the same customer
    _open(accounts, "3", "c-2", "Grace")
    store.forget("c-1")

    for id in ("1", "2"):
        forgotten = accounts.load(id)
        assert (forgotten.owner, forgotten.customer_id, forgotten.balance) == (None, "c-1", 100)
        opened = store.read(f"account-{id}")[0]
        assert opened.event == Opened(customer_id="c-1", owner=None)
        assert opened.type == "AccountOpened" and opened.version == 0
    assert accounts.load("3").owner == "Grace"  # another subject: untouched

    kept = accounts.load("1")  # the account lives on without the name
    kept.withdraw(40)
    accounts.save(kept)
    assert accounts.load("1").balance == 60


def test_forget_is_permanent(url: str, clock: SimClock) -> None:
    with open_store(url, clock) as store:
        accounts = Repository(store, BankAccount)
        _open(accounts, "1", "c-1", "Ada")
        store.forget("c-1")
        store.forget("c-1")  # idempotent
        with pytest.raises(SubjectForgotten):  # no new personal data for them, ever
            store.append("account-9", [Opened(customer_id="c-1", owner="Ada again")])
        assert store.state("account-9").version == -1
        store.append("account-9", [Opened(customer_id="c-1", owner=None)])  # nothing personal
    if url.startswith("memory"):
        return
    with open_store(url, clock) as store:  # reopened: the key is still gone
        assert Repository(store, BankAccount).load("1").owner is None
        assert b"Ada" not in _raw(store)


def test_snapshots_are_shredded_too(store: EventStore) -> None:
    accounts = Repository(store, BankAccount, snapshot_every=2)
    account = _open(accounts, "1", "c-1", "Ada")
    snapshot = store.backend.load_snapshot("account-1")
    assert snapshot is not None and b"Ada" not in snapshot.data
    loaded = accounts.load("1")
    assert (loaded.snapshot_version, loaded.owner) == (1, "Ada")

    store.forget("c-1")
    loaded = accounts.load("1")
    assert (loaded.snapshot_version, loaded.owner, loaded.balance) == (1, None, 100)

    # An aggregate still holding the name cannot snapshot it any more; the save succeeds.
    account.deposit(1)
    account.deposit(1)
    assert accounts.save(account) is not None and accounts.snapshot_failures == 1
    assert accounts.load("1").balance == 102


def test_a_retried_append_of_personal_data_is_idempotent(store: EventStore) -> None:
    ids = [uuid.uuid4()]
    event = Opened(customer_id="c-1", owner="Ada")
    first = store.append("account-1", [event], ids=ids)
    assert store.append("account-1", [event], ids=ids) == first  # same ciphertext
    assert len(store.read("account-1")) == 1


def test_tampered_ciphertext_is_corruption(store: EventStore) -> None:
    store.append("account-1", [Opened(customer_id="c-1", owner="Ada")])
    stored = store.read_all_raw()[0]
    tampered = stored.data.replace(b'"data":"', b'"data":"AAAA', 1)
    store.append("copy-1", [NewEvent(str(uuid.uuid4()), stored.type, tampered)])
    with pytest.raises(CorruptionError, match="does not authenticate"):
        store.read("copy-1")


class RegisteredV1(Event, frozen=True):
    event_type = "Registered"
    personal_data = ("name",)
    data_subject = "customer_id"
    customer_id: str
    name: str | None


class Registered(Event, frozen=True):
    event_type = "Registered"
    schema_version = 2
    personal_data = ("full_name",)
    data_subject = "customer_id"
    customer_id: str
    full_name: str | None


def test_an_upcaster_sees_the_decrypted_personal_data(url: str, clock: SimClock) -> None:
    with open_store(url, clock) as old:  # the old code writes v1 events
        old.serializer.register(RegisteredV1)
        old.append("customer-1", [RegisteredV1(customer_id="c-1", name="Ada")])
        old.append("customer-2", [RegisteredV1(customer_id="c-2", name="Grace")])
        serializer = Serializer([Registered])

        @serializer.upcaster("Registered", 1)
        def rename(data: dict[str, Any]) -> dict[str, Any]:
            data["full_name"] = data.pop("name")
            return data

        new = EventStore(old.backend, serializer=serializer)  # the new code, same storage
        new.forget("c-2")
        assert new.read("customer-1")[0].event == Registered(customer_id="c-1", full_name="Ada")
        assert new.read("customer-2")[0].event == Registered(customer_id="c-2", full_name=None)


def test_declarations_are_checked(store: EventStore) -> None:
    class NotOptional(Event, frozen=True):
        personal_data = ("email",)
        data_subject = "customer_id"
        customer_id: str
        email: str

    class NoSubject(Event, frozen=True):
        personal_data = ("email",)
        email: str | None

    class SubjectIsPersonal(Event, frozen=True):
        personal_data = ("customer_id",)
        data_subject = "customer_id"
        customer_id: str | None

    cases: list[tuple[Event, str]] = [
        (NotOptional(customer_id="c", email="e"), "must accept None"),
        (NoSubject(email="e"), "must name fields"),
        (SubjectIsPersonal(customer_id="c"), "cannot be both"),
        (Opened(customer_id="", owner="Ada"), "non-empty string"),
    ]
    for event, message in cases:
        with pytest.raises(UsageError, match=message):
            store.append("bad-1", [event])
    assert store.streams() == []


def test_without_cryptography_shredding_is_not_supported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m == "cryptography" or m.startswith("cryptography.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cryptography", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "unbundled.eventstore.shredding", raising=False)
    with pytest.raises(NotSupported, match=r"unbundled\[crypto\]") as missing:
        importlib.import_module("unbundled.eventstore.shredding")
    assert missing.value.details == {"extra": "crypto"}
    with EventStore.open("memory://") as store:  # events without personal data still work
        store.append("account-1", [Deposited(amount=1)])
        assert store.read("account-1")[0].event == Deposited(amount=1)
        with pytest.raises(NotSupported):
            store.append("account-1", [Opened(customer_id="c-1", owner="Ada")])
