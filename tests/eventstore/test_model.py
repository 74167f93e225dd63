"""Model-based test: the SQLite event store against the memory backend (the spec).

Hypothesis drives both through the same random calls (appends with every kind
of expected version, multi-stream appends, retries, deletes, snapshots,
projections, subject keys, reads, and closing and reopening the SQLite file);
each call must return the same value or raise the same error on both, and
after every step the whole visible state must be equal.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from unbundled.errors import Error
from unbundled.eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    EventStore,
    NewEvent,
    ProjectionTxn,
    Snapshot,
    StreamWrite,
)
from unbundled.testing import SimClock
from unbundled.testing.eventstore_contract import everything, submit

STREAMS = ["acct-1", "acct-2", "acct-3", "order-1", "order-2", "solo"]
TYPES = ["Opened", "Deposited", "Closed"]
COLLECTIONS = ["balances", "names"]
PROJECTIONS = ["p1", "p2"]
SUBJECTS = ["u1", "u2", "u3"]

streams = st.sampled_from(STREAMS)
# "current" means the version the model says the stream is at (right, unless deleted).
# (Mostly right ones: a wrong version writes nothing, and the store should fill up.)
expected_versions = st.one_of(
    st.sampled_from([ANY, "current", NO_STREAM, STREAM_EXISTS]),
    st.sampled_from([ANY, "current"]),
    st.integers(0, 6),
)
event_specs = st.lists(st.tuples(st.sampled_from(TYPES), st.integers(0, 3)), min_size=1, max_size=3)


class Failed(Exception):
    """Raised by a projection handler on purpose."""


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """What a call did: its value, or its error's type and details (or args)."""
    try:
        return "ok", call()
    except Error as exc:
        return type(exc).__name__, exc.details
    except Failed as exc:
        return "Failed", exc.args


class EventStoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="es-model-"))
        self.clock = SimClock()
        self.model = EventStore.open("memory://", clock=self.clock)
        self.real = self.open_real()
        self.calls: list[list[StreamWrite]] = []  # every append so far, for retries
        self.next_id = 0

    def open_real(self) -> EventStore:
        return EventStore.open(
            self.dir / "events.db", sync="off", clock=self.clock, maintenance_interval_s=None
        )

    def teardown(self) -> None:
        self.model.close()
        self.real.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def both(self, call: Callable[[EventStore], Any]) -> tuple[str, Any]:
        expected = outcome(lambda: call(self.model))
        actual = outcome(lambda: call(self.real))
        assert actual == expected, f"sqlite did {actual}, the model {expected}"
        return expected

    def new_events(self, specs: list[tuple[str, int]]) -> list[NewEvent]:
        events = []
        for kind, n in specs:
            self.next_id += 1
            event_id = str(uuid.UUID(int=self.next_id))
            events.append(NewEvent(event_id, kind, b'{"n":%d}' % n, b'{"user":{"n":%d}}' % n))
        return events

    def expected(self, stream: str, choice: int | str) -> int:
        return self.model.state(stream).version if choice == "current" else int(choice)

    # --- appends ------------------------------------------------------------

    @rule(
        appends=st.lists(st.tuples(streams, event_specs, expected_versions), min_size=1, max_size=6)
    )
    def append(self, appends: list[tuple[str, list[tuple[str, int]], int | str]]) -> None:
        """A few appends in a row (appends are most of what a store does)."""
        for stream, specs, choice in appends:
            events = self.new_events(specs)
            expected = self.expected(stream, choice)
            self.calls.append([StreamWrite(stream, expected, events)])
            self.both(lambda store: store.append(stream, events, expected))  # noqa: B023

    @rule(
        chosen=st.lists(
            st.tuples(streams, event_specs, expected_versions),
            min_size=2,
            max_size=3,
            unique_by=lambda t: t[0],
        ),
    )
    def append_many(self, chosen: list[tuple[str, list[tuple[str, int]], int | str]]) -> None:
        writes = [
            StreamWrite(stream, self.expected(stream, choice), self.new_events(specs))
            for stream, specs, choice in chosen
        ]
        self.calls.append(writes)
        self.both(
            lambda store: store.append_many(
                [(w.stream, w.events, w.expected_version) for w in writes]
            )
        )

    @precondition(lambda self: self.calls)
    @rule(index=st.integers(0, 1000), change=st.booleans())
    def retry(self, index: int, change: bool) -> None:
        """The same call again, or the same ids with other content."""
        writes = self.calls[index % len(self.calls)]
        if change:
            first = writes[0]
            changed = msgspec.structs.replace(first.events[0], data=b'{"other":true}')
            writes = [first._replace(events=[changed, *first.events[1:]]), *writes[1:]]
        self.both(lambda store: submit(store, writes))

    # Hard deletes are for good: rarer, or the streams would soon all be gone.
    @rule(stream=streams, choice=expected_versions, hard=st.sampled_from([False, False, True]))
    def delete(self, stream: str, choice: int | str, hard: bool) -> None:
        expected = self.expected(stream, choice)
        self.both(lambda store: store.delete(stream, expected, hard=hard))

    @rule(ms=st.integers(0, 5000))
    def advance_clock(self, ms: int) -> None:
        self.clock.advance(ms)

    @rule()
    def reopen(self) -> None:
        self.real.close()
        self.real = self.open_real()

    # --- snapshots, projections, subject keys -------------------------------

    @rule(stream=streams, version=st.integers(0, 8), n=st.integers(0, 3))
    def save_snapshot(self, stream: str, version: int, n: int) -> None:
        snapshot = Snapshot(stream, version, "State", 1 + n % 2, b"s%d" % n, self.clock())
        self.both(lambda store: store.backend.save_snapshot(snapshot))

    @rule(stream=streams, max_version=st.none() | st.integers(0, 9))
    def load_snapshot(self, stream: str, max_version: int | None) -> None:
        self.both(lambda store: store.backend.load_snapshot(stream, max_version))

    @rule(
        name=st.sampled_from(PROJECTIONS),
        stale=st.booleans(),
        step=st.integers(1, 5),
        ops=st.lists(
            st.tuples(
                st.sampled_from(COLLECTIONS),
                st.sampled_from("abc"),
                st.none() | st.binary(max_size=3),
            ),
            max_size=4,
        ),
        fail=st.booleans(),
    )
    def project(
        self,
        name: str,
        stale: bool,
        step: int,
        ops: list[tuple[str, str, bytes | None]],
        fail: bool,
    ) -> None:
        current = self.model.backend.checkpoints().get(name, 0)
        expected = current + 1 if stale else current

        def apply(txn: ProjectionTxn) -> None:
            for collection, key, value in ops:
                if value is None:
                    txn.delete(collection, key)
                else:
                    before = txn.get(collection, key) or b""
                    txn.put(collection, key, before[:2] + value)
            if fail:
                raise Failed(name)

        self.both(lambda store: store.backend.project(name, expected, current + step, apply))

    @rule(name=st.sampled_from(PROJECTIONS), collections=st.lists(st.sampled_from(COLLECTIONS)))
    def reset_projection(self, name: str, collections: list[str]) -> None:
        self.both(lambda store: store.backend.reset_projection(name, collections))

    @rule(subject=st.sampled_from(SUBJECTS), key=st.binary(min_size=1, max_size=4))
    def subject_key(self, subject: str, key: bytes) -> None:
        self.both(lambda store: store.backend.subject_key(subject, key))

    @rule(subject=st.sampled_from(SUBJECTS))
    def forget_subject(self, subject: str) -> None:
        self.both(lambda store: store.backend.forget_subject(subject))

    # --- reads --------------------------------------------------------------

    @rule(
        stream=streams,
        from_version=st.integers(0, 10),
        limit=st.integers(1, 5),
        backwards=st.booleans(),
    )
    def read_stream(self, stream: str, from_version: int, limit: int, backwards: bool) -> None:
        self.both(lambda store: store.read(stream, from_version, limit=limit, backwards=backwards))
        self.both(lambda store: store.backend.read_stream(stream, from_version, limit, backwards))

    @rule(
        after=st.integers(0, 30),
        limit=st.integers(1, 8),
        categories=st.none() | st.lists(st.sampled_from(["acct", "order", "solo", "x"])),
        types=st.none() | st.lists(st.sampled_from(TYPES)),
    )
    def read_all(
        self, after: int, limit: int, categories: list[str] | None, types: list[str] | None
    ) -> None:
        self.both(
            lambda store: store.read_all(after, limit=limit, categories=categories, types=types)
        )

    @rule(category=st.none() | st.sampled_from(["acct", "order", "solo"]), after=streams)
    def list_streams(self, category: str | None, after: str) -> None:
        self.both(lambda store: store.streams(category=category, after=after, limit=2))

    # --- after every step ---------------------------------------------------

    @invariant()
    def same_state(self) -> None:
        def dump(store: EventStore) -> object:
            backend = store.backend
            return (
                everything(store),
                store.safe_position(),
                [store.state(s) for s in STREAMS],
                [outcome(lambda s=s: store.read(s)) for s in STREAMS],  # type: ignore[misc]
                store.streams(),
                backend.checkpoints(),
                {c: backend.list_documents(c, "", 100) for c in COLLECTIONS},
                [backend.load_snapshot(s, v) for s in STREAMS for v in (None, 0, 3, 6)],
                backend.find_subject_keys(SUBJECTS),
            )

        self.both(dump)


# Each example costs a few ms: run several times the profile's count.
EventStoreMachine.TestCase.settings = settings(
    max_examples=settings().max_examples * 4, stateful_step_count=40
)
TestEventStoreModel = EventStoreMachine.TestCase
