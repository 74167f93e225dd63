"""Events against their classes (issue 9, item 2).

An event that does not fit its own class is refused at append, on every path
(sync, async, multi-stream, already-serialized events, metadata), with a
``UsageError`` naming the field and the value, and nothing is written: so
nothing stored can make a later read fail. A stored event that no longer
fits today's class (schema drift) raises ``EventSchemaMismatch`` naming its
type, stored version, field and place, never ``CorruptionError``, and stays
readable as stored with ``read_raw``.
"""

from __future__ import annotations

import asyncio
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.eventstore.projections.conftest import BACKENDS, fresh_url
from unbundled import (
    NO_STREAM,
    AsyncEventStore,
    CorruptionError,
    EventSchemaMismatch,
    EventStore,
    Metadata,
    UsageError,
)
from unbundled.errors import exit_status
from unbundled.eventstore import Event, NewEvent, Projection, ProjectionTxn, StoredEvent
from unbundled.eventstore.aggregate import Repository
from unbundled.examples.bank import BankAccount


class Counted(Event, frozen=True):
    event_type: ClassVar[str] = "Counted"
    n: int


class CountedAsText(Event, frozen=True):
    """``Counted`` after a change that forgot its upcaster: ``n`` became text."""

    event_type: ClassVar[str] = "Counted"
    n: str


class Line(msgspec.Struct, frozen=True):
    sku: str
    quantity: int


class Ordered(Event, frozen=True):
    lines: list[Line]
    total: float
    note: str | None = None
    tags: dict[str, int] = msgspec.field(default_factory=dict)


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_url(request.param, tmp_path) as opened:
        yield opened


def assert_nothing_written(store: EventStore, position: int, *streams: str) -> None:
    assert store.safe_position() == position
    for stream in streams:
        assert store.state(stream).version == NO_STREAM, stream


# --- at append ------------------------------------------------------------------


def test_an_ill_typed_event_is_refused_at_append(url: str) -> None:
    with EventStore.open(url, sync="normal", events=[Counted, Ordered]) as store:
        store.append("s-0", [Counted(n=1)])
        with pytest.raises(UsageError) as caught:
            store.append("s-1", [Counted(n="x")])  # type: ignore[arg-type]
        assert "field n = 'x'" in caught.value.message
        assert caught.value.details == {"event_type": "Counted", "field": "n", "value": "'x'"}
        with pytest.raises(UsageError, match=r"field lines\[1\]\.quantity = '2'"):
            store.append("s-1", [Ordered(lines=[Line("a", 1), Line("b", "2")], total=1.0)])  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="field total = nan"):
            store.append("s-1", [Ordered(lines=[], total=float("nan"))])
        with pytest.raises(UsageError, match="field n = None"):
            store.append_many(
                [
                    ("s-2", [Counted(n=2)], NO_STREAM),
                    ("s-3", [Counted(n=3), Counted(n=None)], NO_STREAM),  # type: ignore[arg-type]
                ]
            )
        with pytest.raises(UsageError, match="cannot be stored as JSON"):
            store.append("s-1", [Ordered(lines=[], total=1.0, note=object())])  # type: ignore[arg-type]
        assert_nothing_written(store, 1, "s-1", "s-2", "s-3")
        # The refused appends left nothing that could break a read.
        assert [e.event for e in store.read_all()] == [Counted(n=1)]


def test_an_ill_typed_event_is_refused_by_the_async_store(url: str) -> None:
    async def main() -> None:
        async with await AsyncEventStore.open(url, sync="normal", events=[Counted]) as store:
            with pytest.raises(UsageError, match="field n = 'x'"):
                await store.append("s-1", [Counted(n="x")])  # type: ignore[arg-type]
            with pytest.raises(UsageError, match=r"field n = \[1\]"):
                await store.append_many(
                    [
                        ("s-2", [Counted(n=2)], NO_STREAM),
                        ("s-3", [Counted(n=[1])], NO_STREAM),  # type: ignore[arg-type]
                    ]
                )
            assert await store.safe_position() == 0
            assert (await store.state("s-2")).version == NO_STREAM

    asyncio.run(main())


def test_serialized_events_and_metadata_must_read_back(url: str) -> None:
    def raw(kind: str, data: Any, metadata: Any = b"{}", schema_version: Any = 1) -> NewEvent:
        return NewEvent(str(uuid.uuid4()), kind, data, metadata, schema_version)

    refused = {
        "a registered type that does not fit": raw("Counted", b'{"n":"x"}'),
        "a registered type missing a field": raw("Counted", b"{}"),
        "an unknown type that is not an object": raw("Free", b"[1, 2]"),
        "data that is not JSON": raw("Free", b"\xff\x00"),
        "data that is not bytes": raw("Free", '{"n": 1}'),
        "metadata that does not decode": raw("Free", b"{}", b'{"correlation_id": 5}'),
        "metadata that is not JSON": raw("Free", b"{}", b"{"),
        "a schema version that is not an int": raw("Free", b"{}", b"{}", "1"),
        "a version newer than the class": raw("Counted", b'{"n":1}', b"{}", 2),
    }
    with EventStore.open(url, sync="normal", events=[Counted]) as store:
        for why, event in refused.items():
            with pytest.raises(UsageError) as caught:
                store.append("s-1", [event])
            assert event.id in caught.value.message or "bytes" in caught.value.message, why
        for metadata in (Metadata(correlation_id=5), Metadata(user={"k": object()})):  # type: ignore[arg-type]
            with pytest.raises(UsageError, match="metadata"):
                store.append("s-1", [Counted(n=1)], metadata=metadata)
        with pytest.raises(UsageError, match="must be a Metadata"):
            store.append("s-1", [Counted(n=1)], metadata={"user": {}})  # type: ignore[arg-type]
        assert_nothing_written(store, 0, "s-1")
        # Serialized events that do read back are stored as they are.
        fine = [raw("Counted", b'{"n":7}'), raw("Free", b'{"any":[1]}', b'{"user":{"k":1}}')]
        store.append("s-1", fine)
        assert [e.event for e in store.read("s-1")] == [Counted(n=7), {"any": [1]}]


# Values of every JSON shape (and a few that JSON cannot hold), for any field.
_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=3),
    st.lists(st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.builds(Line, st.text(max_size=3), st.integers()),
    st.builds(Line, st.integers(), st.text(max_size=3)),
    st.sampled_from([b"bytes", object(), {1, 2}]),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.one_of(_ANY_VALUE, st.lists(_ANY_VALUE, max_size=3)),
    total=_ANY_VALUE,
    note=_ANY_VALUE,
    tags=_ANY_VALUE,
)
def test_whatever_an_append_accepts_reads_back_equal(
    lines: Any, total: Any, note: Any, tags: Any
) -> None:
    """The general law: an append either refuses (UsageError, nothing
    written) or stores an event that reads back equal, whatever the values."""
    event = Ordered(lines=lines, total=total, note=note, tags=tags)
    with EventStore.open("memory://", events=[Ordered]) as store:
        try:
            store.append("order-1", [event])
        except UsageError:
            assert_nothing_written(store, 0, "order-1")
            return
        [stored] = store.read("order-1")
        fresh = msgspec.json.decode(msgspec.json.encode(event), type=Ordered)
        assert stored.event == fresh
        assert store.read_all()[0].event == fresh


# --- schema drift on read ---------------------------------------------------------


class CountingProjection(Projection):
    name = "counting"
    collections = ("counting",)

    def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
        txn.put("counting", event.stream, b"1")


def test_a_stored_event_that_no_longer_fits_is_schema_drift(url: str) -> None:
    with EventStore.open(url, sync="normal", events=[Counted]) as old:
        old.append("s-1", [Counted(n=1), Counted(n=2)])
        # Today's code, on the same backend (memory:// lives only as long as it).
        store = EventStore(old.backend, events=[CountedAsText])
        with pytest.raises(EventSchemaMismatch) as caught:
            store.read("s-1")
        error = caught.value
        assert not isinstance(error, CorruptionError)
        assert isinstance(error, UsageError), "the code is out of date: the caller's fault"
        assert exit_status(error) == 2
        details = error.details
        expected = ("Counted", 1, "n", "s-1", 0, 1)
        assert (
            details["event_type"],
            details["schema_version"],
            details["field"],
            details["stream"],
            details["version"],
            details["position"],
        ) == expected
        assert "stored value 1" in error.message and "read_raw" in error.message
        assert details["raw"].data == b'{"n":1}'
        again = pickle.loads(pickle.dumps(error))
        assert (type(again), again.details) == (EventSchemaMismatch, details)
        # Every decoding read says the same; the raw reads still work.
        with pytest.raises(EventSchemaMismatch):
            store.read_all()
        with pytest.raises(EventSchemaMismatch):
            store.projections(CountingProjection()).catch_up()
        assert [e.data for e in store.read_raw("s-1")] == [b'{"n":1}', b'{"n":2}']
        assert [e.version for e in store.read_raw("s-1", backwards=True, limit=1)] == [1]
        assert len(store.read_all_raw()) == 2

        async def read_async() -> None:
            today = AsyncEventStore(old.backend, events=[CountedAsText])
            with pytest.raises(EventSchemaMismatch):
                await today.read("s-1")
            assert len(await today.read_raw("s-1", 1)) == 1

        asyncio.run(read_async())


def test_repository_load_reports_schema_drift(url: str) -> None:
    with EventStore.open(url, sync="normal") as store:
        # What older code may have stored: amounts as text.
        bad = NewEvent(str(uuid.uuid4()), "MoneyDeposited", b'{"amount":"12.50"}')
        store.append("account-9", [bad])
        accounts = Repository(store, BankAccount)
        with pytest.raises(EventSchemaMismatch) as caught:
            accounts.load("9")
        assert caught.value.details["field"] == "amount"
        assert "'12.50'" in caught.value.message
