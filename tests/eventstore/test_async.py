"""``AsyncEventStore`` on memory and SQLite: the sync facade's behaviour, and
appends that complete through the group-commit writer without a thread hop.

Each test is a plain function that runs its coroutine with ``asyncio.run``:
the suite does not depend on an asyncio pytest plugin.
"""

from __future__ import annotations

import asyncio
import doctest
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import unbundled.eventstore.aio
from unbundled import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AsyncEventStore,
    Closed,
    DuplicateEventId,
    Event,
    EventStore,
    Metadata,
    StreamDeleted,
    StreamNotFound,
    UsageError,
    WrongExpectedVersion,
)


class Opened(Event, frozen=True):
    owner: str


class Deposited(Event, frozen=True):
    amount: int


EVENTS: list[type[Event]] = [Opened, Deposited]
Scenario = Callable[[AsyncEventStore], Awaitable[None]]


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else str(tmp_path / "events.db")


def run(url: str, scenario: Scenario) -> None:
    async def main() -> None:
        async with await AsyncEventStore.open(url, sync="off", events=EVENTS) as store:
            await scenario(store)

    asyncio.run(main())


def test_append_and_read_round_trip(url: str) -> None:
    async def scenario(store: AsyncEventStore) -> None:
        first = await store.append(
            "account-1",
            [Opened(owner="ada"), Deposited(amount=5)],
            NO_STREAM,
            metadata=Metadata(correlation_id="c-1", user={"by": "test"}),
        )
        assert (first.stream, first.first_version, first.last_version) == ("account-1", 0, 1)
        second = await store.append("account-1", [Deposited(amount=7)], expected_version=1)
        assert second.first_version == 2
        assert second.positions[0] > first.positions[-1]

        events = await store.read("account-1")
        assert [e.event for e in events] == [
            Opened(owner="ada"),
            Deposited(amount=5),
            Deposited(amount=7),
        ]
        assert [e.version for e in events] == [0, 1, 2]
        assert [e.position for e in events] == [*first.positions, *second.positions]
        assert events[0].metadata == Metadata(correlation_id="c-1", user={"by": "test"})
        assert events[0].type == "Opened" and events[0].schema_version == 1

        backwards = await store.read("account-1", backwards=True, limit=2)
        assert [e.version for e in backwards] == [2, 1]
        assert [e.version for e in await store.read("account-1", 1, limit=1)] == [1]
        state = await store.state("account-1")
        assert (state.version, state.deleted, state.tombstoned) == (2, False, False)
        assert (await store.state("account-2")).version == NO_STREAM
        assert await store.safe_position() == second.positions[-1]

    run(url, scenario)


def test_expected_versions_and_conflict_details(url: str) -> None:
    async def scenario(store: AsyncEventStore) -> None:
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append("account-1", [Deposited(amount=1)], STREAM_EXISTS)
        assert info.value.details == {
            "stream": "account-1",
            "expected": STREAM_EXISTS,
            "actual": NO_STREAM,
        }
        await store.append("account-1", [Opened(owner="ada")], NO_STREAM)
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append("account-1", [Deposited(amount=1)], 5)
        assert info.value.details == {"stream": "account-1", "expected": 5, "actual": 0}
        await store.append("account-1", [Deposited(amount=1)], ANY)
        await store.append("account-1", [Deposited(amount=1)], STREAM_EXISTS)
        assert (await store.state("account-1")).version == 2
        # Bad arguments fail before anything is submitted.
        with pytest.raises(UsageError):
            await store.append("$reserved", [Deposited(amount=1)])
        with pytest.raises(UsageError):
            await store.append("account-1", Deposited(amount=1))  # type: ignore[arg-type]
        with pytest.raises(UsageError):
            await store.read("account-1", limit=0)

    run(url, scenario)


def test_append_many_is_all_or_nothing(url: str) -> None:
    async def scenario(store: AsyncEventStore) -> None:
        await store.append("account-1", [Opened(owner="ada")], NO_STREAM)
        with pytest.raises(WrongExpectedVersion):
            await store.append_many(
                [
                    ("account-2", [Opened(owner="bob")], NO_STREAM),
                    ("account-1", [Deposited(amount=1)], NO_STREAM),  # exists: conflict
                ]
            )
        with pytest.raises(StreamNotFound):
            await store.read("account-2")
        results = await store.append_many(
            [
                ("account-2", [Opened(owner="bob")], NO_STREAM),
                ("account-1", [Deposited(amount=1)], 0),
            ]
        )
        assert [(r.stream, r.first_version) for r in results] == [
            ("account-2", 0),
            ("account-1", 1),
        ]
        assert await store.streams() == ["account-1", "account-2"]

    run(url, scenario)


def test_retry_with_same_ids_is_idempotent(url: str) -> None:
    async def scenario(store: AsyncEventStore) -> None:
        ids = [uuid.uuid4(), uuid.uuid4()]
        events = [Opened(owner="ada"), Deposited(amount=3)]
        original = await store.append("account-1", events, NO_STREAM, ids=ids)
        again = await store.append("account-1", events, NO_STREAM, ids=ids)
        assert again == original
        assert len(await store.read("account-1")) == 2
        with pytest.raises(DuplicateEventId):
            await store.append("account-1", [Deposited(amount=4)], ids=[ids[1]])

    run(url, scenario)


def test_read_all_filters_and_pages(url: str) -> None:
    async def scenario(store: AsyncEventStore) -> None:
        for n in range(3):
            await store.append(f"account-{n}", [Opened(owner=str(n)), Deposited(amount=n)])
            await store.append(f"audit-{n}", [Deposited(amount=10 + n)])
        everything = await store.read_all()
        assert [e.position for e in everything] == list(range(1, 10))
        page = await store.read_all(3, limit=2)
        assert [e.position for e in page] == [4, 5]
        audits = await store.read_all(categories=["audit"])
        assert [e.stream for e in audits] == ["audit-0", "audit-1", "audit-2"]
        opened = await store.read_all(types=[Opened])
        assert [e.event for e in opened] == [Opened(owner=str(n)) for n in range(3)]
        assert [e.type for e in await store.read_all(types=["Deposited"], limit=1)] == ["Deposited"]
        raw = await store.read_all_raw(0, limit=1)
        assert raw[0].data == b'{"owner":"0"}'
        assert await store.streams(category="audit") == ["audit-0", "audit-1", "audit-2"]
        assert await store.streams(after="account-2", limit=1) == ["audit-0"]

    run(url, scenario)


def test_iter_stream_pages_through_a_long_stream(url: str) -> None:
    async def scenario(store: AsyncEventStore) -> None:
        await store.append("account-1", [Deposited(amount=n) for n in range(2_100)], NO_STREAM)
        amounts = [e.event.amount async for e in store.iter_stream("account-1")]
        assert amounts == list(range(2_100))
        tail = [e.version async for e in store.iter_stream("account-1", 2_050)]
        assert tail == list(range(2_050, 2_100))

    run(url, scenario)


def test_soft_and_hard_delete(url: str) -> None:
    async def scenario(store: AsyncEventStore) -> None:
        await store.append("account-1", [Opened(owner="ada")], NO_STREAM)
        await store.append("account-2", [Opened(owner="bob")], NO_STREAM)
        await store.delete("account-1")
        with pytest.raises(StreamNotFound):
            await store.read("account-1")
        assert (await store.state("account-1")).deleted
        # A soft-deleted stream continues its versions on the next append.
        result = await store.append("account-1", [Deposited(amount=1)])
        assert result.first_version == 1
        assert [e.version for e in await store.read("account-1")] == [1]

        await store.delete("account-2", 0, hard=True)
        with pytest.raises(StreamDeleted):
            await store.read("account-2")
        with pytest.raises(StreamDeleted):
            await store.append("account-2", [Deposited(amount=1)])
        # The history stays in $all either way.
        assert len(await store.read_all()) == 3

    run(url, scenario)


def test_closed_store_refuses_calls(url: str) -> None:
    async def main() -> None:
        store = await AsyncEventStore.open(url, sync="off")
        await store.append("account-1", [Opened(owner="ada")])
        await store.close()
        await store.close()  # idempotent
        with pytest.raises(Closed):
            await store.append("account-1", [Opened(owner="ada")])
        with pytest.raises(Closed):
            await store.read("account-1")
        with pytest.raises(Closed):
            await store.safe_position()

    asyncio.run(main())


def test_concurrent_appends_never_use_a_thread(url: str) -> None:
    """64 tasks append at once: every append lands once, in its own stream
    order, and the event loop's default executor (where ``to_thread`` runs)
    was never created: appends are completed by the writer, not a thread."""

    async def main() -> None:
        store = await AsyncEventStore.open(url, sync="off", events=EVENTS)
        try:
            loop = asyncio.get_running_loop()
            executor_before = loop._default_executor  # type: ignore[attr-defined]

            async def writer(n: int) -> list[int]:
                positions: list[int] = []
                for i in range(20):
                    result = await store.append(f"account-{n}", [Deposited(amount=i)], i - 1)
                    positions += result.positions
                return positions

            # The open above used a worker thread; appends must add none.
            loop._default_executor = None  # type: ignore[attr-defined]
            results = await asyncio.gather(*(writer(n) for n in range(64)))
            assert loop._default_executor is None  # type: ignore[attr-defined]
            loop._default_executor = executor_before  # type: ignore[attr-defined]

            positions = sorted(p for r in results for p in r)
            assert positions == list(range(1, 64 * 20 + 1))
            events = await store.read("account-7")
            assert [e.event.amount for e in events] == list(range(20))
        finally:
            await store.close()

    asyncio.run(main())


def test_two_event_loops_share_one_store(tmp_path: Path) -> None:
    """Appends from two loops in two threads are committed together and each
    loop gets its own results."""
    store = asyncio.run(AsyncEventStore.open(tmp_path / "shared.db", sync="off"))
    got: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    async def writer(loop_id: int) -> None:
        async def one(n: int) -> int:
            result = await store.append(f"loop{loop_id}-{n}", [Deposited(amount=n)], NO_STREAM)
            return result.positions[0]

        got[loop_id] = list(await asyncio.gather(*(one(n) for n in range(50))))

    def thread_main(loop_id: int) -> None:
        try:
            asyncio.run(writer(loop_id))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sorted(got[0] + got[1]) == list(range(1, 101))
    asyncio.run(store.close())


def test_cancelled_append_does_not_disturb_others(tmp_path: Path) -> None:
    async def main() -> None:
        async with await AsyncEventStore.open(tmp_path / "c.db", sync="full") as store:
            tasks = [
                asyncio.create_task(store.append(f"s-{n}", [Deposited(amount=n)], NO_STREAM))
                for n in range(20)
            ]
            tasks[3].cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            assert isinstance(done[3], asyncio.CancelledError)
            assert all(not isinstance(d, BaseException) for i, d in enumerate(done) if i != 3)
            # The cancelled append may or may not have committed (like a lost
            # reply); a retry is what tells, and the others are all there.
            names = await store.streams()
            assert {f"s-{n}" for n in range(20) if n != 3} <= set(names)

    asyncio.run(main())


def test_sync_and_async_stores_share_a_file(tmp_path: Path) -> None:
    path = tmp_path / "both.db"
    with EventStore.open(path, sync="off", events=EVENTS) as sync_store:
        sync_store.append("account-1", [Opened(owner="ada")], NO_STREAM)

        async def main() -> list[object]:
            async with await AsyncEventStore.open(path, sync="off", events=EVENTS) as store:
                await store.append("account-1", [Deposited(amount=2)], 0)
                return [e.event for e in await store.read("account-1")]

        assert asyncio.run(main()) == [Opened(owner="ada"), Deposited(amount=2)]
        assert [e.version for e in sync_store.read("account-1")] == [0, 1]


def test_subscribe_catches_up_then_follows(url: str) -> None:
    async def scenario(store: AsyncEventStore) -> None:
        await store.append("account-1", [Opened(owner="ada")], NO_STREAM)
        await store.append("audit-1", [Deposited(amount=1)], NO_STREAM)
        async with store.subscribe(categories=["account"]) as sub:
            first = await sub.poll(1.0)
            assert [(e.stream, e.event) for e in first] == [("account-1", Opened(owner="ada"))]
            await store.append("account-1", [Deposited(amount=2)], 0)
            got = []
            for _ in range(50):  # bounded: a missed wake-up fails, never hangs
                got += await sub.poll(0.2)
                if got:
                    break
            assert [(e.version, e.event) for e in got] == [(1, Deposited(amount=2))]
            assert sub.position == got[-1].position == 3

    run(url, scenario)


class Registered(Event, frozen=True):
    personal_data = ("email",)
    data_subject = "customer_id"
    customer_id: str
    email: str | None


def test_personal_data_is_sealed_and_forgotten(url: str) -> None:
    """Sealing fetches the subject's key from the backend (in a worker
    thread); forgetting the subject leaves the event with ``None`` there."""

    async def scenario(store: AsyncEventStore) -> None:
        store.serializer.register(Registered)
        await store.append("customer-1", [Registered(customer_id="c-1", email="ada@x")])
        await store.append_many(
            [("customer-2", [Registered(customer_id="c-2", email="bob@x")], NO_STREAM)]
        )
        raw = await store.read_all_raw()
        assert all(b"@x" not in r.data for r in raw)  # encrypted at rest
        assert [e.event.email for e in await store.read_all()] == ["ada@x", "bob@x"]
        await store.forget("c-1")
        events = await store.read_all()
        assert [e.event for e in events] == [
            Registered(customer_id="c-1", email=None),
            Registered(customer_id="c-2", email="bob@x"),
        ]

    run(url, scenario)


def test_docstring_example() -> None:
    result = doctest.testmod(unbundled.eventstore.aio)
    assert result.attempted > 0
    assert result.failed == 0
