"""The event store's contract: checks every :class:`~unbundled.eventstore.EventStoreBackend`
must pass, through the :class:`~unbundled.eventstore.EventStore` facade and the raw backend.

Each check is a plain function taking an :class:`EventStoreTarget` (how to
open a fresh, empty store on the backend under test) and raising
``AssertionError`` when a guarantee is broken, like
:mod:`unbundled.testing.contract` does for the log::

    from unbundled.testing.eventstore_contract import EventStoreTarget, all_checks

    @pytest.mark.parametrize("check", all_checks(), ids=lambda c: c.__name__)
    def test_eventstore_contract(check, tmp_path):
        check(EventStoreTarget(
            "sqlite", lambda clock: EventStore.open(tmp_path / "x.db", clock=clock), True))
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from .. import limits
from ..errors import (
    Closed,
    DuplicateEventId,
    LimitExceeded,
    NotSupported,
    StreamDeleted,
    StreamNotFound,
    UsageError,
    WrongExpectedVersion,
)
from ..eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    Event,
    EventStore,
    Metadata,
    NewEvent,
    RecordedEvent,
    Snapshot,
    StreamWrite,
)
from ._eventstore_kit import (
    Check,
    Deposited,
    EventStoreTarget,
    Opened,
    durable_only,
    everything,
    new_event,
    submit,
)
from ._log_kit import raises, run_threads
from .clock import SimClock
from .eventstore_contract_state import CHECKS as STATE_CHECKS

__all__ = [
    "Check",
    "EventStoreTarget",
    "all_checks",
    "durable_only",
    "everything",
    "new_event",
    "submit",
]


def all_checks(*, durable: bool = True) -> list[Check]:
    """Every check; without ``durable``, only those a volatile store can pass."""
    checks = [*CHECKS, *STATE_CHECKS]
    return [c for c in checks if durable or not getattr(c, "durable_only", False)]


def _unchanged(store: EventStore, streams: Sequence[str]) -> Callable[[], None]:
    """Remember the store's head and streams; the returned call asserts nothing moved."""
    before = (store.safe_position(), [store.state(s) for s in streams])

    def check() -> None:
        after = (store.safe_position(), [store.state(s) for s in streams])
        assert after == before, f"a failed call wrote something: {before} -> {after}"

    return check


# --- expected versions and atomicity -------------------------------------------


def check_expected_versions(target: EventStoreTarget) -> None:
    with target.open(SimClock()) as store:
        assert store.append("acct-1", [new_event()], NO_STREAM) == AppendResult(
            "acct-1", 0, 0, (1,)
        )
        unchanged = _unchanged(store, ["acct-1", "acct-2"])
        err = raises(WrongExpectedVersion, lambda: store.append("acct-1", [new_event()], NO_STREAM))
        assert err.details == {"stream": "acct-1", "expected": NO_STREAM, "actual": 0}
        assert "'acct-1'" in str(err) and "NO_STREAM" in str(err), str(err)
        err = raises(
            WrongExpectedVersion, lambda: store.append("acct-2", [new_event()], STREAM_EXISTS)
        )
        assert err.details == {"stream": "acct-2", "expected": STREAM_EXISTS, "actual": NO_STREAM}
        assert "STREAM_EXISTS" in str(err) and "'acct-2'" in str(err), str(err)
        err = raises(WrongExpectedVersion, lambda: store.append("acct-2", [new_event()], 0))
        assert err.details == {"stream": "acct-2", "expected": 0, "actual": NO_STREAM}
        err = raises(WrongExpectedVersion, lambda: store.append("acct-1", [new_event()], 5))
        assert err.details == {"stream": "acct-1", "expected": 5, "actual": 0}
        assert "5" in str(err) and "0" in str(err)
        unchanged()
        assert store.append("acct-1", [new_event(), new_event()], 0).last_version == 2
        assert store.append("acct-1", [new_event()], STREAM_EXISTS).first_version == 3
        assert store.append("acct-1", [new_event()], ANY).first_version == 4
        assert store.append("acct-3", [new_event()], ANY) == AppendResult("acct-3", 0, 0, (6,))
        err = raises(WrongExpectedVersion, lambda: store.append("acct-1", [new_event()], 3))
        assert err.details["actual"] == 4
        state = store.state("acct-1")
        assert (state.version, state.deleted, state.tombstoned) == (4, False, False)
        assert store.state("ghost").version == NO_STREAM
        # The raw backend reports a conflict through the waiter, as a typed error.
        write = StreamWrite("acct-1", 0, [new_event()])
        assert raises(WrongExpectedVersion, lambda: submit(store, [write])).details["actual"] == 4
        assert store.safe_position() == 6


def check_multi_stream_append_is_atomic(target: EventStoreTarget) -> None:
    """Without ``transactions``: refused with ``NotSupported``, writing nothing."""
    with target.open(SimClock()) as store:
        store.append("a-1", [new_event()], NO_STREAM)
        if not target.transactions:
            unchanged = _unchanged(store, ["a-1", "b-1"])
            writes = [("a-1", [new_event()], 0), ("b-1", [new_event()], NO_STREAM)]
            refused = raises(NotSupported, lambda: store.append_many(writes))
            assert "several" in str(refused) and "atomic" in str(refused), str(refused)
            raw = [
                StreamWrite("b-1", NO_STREAM, [new_event()]),
                StreamWrite("a-1", 0, [new_event()]),
            ]
            raises(NotSupported, lambda: submit(store, raw))
            unchanged()
            one = store.append_many([("a-1", [new_event()], 0)])
            assert one == [AppendResult("a-1", 1, 1, (2,))], "one stream is one append"
            return
        results = store.append_many(
            [
                ("a-1", [new_event(), new_event()], 0),
                ("b-1", [new_event()], NO_STREAM),
                ("c-1", [new_event()], ANY),
            ]
        )
        assert results == [
            AppendResult("a-1", 1, 2, (2, 3)),
            AppendResult("b-1", 0, 0, (4,)),
            AppendResult("c-1", 0, 0, (5,)),
        ]
        store.delete("c-1", hard=True)
        unchanged = _unchanged(store, ["a-1", "b-1", "d-1"])
        conflicting = [
            ("a-1", [new_event()], 2),
            ("b-1", [new_event()], 7),
            ("d-1", [new_event()], NO_STREAM),
        ]
        err = raises(WrongExpectedVersion, lambda: store.append_many(conflicting))
        assert err.details == {"stream": "b-1", "expected": 7, "actual": 0}
        unchanged()
        tombstoned = [("d-1", [new_event()], ANY), ("c-1", [new_event()], ANY)]
        assert raises(StreamDeleted, lambda: store.append_many(tombstoned)).details == {
            "stream": "c-1"
        }
        twice = [("d-1", [new_event()], ANY), ("d-1", [new_event()], ANY)]
        assert raises(UsageError, lambda: store.append_many(twice)).details == {"stream": "d-1"}
        raw = [StreamWrite("d-1", NO_STREAM, [new_event()]), StreamWrite("a-1", 0, [new_event()])]
        raises(WrongExpectedVersion, lambda: submit(store, raw))
        unchanged()
        assert [e.stream for e in everything(store)] == ["a-1", "a-1", "a-1", "b-1", "c-1"]


def check_idempotent_append(target: EventStoreTarget) -> None:
    with target.open(SimClock()) as store:
        ids = [uuid.uuid4() for _ in range(4)]
        events: list[Event | NewEvent] = [Opened(owner="ada"), Deposited(amount=5)]
        meta = Metadata(correlation_id="c1")
        first = store.append("acct-1", events, NO_STREAM, ids=ids[:2], metadata=meta)
        assert store.append("acct-1", events, NO_STREAM, ids=ids[:2], metadata=meta) == first
        store.append("acct-1", [Deposited(amount=1)], 1, ids=[ids[2]])
        # A late retry (the stream moved on) still returns the original result,
        # and ids may be given as UUID objects or strings in any case.
        upper = [str(i).upper() for i in ids[:2]]
        assert store.append("acct-1", events, NO_STREAM, ids=upper, metadata=meta) == first
        unchanged = _unchanged(store, ["acct-1", "acct-2"])
        conflicts: list[Callable[[], object]] = [
            lambda: store.append(
                "acct-1",
                [Opened(owner="bob"), Deposited(amount=5)],
                ANY,
                ids=ids[:2],
                metadata=meta,
            ),
            lambda: store.append("acct-1", events, ANY, ids=ids[:2]),  # other metadata
            lambda: store.append("acct-2", events, ANY, ids=ids[:2], metadata=meta),
            # Without transactions an id is looked for where the append
            # conflicts (its stream), not everywhere: a stale expected version.
            lambda: store.append(
                "acct-1",
                events,
                ANY if target.transactions else 0,
                ids=[ids[0], ids[3]],
                metadata=meta,
            ),
        ]
        for i, call in enumerate(conflicts):
            err = raises(DuplicateEventId, call)
            assert err.details["event_id"] in {str(ids[0]), str(ids[3])}, (i, err.details)
        repeated = raises(UsageError, lambda: store.append("acct-1", events, ANY, ids=[ids[3]] * 2))
        assert repeated.details == {"event_id": str(ids[3])}
        unchanged()
        # The raw backend: a multi-stream retry returns every write's result.
        writes = [
            StreamWrite("m-1", NO_STREAM, [new_event("A"), new_event("B")]),
            StreamWrite("m-2", NO_STREAM, [new_event("C")]),
        ][: None if target.transactions else 1]
        original = submit(store, writes)
        head = store.safe_position()
        assert submit(store, writes) == original and store.safe_position() == head
        generated = store.append("g-1", [Opened(owner="x"), Deposited(amount=1)])
        stored_ids = [e.id for e in store.read_all_raw(generated.positions[0] - 1, limit=2)]
        assert len(set(stored_ids)) == 2
        assert all(str(uuid.UUID(i)) == i for i in stored_ids), "ids are canonical UUIDs"
        assert len(everything(store)) == head + 2


def check_versions_and_positions_dense(target: EventStoreTarget) -> None:
    with target.open(SimClock()) as store:
        expected_ids: list[str] = []
        counts: dict[str, int] = {}
        for i in range(40):
            stream = f"s-{i % 5}"
            writes = [(stream, [new_event() for _ in range(1 + i % 4)], counts.get(stream, 0) - 1)]
            if i % 3 == 0:
                writes.append((f"t-{i % 2}", [new_event()], ANY))
            several = i % 2 and target.transactions
            results = store.append_many(writes) if several else [store.append(*writes[0])]
            if len(results) < len(writes):
                results.append(store.append(*writes[1]))
            for (name, events, _), result in zip(writes, results, strict=True):
                first = counts.get(name, 0)
                assert (result.first_version, result.last_version) == (
                    first,
                    first + len(events) - 1,
                ), result
                head = len(expected_ids)
                assert result.positions == tuple(range(head + 1, head + 1 + len(events)))
                counts[name] = first + len(events)
                expected_ids.extend(e.id for e in events)
            assert store.safe_position() == len(expected_ids)
        stored = everything(store)
        assert [e.position for e in stored] == list(range(1, len(expected_ids) + 1))
        assert [e.id for e in stored] == expected_ids, "$all is in commit order"
        for stream, count in counts.items():
            assert [e.version for e in store.read(stream)] == list(range(count)), stream


def check_concurrent_appends(target: EventStoreTarget) -> None:
    """Threads append to a shared stream (with expected versions, so some
    conflict) and to their own, while another thread saves snapshots and
    runs projections in the same group commits. Every conflict is reported,
    no private append fails, and versions and positions stay dense."""
    writers, rounds = 6, 25
    with target.open(SimClock()) as store:
        lock = threading.Lock()
        tally = {"ok": 0, "conflicts": 0, "finished": 0}
        positions: list[int] = []

        def other_writes() -> None:
            checkpoint = 0
            while tally["finished"] < writers and checkpoint < 1000:
                store.backend.save_snapshot(Snapshot("own-0", checkpoint, "S", 1, b"{}", 0))
                if target.transactions:
                    store.backend.project(
                        "p", checkpoint, checkpoint + 1, lambda t: t.put("c", "k", b"v")
                    )
                checkpoint += 1

        def append(n: int) -> None:
            mine: list[int] = []
            for i in range(rounds):
                mine.extend(store.append(f"own-{n}", [new_event()], i - 1).positions)
                try:
                    version = store.state("shared").version
                    mine.extend(store.append("shared", [new_event()], version).positions)
                    outcome = "ok"
                except WrongExpectedVersion:
                    outcome = "conflicts"
                with lock:
                    tally[outcome] += 1
            assert mine == sorted(mine), "a thread's appends land in its order"
            with lock:
                positions.extend(mine)
                tally["finished"] += 1

        run_threads(lambda n: other_writes() if n == writers else append(n), writers + 1)
        assert tally["ok"] + tally["conflicts"] == writers * rounds
        assert sorted(positions) == list(range(1, len(positions) + 1))
        assert [e.position for e in everything(store)] == sorted(positions)
        assert [e.version for e in store.read("shared")] == list(range(tally["ok"]))
        for n in range(writers):
            assert [e.version for e in store.read(f"own-{n}")] == list(range(rounds))


# --- reading ------------------------------------------------------------------


def check_read_stream(target: EventStoreTarget) -> None:
    with target.open(SimClock()) as store:
        store.append("s-1", [new_event(data=b'{"i":%d}' % i) for i in range(10)])

        def versions(**kwargs: Any) -> list[int]:
            return [e.version for e in store.read("s-1", **kwargs)]

        assert versions() == list(range(10))
        assert versions(from_version=4) == [4, 5, 6, 7, 8, 9]
        assert versions(limit=3) == [0, 1, 2]
        assert versions(from_version=4, limit=3) == [4, 5, 6]
        assert versions(from_version=10) == [] and versions(from_version=99) == []
        assert versions(backwards=True) == list(range(9, -1, -1)), "backwards from the end"
        assert versions(backwards=True, from_version=5, limit=3) == [5, 4, 3]
        assert versions(backwards=True, from_version=99, limit=2) == [9, 8]
        assert [e.event for e in store.read("s-1", from_version=7, limit=1)] == [{"i": 7}]
        raw = store.backend.read_stream("s-1", 0, 10, backwards=True)
        assert [e.version for e in raw] == [0], "raw backwards from version 0 is that event"
        err = raises(StreamNotFound, lambda: store.read("missing-1"))
        assert err.details == {"stream": "missing-1"} and "missing-1" in str(err)
        store.append("big-1", [new_event() for _ in range(2100)], NO_STREAM)
        assert [e.version for e in store.iter_stream("big-1")] == list(range(2100))
        assert [e.version for e in store.iter_stream("big-1", 1999)] == list(range(1999, 2100))


def check_read_all_filters(target: EventStoreTarget) -> None:
    with target.open(SimClock()) as store:
        store.serializer.register(Opened, Deposited)
        store.append("account-1", [Opened(owner="ada"), Deposited(amount=5)])
        store.append("order-1", [new_event("Placed")])
        store.append("account-2", [Deposited(amount=7)])
        store.append("orders", [new_event("Placed")])
        store.append("a-b-c", [new_event("Noted")])
        assert store.read_all() == store.read_all(0) and store.safe_position() == 6

        def where(**kwargs: Any) -> list[tuple[str, int]]:
            return [(e.stream, e.position) for e in store.read_all(**kwargs)]

        assert [p for _, p in where()] == [1, 2, 3, 4, 5, 6]
        assert [p for _, p in where(after_position=2)] == [3, 4, 5, 6]
        assert [p for _, p in where(after_position=1, limit=2)] == [2, 3]
        assert where(after_position=6) == [] and where(after_position=60) == []
        assert where(categories=["account"]) == [
            ("account-1", 1),
            ("account-1", 2),
            ("account-2", 4),
        ]
        assert where(categories=["orders", "a"]) == [("orders", 5), ("a-b-c", 6)]
        assert where(categories=["account"], after_position=2, limit=1) == [("account-2", 4)]
        assert (
            where(types=[Deposited])
            == where(types=["Deposited"])
            == [
                ("account-1", 2),
                ("account-2", 4),
            ]
        )
        assert where(types=["Placed"], categories=["order"]) == [("order-1", 3)]
        assert where(categories=["nothing"]) == [] and where(types=["Nothing"]) == []
        assert where(categories=[]) == [] and where(types=[]) == [], "an empty filter matches none"
        typed = store.read_all(categories=["account"])
        assert [e.event for e in typed] == [
            Opened(owner="ada"),
            Deposited(amount=5),
            Deposited(amount=7),
        ]
        assert [e.category for e in store.read_all_raw()] == [
            "account", "account", "order", "account", "orders", "a",
        ]  # fmt: skip
        raw = store.backend.read_all(0, 100, ["account"], ["Opened"])
        assert [e.position for e in raw] == [1]


def check_event_fields_round_trip(target: EventStoreTarget) -> None:
    clock = SimClock()
    with target.open(clock) as store:
        clock.advance(1234)
        event_id = str(uuid.uuid4())
        meta = Metadata(correlation_id="corr", causation_id="cause", user={"who": ["ada", 1]})
        store.append("acct-1", [Opened(owner="ädä")], ids=[event_id], metadata=meta)
        data = b'{ "z": 1,  "a": "\\u00e9" }'  # stored byte for byte, not re-encoded
        raw = NewEvent(str(uuid.uuid4()), "Raw", data, b'{"user":{"k":"v"}}', schema_version=3)
        submit(store, [StreamWrite("acct-1", 0, [raw])])
        first, second = store.read("acct-1")
        assert (first.id, first.stream, first.version, first.position) == (event_id, "acct-1", 0, 1)
        assert (first.type, first.schema_version, first.recorded_ms) == ("Opened", 1, clock())
        assert first.event == Opened(owner="ädä") and first.metadata == meta
        assert second.event == {"z": 1, "a": "é"} and second.metadata.user == {"k": "v"}
        stored = store.backend.read_stream("acct-1", 1, 1)[0]
        assert stored == RecordedEvent(
            raw.id, "acct-1", 1, 2, "Raw", 3, data, raw.metadata, clock()
        ), stored


# --- deletion -----------------------------------------------------------------


def check_soft_delete(target: EventStoreTarget) -> None:
    with target.open(SimClock()) as store:
        store.append("acct-1", [new_event() for _ in range(3)])
        store.append("acct-2", [new_event()])
        err = raises(WrongExpectedVersion, lambda: store.delete("acct-1", 1))
        assert err.details == {"stream": "acct-1", "expected": 1, "actual": 2}
        store.delete("acct-1", 2)
        assert raises(StreamNotFound, lambda: store.read("acct-1")).details == {"stream": "acct-1"}
        assert store.state("acct-1")[1:] == (2, True, False)
        assert store.streams() == ["acct-2"]
        assert len(everything(store)) == 4, "soft-deleted events stay in $all"
        store.delete("acct-1")  # deleting again is allowed
        raises(WrongExpectedVersion, lambda: store.delete("acct-1", STREAM_EXISTS))
        err = raises(
            WrongExpectedVersion, lambda: store.append("acct-1", [new_event()], STREAM_EXISTS)
        )
        assert err.details["actual"] == NO_STREAM, "a soft-deleted stream does not exist"
        raises(WrongExpectedVersion, lambda: store.append("acct-1", [new_event()], 2))
        again = store.append("acct-1", [new_event(), new_event()], NO_STREAM)
        assert (again.first_version, again.last_version) == (3, 4), "versions continue"
        assert [e.version for e in store.read("acct-1")] == [3, 4]
        assert [e.version for e in store.read("acct-1", backwards=True)] == [4, 3]
        assert [e.version for e in store.read("acct-1", 1)] == [3, 4]
        assert store.backend.read_stream("acct-1", 2, 10, backwards=True) == []
        assert store.append("acct-1", [new_event()], 4).first_version == 5
        assert store.state("acct-1")[1:] == (5, False, False)
        assert store.streams() == ["acct-1", "acct-2"]
        assert len(everything(store)) == 7


def check_hard_delete(target: EventStoreTarget) -> None:
    with target.open(SimClock()) as store:
        store.append("acct-1", [new_event(), new_event()])
        store.delete("acct-1", 1, hard=True)
        assert store.state("acct-1")[1:] == (1, False, True)
        calls: list[Callable[[], object]] = [
            lambda: store.read("acct-1"),
            lambda: store.append("acct-1", [new_event()]),
            lambda: store.append("acct-1", [new_event()], NO_STREAM),
            lambda: store.append("acct-1", [new_event()], 1),
            lambda: store.delete("acct-1"),
            lambda: store.delete("acct-1", hard=True),
            lambda: store.backend.read_stream("acct-1", 0, 10, True),
        ]
        for i, call in enumerate(calls):
            err = raises(StreamDeleted, call)
            assert err.details == {"stream": "acct-1"}, (i, err.details)
        assert store.streams() == [] and len(everything(store)) == 2
        store.append("acct-2", [new_event()])
        store.delete("acct-2")  # soft, then hard
        store.delete("acct-2", hard=True)
        raises(StreamDeleted, lambda: store.append("acct-2", [new_event()]))
        store.delete("never-1", NO_STREAM, hard=True)  # reserve a name for good
        raises(StreamDeleted, lambda: store.append("never-1", [new_event()], NO_STREAM))
        assert store.safe_position() == 3


def check_list_streams(target: EventStoreTarget) -> None:
    with target.open(SimClock()) as store:
        names = [f"acct-{i:02d}" for i in range(12)] + ["order-1", "order-2", "solo"]
        if target.transactions:
            store.append_many([(n, [new_event()], NO_STREAM) for n in reversed(names)])
        else:
            for name in reversed(names):
                store.append(name, [new_event()], NO_STREAM)
        assert store.streams() == sorted(names)
        pages: list[str] = []
        while page := store.streams(after=pages[-1] if pages else "", limit=5):
            assert len(page) <= 5
            pages.extend(page)
        assert pages == sorted(names)
        assert store.streams(category="order") == ["order-1", "order-2"]
        assert store.streams(category="solo") == ["solo"]
        assert store.streams(category="acct", after="acct-04", limit=3) == [
            "acct-05", "acct-06", "acct-07",
        ]  # fmt: skip
        assert store.streams(category="nothing") == []
        store.delete("acct-05")
        store.delete("order-1", hard=True)
        assert store.streams(category="acct", after="acct-04", limit=2) == ["acct-06", "acct-07"]
        assert store.streams(category="order") == ["order-2"]


# --- bad input and closing ----------------------------------------------------


def check_bad_input_is_refused(target: EventStoreTarget) -> None:
    with target.open(SimClock()) as store:
        store.append("acct-1", [new_event()])
        unchanged = _unchanged(store, ["acct-1"])
        long_name = "x" * (limits.stream_name_bytes_max + 1)
        bad_name: Any
        for bad_name in ("has space", "$all", "", "tab\there", long_name, 5):
            err = raises(UsageError, partial(store.append, bad_name, [new_event()]))
            assert err.details == {"stream": bad_name}, err.details
            raises(UsageError, partial(submit, store, [StreamWrite(bad_name, ANY, [new_event()])]))
        for bad_id in ("not-a-uuid", "", "1234"):
            err = raises(UsageError, partial(store.append, "acct-1", [new_event()], ids=[bad_id]))
            assert err.details == {"event_id": bad_id}
            raw = StreamWrite("acct-1", ANY, [new_event(event_id=bad_id)])
            err = raises(UsageError, partial(submit, store, [raw]))
            assert err.details["event_id"] == bad_id
            err = raises(UsageError, partial(store.append, "acct-1", [new_event(event_id=bad_id)]))
            assert err.details["event_id"] == bad_id, "NewEvent ids are checked too"
        assert raises(UsageError, lambda: store.append("acct-1", [])).details == {
            "stream": "acct-1"
        }
        raises(UsageError, lambda: submit(store, [StreamWrite("acct-1", ANY, [])]))
        expected: Any
        for expected in (-3, -5, "0", 1.0, None):
            err = raises(UsageError, partial(store.append, "acct-1", [new_event()], expected))
            assert err.details == {"expected_version": expected}
        huge = new_event(data=b"x" * (limits.event_bytes_max + 1))
        too_large = raises(LimitExceeded, lambda: store.append("acct-1", [huge]))
        assert too_large.details == {"stream": "acct-1", "event_id": huge.id}
        raises(LimitExceeded, lambda: submit(store, [StreamWrite("acct-1", ANY, [huge])]))
        many = [new_event() for _ in range(limits.append_events_max + 1)]
        raises(LimitExceeded, lambda: store.append("acct-1", many))
        raises(UsageError, lambda: store.append("acct-1", [new_event("")]))
        raises(UsageError, lambda: store.append("acct-1", [new_event()], ids=[]))
        raises(UsageError, lambda: store.append("acct-1", new_event()))  # type: ignore[arg-type]
        raises(UsageError, lambda: store.append("acct-1", [{"not": "an event"}]))  # type: ignore[list-item]
        raises(UsageError, lambda: store.read("acct-1", limit=0))
        raises(UsageError, lambda: store.read_all(limit=limits.read_events_max + 1))
        raises(UsageError, lambda: store.read("bad name"))
        raises(UsageError, lambda: store.delete("$all"))
        raises(UsageError, lambda: store.delete("acct-1", -7))
        unchanged()


def check_closed_store_refuses(target: EventStoreTarget) -> None:
    store = target.open(SimClock())
    store.append("acct-1", [new_event()])
    store.close()
    store.close()  # idempotent
    calls: list[Callable[[], object]] = [
        lambda: store.append("acct-1", [new_event()]),
        lambda: store.append_many([("acct-1", [new_event()], ANY)]),
        lambda: store.read("acct-1"),
        lambda: next(store.iter_stream("acct-1")),
        store.read_all,
        store.read_all_raw,
        lambda: store.state("acct-1"),
        store.streams,
        lambda: store.delete("acct-1"),
        store.safe_position,
        lambda: submit(store, [StreamWrite("acct-1", ANY, [new_event()])]),
        lambda: store.backend.read_stream("acct-1", 0, 10),
        lambda: store.backend.read_all(0, 10),
    ]
    for i, call in enumerate(calls):
        try:
            raises(Closed, call)
        except AssertionError as exc:
            raise AssertionError(f"call {i} on a closed store: {exc}") from exc


CHECKS: list[Check] = [
    check_expected_versions,
    check_multi_stream_append_is_atomic,
    check_idempotent_append,
    check_versions_and_positions_dense,
    check_concurrent_appends,
    check_read_stream,
    check_read_all_filters,
    check_event_fields_round_trip,
    check_soft_delete,
    check_hard_delete,
    check_list_streams,
    check_bad_input_is_refused,
    check_closed_store_refuses,
]
