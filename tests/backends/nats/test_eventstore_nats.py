"""The event store on NATS JetStream, beyond the contract
(tests/eventstore/test_contract.py runs that on nats too): what the
guarantees page states about the duplicate window, writers in two
connections racing for one expected version, a damaged message, and the
model-based test of tests/eventstore/test_model.py with NATS as the real store.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule
from nats.js.api import StreamConfig

from tests.backends.nats._nats import admin, bucket_url, delete_bucket, fresh_bucket, server
from tests.eventstore.projections._helpers import EVENTS, Deposited, append_in_thread
from tests.eventstore.projections.test_subscriptions import collect
from tests.eventstore.test_model import EventStoreMachine, event_specs, expected_versions, streams
from unbundled.backends.nats._events_meta import CRC_HEADER, Entry, stream_subject
from unbundled.errors import (
    CorruptionError,
    LimitExceeded,
    NotSupported,
    UsageError,
    WrongExpectedVersion,
)
from unbundled.eventstore import ANY, NO_STREAM, EventStore
from unbundled.testing.eventstore_contract import everything, new_event

pytestmark = pytest.mark.nats


@pytest.fixture
def url() -> Iterator[str]:
    bucket = fresh_bucket("test_es")
    server()  # skip (or fail with CI=true) without the server
    try:
        yield bucket_url(bucket)
    finally:
        delete_bucket(bucket)


def test_beyond_the_duplicate_window_only_an_expected_version_finds_a_retry(url: str) -> None:
    """As the guarantees page says: within the window (0.3 s here) a retry
    is answered by the message id; beyond it, a retry with an exact expected
    version is found by reading the stream back, one with ANY appends again."""
    with EventStore.open(url, dedupe_window_s=0.3) as store:
        exact, loose = [new_event()], [new_event()]
        first = store.append("acct-1", exact, NO_STREAM)
        assert store.append("acct-1", exact, NO_STREAM) == first, "within the window"
        second = store.append("acct-1", loose, ANY)
        assert store.append("acct-1", loose, ANY) == second, "within the window"
        time.sleep(0.6)
        assert store.append("acct-1", exact, NO_STREAM) == first, "read back"
        again = store.append("acct-1", loose, ANY)
        assert again.first_version == 2, "ANY beyond the window: stored again"
        assert [e.id for e in store.read("acct-1")] == [
            exact[0].id,
            loose[0].id,
            loose[0].id,
        ]


def test_two_connections_racing_for_one_expected_version_one_wins(url: str) -> None:
    """Two backends (two connections, so no lock of ours between them) append
    at once: to one stream with the same expected version, exactly one wins
    each round; to their own streams with ANY, both land, and positions stay
    dense in commit order."""
    rounds = 15
    stores = [EventStore.open(url), EventStore.open(url)]
    try:
        stores[0].append("shared", [new_event()], NO_STREAM)
        barrier = threading.Barrier(2)
        wins: list[list[bool]] = [[], []]

        def race(n: int) -> None:
            store = stores[n]
            for _ in range(rounds):
                version = store.state("shared").version
                barrier.wait()
                try:
                    store.append("shared", [new_event()], version)
                    wins[n].append(True)
                except WrongExpectedVersion:
                    wins[n].append(False)
                store.append(f"own-{n}", [new_event()], ANY)
                barrier.wait()  # both have read the winner's version next round

        threads = [threading.Thread(target=race, args=(n,)) for n in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [a + b for a, b in zip(*wins, strict=True)] == [1] * rounds
        stored = everything(stores[1])
        assert [e.position for e in stored] == list(range(1, 2 + 3 * rounds))
        assert [e.version for e in stores[0].read("shared")] == list(range(rounds + 1))
    finally:
        for store in stores:
            store.close()


def test_a_damaged_message_is_a_corruption_error_never_garbage(url: str) -> None:
    bucket = url.rsplit("bucket=", 1)[1]
    with EventStore.open(url) as store:
        store.append("acct-1", [new_event()])
        entry = Entry(0, "acct-1", 1, 0, 2, 1, 0, 0, [(str(uuid.uuid4()), "T", 1, b"{}", b"{}")])
        body = msgspec.msgpack.encode(entry)

        async def damage(js: Any) -> None:  # another client writes a bad checksum
            await js.publish(stream_subject(bucket, "acct-1"), body, headers={CRC_HEADER: "7"})

        admin(damage)
        for call in (
            lambda: store.read("acct-1"),
            lambda: store.state("acct-1"),
            store.read_all,
            store.safe_position,
            lambda: store.append("acct-1", [new_event()], ANY),
        ):
            with pytest.raises(CorruptionError, match="fails its checksum"):
                call()


def test_a_missing_message_is_a_corruption_error_never_skipped(url: str) -> None:
    """A message deleted by hand (``nats stream rmm``) is lost events: a read
    of its stream or of ``$all`` across it says so instead of skipping it."""
    bucket = url.rsplit("bucket=", 1)[1]
    with EventStore.open(url) as store:
        for _ in range(3):
            store.append("acct-1", [new_event()])

        async def delete(js: Any) -> None:
            await js.delete_msg(f"UBES_{bucket}", 2)

        admin(delete)
        with pytest.raises(CorruptionError, match="missing"):
            store.read("acct-1")
        with pytest.raises(CorruptionError, match="missing"):
            store.read_all()


def test_an_append_larger_than_a_message_is_refused_whole(url: str) -> None:
    """N3: an append is one message, so it must fit the server's max_payload
    (1 MB by default), though an event may have 16 MB elsewhere."""
    with EventStore.open(url) as store:
        big = new_event(data=b'{"x":"' + b"x" * 1_100_000 + b'"}')
        with pytest.raises(LimitExceeded, match="max_payload"):
            store.append("acct-1", [new_event(), big])
        assert store.safe_position() == 0


def test_an_events_stream_that_drops_messages_is_refused(url: str) -> None:
    bucket = url.rsplit("bucket=", 1)[1]

    async def create(js: Any) -> None:
        config = StreamConfig(name=f"UBES_{bucket}", subjects=[f"ubes.{bucket}.>"], max_age=60)
        await js.add_stream(config)

    admin(create)
    with EventStore.open(url) as store, pytest.raises(UsageError, match="max_age=60"):
        store.append("acct-1", [new_event()])


def test_a_subscription_catches_up_then_follows_two_connections(url: str) -> None:
    """Guarantee 6 on NATS: every event once, in position order, while
    writers in this connection and another append (N4, N10)."""
    with EventStore.open(url, events=EVENTS) as store, EventStore.open(url, events=EVENTS) as other:
        for i in range(10):
            store.append(f"account-{i % 2}", [Deposited(amount=i)])
        writers = [
            append_in_thread(store, 30, lambda i: f"mine-{i % 3}", start=100),
            append_in_thread(other, 30, lambda i: f"theirs-{i % 3}", start=200),
        ]
        with store.subscribe() as subscription:
            events = collect(subscription, 70)
            for writer in writers:
                writer.join()
    assert [e.position for e in events] == list(range(1, 71))
    for prefix, start in (("mine-", 100), ("theirs-", 200)):
        amounts = [e.event.amount for e in events if e.stream.startswith(prefix)]
        assert amounts == list(range(start, start + 30)), prefix


# --- the model-based test, on NATS ----------------------------------------------------


class NatsEventStoreMachine(EventStoreMachine):
    """The real store on a bucket of its own. What NATS refuses (appends to
    several streams, projections) must be refused with ``NotSupported`` and
    change nothing; it is not run on the model."""

    def open_real(self) -> EventStore:
        if not hasattr(self, "bucket"):
            self.bucket = fresh_bucket("test_es_model")
        return EventStore.open(bucket_url(self.bucket), clock=self.clock)

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            delete_bucket(self.bucket)

    def refused(self, call: Any) -> None:
        head = self.real.safe_position()
        with pytest.raises(NotSupported):
            call(self.real)
        assert self.real.safe_position() == head

    @rule(
        chosen=st.lists(
            st.tuples(streams, event_specs, expected_versions),
            min_size=2,
            max_size=3,
            unique_by=lambda t: t[0],
        ),
    )
    def append_many(self, chosen: list[tuple[str, list[tuple[str, int]], int | str]]) -> None:
        writes = [(s, self.new_events(specs), self.expected(s, c)) for s, specs, c in chosen]
        self.refused(lambda store: store.append_many(writes))

    @rule()
    def project(self) -> None:
        self.refused(lambda store: store.backend.project("p1", 0, 1, lambda txn: None))

    @rule()
    def reset_projection(self) -> None:
        self.refused(lambda store: store.backend.reset_projection("p1", ["balances"]))


# Every step is several network round trips, and shrinking one costs
# thousands: few, short runs, a failure reported as found.
TestNatsEventStoreModel = NatsEventStoreMachine.TestCase
TestNatsEventStoreModel.settings = settings(
    max_examples=8,
    stateful_step_count=25,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)


def test_pipelined_appends_of_two_connections_keep_versions_and_positions_dense(url: str) -> None:
    """Each connection sends its next append before the last one's answer
    (conditional on it having landed, by its message id); two connections
    whose tasks race for the same streams make some of those fail. Whatever
    fails is decided again: every event lands once, versions and positions
    stay dense, exact expected versions are honoured, and each stream's
    order is the order of ``$all``."""
    from unbundled.eventstore.aio import AsyncEventStore

    tasks, appends, shared = 16, 12, 4

    async def connection(n: int, results: list[Any]) -> None:
        async with await AsyncEventStore.open(url) as store:

            async def work(t: int) -> None:
                version = NO_STREAM
                for i in range(appends):
                    events = [new_event() for _ in range(1 + (t + i) % 3)]
                    if t % 2:  # an exact version of a stream of its own
                        result = await store.append(f"own-{n}-{t}", events, version)
                        version = result.last_version
                    else:  # racing the other connection's tasks
                        result = await store.append(f"shared-{(t + i) % shared}", events, ANY)
                    results.append((result, [e.id for e in events]))

            await asyncio.gather(*(work(t) for t in range(tasks)))

    results: list[Any] = []

    async def both() -> None:
        await asyncio.gather(connection(0, results), connection(1, results))

    asyncio.run(both())
    with EventStore.open(url) as store:
        stored = everything(store)
        assert [e.position for e in stored] == list(range(1, len(stored) + 1))
        ids = [e.id for e in stored]
        assert sorted(ids) == sorted(i for _, batch in results for i in batch), "each once"
        by_id = {e.id: e for e in stored}
        for result, batch in results:
            assert [by_id[i].position for i in batch] == list(result.positions)
            assert [by_id[i].version for i in batch][-1] == result.last_version
        for name in {e.stream for e in stored}:
            versions = [e.version for e in stored if e.stream == name]
            assert versions == list(range(len(versions))), name
