"""Subscriptions: catch-up then live, filtered, each event once, in order;
iterator, callback and asyncio forms; stopping."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from unbundled import UsageError
from unbundled.eventstore import (
    AsyncEventStore,
    AsyncSubscription,
    EventStore,
    StoredEvent,
    Subscription,
)
from unbundled.eventstore.subscriptions import SubscriptionWorker

from ._helpers import Deposited, Opened, Withdrawn, append_in_thread

DEADLINE_S = 30.0  # generous: only a hang reaches it


def collect(subscription: Subscription, count: int) -> list[StoredEvent]:
    """Iterate until ``count`` events arrived (a hang fails the test, not the suite)."""
    timer = threading.Timer(DEADLINE_S, subscription.stop)
    timer.start()
    try:
        out: list[StoredEvent] = []
        for event in subscription:
            out.append(event)
            if len(out) == count:
                break
        return out
    finally:
        timer.cancel()


def writer_stream(writer: int) -> Callable[[int], str]:
    return lambda i: f"w{writer}-{i % 3}"


def test_catch_up_then_live_without_gaps_or_repeats(store: EventStore) -> None:
    for i in range(40):
        store.append(f"account-{i % 4}", [Deposited(amount=i)])
    writers = [append_in_thread(store, 60, writer_stream(w), start=1000 * w) for w in range(3)]
    with store.subscribe() as subscription:
        events = collect(subscription, 40 + 180)
        for writer in writers:
            writer.join()
        assert subscription.position == events[-1].position
    assert [e.position for e in events] == list(range(1, 221))  # every one, once, in order
    assert [e.id for e in events] == [e.id for e in store.read_all(0, limit=1000)]
    # Each writer's own events arrive in the order it appended them.
    for w in range(3):
        amounts = [e.event.amount for e in events if e.stream.startswith(f"w{w}-")]
        assert amounts == list(range(1000 * w, 1000 * w + 60))


def test_starts_after_any_position_and_resumes_from_its_checkpoint(store: EventStore) -> None:
    for i in range(30):
        store.append("account-1", [Deposited(amount=i)])
    first = store.subscribe(after_position=7, batch_size=4)
    head = collect(first, 10)
    assert [e.position for e in head] == list(range(8, 18))
    checkpoint = first.position
    first.stop()
    assert checkpoint == 17
    rest = collect(store.subscribe(after_position=checkpoint), 13)
    assert [e.position for e in rest] == list(range(18, 31))


def test_filters_by_category_and_type(store: EventStore) -> None:
    for i in range(60):
        stream = ("account", "order", "user")[i % 3] + f"-{i % 5}"
        event = (Opened(owner="x"), Deposited(amount=i), Withdrawn(amount=i))[i % 4 % 3]
        store.append(stream, [event])
    everything = store.read_all(0, limit=1000)

    by_category = store.subscribe(categories=["account", "user"], batch_size=7)
    wanted = [e for e in everything if e.stream.split("-")[0] in ("account", "user")]
    assert [e.id for e in collect(by_category, len(wanted))] == [e.id for e in wanted]

    by_type = store.subscribe(types=[Deposited, "Withdrawn"])
    wanted = [e for e in everything if e.type in ("Deposited", "Withdrawn")]
    assert [e.id for e in collect(by_type, len(wanted))] == [e.id for e in wanted]

    both = store.subscribe(categories=["order"], types=[Opened])
    wanted = [e for e in everything if e.stream.startswith("order-") and e.type == "Opened"]
    assert [e.id for e in collect(both, len(wanted))] == [e.id for e in wanted]

    # Live: only wanted events arrive, and unwanted ones move the checkpoint on.
    store.append("user-9", [Opened(owner="later")])
    store.append("order-9", [Opened(owner="later")])
    (late,) = collect(both, 1)
    assert late.stream == "order-9" and late.position == store.safe_position()
    store.append("user-9", [Deposited(amount=1)])
    assert both.poll(0.05) == []
    assert both.position == store.safe_position()  # a checkpoint past unwanted events
    for subscription in (by_category, by_type, both):
        subscription.stop()


def test_a_checkpoint_of_a_filtered_subscription_never_skips(store: EventStore) -> None:
    """Resuming a filtered subscription from its position, with wanted and
    unwanted events interleaved, yields each wanted event once."""
    seen: list[int] = []
    position = 0
    for round_ in range(16):
        if round_ < 12:
            for i in range(5):
                store.append(("account-1", "order-1")[(round_ + i) % 2], [Deposited(amount=i)])
        subscription = store.subscribe(position, categories=["account"], batch_size=2)
        for _ in range(round_ % 3):  # stop after 0, 1 or 2 batches: often mid-way
            seen.extend(e.position for e in subscription.poll(0.0))
        position = subscription.position
        subscription.stop()
    rest = store.subscribe(position, categories=["account"])
    seen.extend(e.position for e in rest.poll(0.0))
    wanted = [e.position for e in store.read_all(0, limit=1000, categories=["account"])]
    assert seen == wanted


def test_stop_ends_a_blocked_iteration(store: EventStore) -> None:
    store.append("account-1", [Deposited(amount=1)])
    subscription = store.subscribe()
    seen: list[StoredEvent] = []
    reader = threading.Thread(target=lambda: seen.extend(subscription), daemon=True)
    reader.start()
    while not seen and reader.is_alive():
        time.sleep(0.005)
    subscription.stop()  # the reader is now blocked waiting for live events
    reader.join(DEADLINE_S)
    assert not reader.is_alive()
    assert [e.position for e in seen] == [1]
    assert list(subscription) == []  # a stopped subscription stays stopped
    assert subscription.poll(1.0) == []


def test_callback_mode_runs_on_a_thread_and_stops(store: EventStore) -> None:
    for i in range(25):
        store.append(f"account-{i % 2}", [Deposited(amount=i)])
    handled: list[int] = []
    enough = threading.Event()

    def handler(event: StoredEvent) -> None:
        assert threading.current_thread() is not threading.main_thread()
        handled.append(event.position)
        if len(handled) == 75:
            enough.set()

    worker = store.subscribe(handler=handler, batch_size=10)
    assert isinstance(worker, SubscriptionWorker) and worker.running
    append_in_thread(store, 50, lambda i: f"account-{i % 2}").join()
    assert enough.wait(DEADLINE_S)
    worker.stop()
    assert not worker.running
    assert handled == list(range(1, 76))
    assert worker.position == 75


def test_callback_error_stops_the_worker_and_is_raised(store: EventStore) -> None:
    for i in range(10):
        store.append("account-1", [Deposited(amount=i)])

    def handler(event: StoredEvent) -> None:
        if event.position == 6:
            raise ValueError("bad event")

    worker = store.subscribe(handler=handler)
    with pytest.raises(ValueError, match="bad event"):
        worker.join(DEADLINE_S)
    assert not worker.running
    assert worker.position == 5  # a restart from here retries the failed event
    with pytest.raises(ValueError):
        worker.stop()


def test_async_subscription_catches_up_then_follows(store: EventStore) -> None:
    for i in range(20):
        store.append("account-1", [Deposited(amount=i)])

    async def main() -> list[StoredEvent]:
        out: list[StoredEvent] = []
        async with AsyncSubscription(store, categories=["account"], batch_size=8) as sub:
            writer = asyncio.create_task(
                asyncio.to_thread(append_in_thread(store, 40, lambda i: "account-2").join)
            )
            async for event in sub:
                out.append(event)
                if len(out) == 60:
                    break
            await writer
            assert sub.position == out[-1].position
        return out

    events = asyncio.run(asyncio.wait_for(main(), DEADLINE_S))
    assert [e.position for e in events] == list(range(1, 61))


def test_async_poll_cancelled_while_waiting_loses_nothing(store: EventStore) -> None:
    async def main() -> list[int]:
        sub = AsyncSubscription(store)
        got: list[int] = []
        try:
            waiting = asyncio.create_task(sub.poll(10.0))
            await asyncio.sleep(0.05)  # let it block on the backend
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            # The cancelled poll's fetch is still waiting on the worker thread:
            # these events must come out of the next poll, not vanish with it.
            await asyncio.to_thread(store.append, "account-1", [Deposited(amount=1)])
            await asyncio.to_thread(store.append, "account-1", [Deposited(amount=2)])
            while len(got) < 2:
                got.extend(e.position for e in await sub.poll(DEADLINE_S))
        finally:
            await sub.close()
        return got

    assert asyncio.run(main()) == [1, 2]


def test_async_stop_ends_iteration(store: EventStore) -> None:
    async def main() -> int:
        sub = AsyncSubscription(store)
        count = 0

        async def consume() -> None:
            nonlocal count
            async for _ in sub:
                count += 1

        task = asyncio.create_task(consume())
        await asyncio.to_thread(store.append, "account-1", [Deposited(amount=1)])
        while count < 1:
            await asyncio.sleep(0.005)
        sub.stop()
        await asyncio.wait_for(task, DEADLINE_S)
        await sub.close()
        return count

    assert asyncio.run(main()) == 1


def test_bad_arguments(store: EventStore) -> None:
    with pytest.raises(UsageError):
        store.subscribe(after_position=-1)
    with pytest.raises(UsageError):
        store.subscribe(batch_size=0)
    with pytest.raises(UsageError):
        store.subscribe(categories="account")


def test_subscription_on_a_closed_store_fails(tmp_path: object) -> None:
    store = EventStore.open("memory://")
    subscription = store.subscribe()
    store.close()
    with pytest.raises(UsageError):
        subscription.poll(0.0)
    with pytest.raises(UsageError):
        store.subscribe()


class CountingBackend:
    """The real backend, counting reads of ``$all``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reads = 0

    def read_all(self, *args: Any) -> Any:
        self.reads += 1
        return self.inner.read_all(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_an_idle_subscription_waits_instead_of_polling(store: EventStore) -> None:
    store.append("account-1", [Deposited(amount=1)])
    counting = CountingBackend(store.backend)
    facade = EventStore(counting, events=[Deposited])
    subscription = facade.subscribe()
    assert len(subscription.poll(0.0)) == 1
    reads = counting.reads
    assert subscription.poll(0.3) == []  # several wait slices, no commit meanwhile
    assert counting.reads == reads + 1  # one read, then it slept until the timeout
    store.append("account-1", [Deposited(amount=2)])
    assert [e.event for e in subscription.poll(DEADLINE_S)] == [Deposited(amount=2)]


def test_stopping_mid_batch_keeps_the_checkpoint_at_the_last_delivered(
    store: EventStore,
) -> None:
    for i in range(10):
        store.append("account-1", [Deposited(amount=i)])
    subscription = store.subscribe(batch_size=100)
    delivered = []
    for event in subscription:
        delivered.append(event.position)
        if event.position == 4:
            subscription.stop()  # six more are buffered: they must not count as seen
    assert delivered == [1, 2, 3, 4]
    assert subscription.position == 4
    rest = store.subscribe(after_position=subscription.position)
    assert [e.position for e in rest.poll(0.0)] == list(range(5, 11))


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_async_subscription_over_an_async_event_store(backend: str, tmp_path: Path) -> None:
    url = "memory://" if backend == "memory" else str(tmp_path / "events.db")

    async def main() -> list[int]:
        async with await AsyncEventStore.open(url, sync="normal", events=[Deposited]) as store:
            await store.append("account-1", [Deposited(amount=1)])
            got: list[int] = []
            async with AsyncSubscription(store) as sub:

                async def write() -> None:
                    for i in range(2, 6):
                        await store.append("account-1", [Deposited(amount=i)])

                writer = asyncio.create_task(write())
                async for event in sub:
                    got.append(event.event.amount)
                    if len(got) == 5:
                        break
                await writer
            return got

    assert asyncio.run(asyncio.wait_for(main(), DEADLINE_S)) == [1, 2, 3, 4, 5]
