"""The asyncio API (``AsyncLog`` and friends) on both backends.

Each test is a plain function that runs its coroutine with ``asyncio.run``:
the suite does not depend on an asyncio pytest plugin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import matrix
from unbundled import (
    AsyncConsumer,
    AsyncLog,
    Closed,
    InstanceFenced,
    Message,
    NotSupported,
    OutOfOrderSequence,
    PartitionNotFound,
    ProducerFenced,
    Record,
    StaleGeneration,
    TopicExists,
    TopicNotFound,
    TopicPartition,
)
from unbundled.testing import SimClock

Scenario = Callable[[AsyncLog, SimClock], Awaitable[None]]


@pytest.fixture(params=matrix.params(matrix.LOG))
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with matrix.isolated(request.param, tmp_path, "async") as opened:
        yield opened


def run(url: str, scenario: Scenario) -> None:
    async def main() -> None:
        clock = SimClock()
        options: dict[str, Any] = {"clock": clock}
        if "://" not in url:  # SQLite: no maintenance in the background
            options["maintenance_interval_s"] = None
        log = await AsyncLog.open(url, sync="off", **options)
        async with log:
            await scenario(log, clock)

    asyncio.run(main())


async def poll_until(consumer: AsyncConsumer, count: int, rounds: int = 100) -> list[Record]:
    got: list[Record] = []
    for _ in range(rounds):
        got += await consumer.poll(0.02)
        if len(got) >= count:
            return got
    raise AssertionError(f"expected {count} records, got {len(got)}")


def test_topics_appends_and_reads(url: str) -> None:
    async def scenario(log: AsyncLog, clock: SimClock) -> None:
        config = await log.create_topic("t", 3)
        assert await log.create_topic("t", 3, exist_ok=True) == config
        with pytest.raises(TopicExists):
            await log.create_topic("t", 2, exist_ok=True)
        assert await log.topics() == ["t"]
        with pytest.raises(TopicNotFound):
            await log.append("ghost", b"x")
        with pytest.raises(PartitionNotFound):
            await log.read("t", 3)
        pos = await log.append("t", b"v", key=b"k", headers={"h": b"1"}, timestamp=7)
        [record] = await log.read("t", pos.partition, pos.offset)
        assert (record.key, record.value, record.headers, record.timestamp) == (
            b"k",
            b"v",
            (("h", b"1"),),
            7,
        )
        batch = await log.append_batch("t", [b"a", b"b", b"c"])
        assert len({p.partition for p in batch}) == 1
        assert [p.offset for p in batch] == list(range(batch[0].offset, batch[0].offset + 3))
        info = await log.describe_topic("t")
        assert sum(p.records for p in info.partitions) == 4
        await log.delete_topic("t")
        assert await log.topics() == []

    run(url, scenario)


def test_concurrent_tasks_get_dense_offsets(url: str) -> None:
    async def scenario(log: AsyncLog, clock: SimClock) -> None:
        await log.create_topic("t", 2)

        async def writer(n: int) -> list[Any]:
            return [await log.append("t", b"%d-%d" % (n, i), key=b"%d" % n) for i in range(20)]

        results = await asyncio.gather(*(writer(n) for n in range(16)))
        positions = [p for ps in results for p in ps]
        assert len(set(positions)) == 320
        for partition in (0, 1):
            offsets = sorted(p.offset for p in positions if p.partition == partition)
            assert offsets == list(range(len(offsets)))
        for ps in results:  # one task's appends keep their order
            assert [p.offset for p in ps] == sorted(p.offset for p in ps)

    run(url, scenario)


def test_producer_dedupes_and_fences(url: str) -> None:
    async def scenario(log: AsyncLog, clock: SimClock) -> None:
        await log.create_topic("t")
        old = await log.producer("p")
        first = await old.append("t", b"a", sequence=0)
        assert await old.append("t", b"a", sequence=0) == first
        await old.append("t", b"b", sequence=5)
        with pytest.raises(OutOfOrderSequence):
            await old.append("t", b"c", sequence=3)
        new = await log.producer("p")
        with pytest.raises(ProducerFenced):
            await old.append("t", b"zombie")
        assert await new.append("t", b"a", sequence=0) == first
        assert [r.value for r in await log.read("t")] == [b"a", b"b"]

    run(url, scenario)


def test_producer_last_sequence_tracks_writes(url: str) -> None:
    """The async twin of ``contract.check_producer_last_sequence_tracks_writes``."""

    async def scenario(log: AsyncLog, clock: SimClock) -> None:
        await log.create_topic("t")
        producer = await log.producer("p")
        assert producer.last_sequence == -1
        await producer.append_batch("t", [b"a", b"b"], sequence=4)
        assert producer.last_sequence == 4
        with pytest.raises(OutOfOrderSequence):
            await producer.append("t", b"x", sequence=2)
        async with log.transaction(producer=producer) as tx:
            await tx.append("t", b"c")
        assert producer.last_sequence == 5 == (await log.producer("p")).last_sequence

    run(url, scenario)


def test_static_member_takes_over_and_fences_its_predecessor(url: str) -> None:
    async def scenario(log: AsyncLog, clock: SimClock) -> None:
        await log.create_topic("t", 2)
        await log.append_batch("t", [Message(b"%d" % i, key=b"%d" % i) for i in range(10)])
        old = log.consumer("t", group="g", instance_id="w1", auto_commit=False)
        assert old.instance_id == "w1"
        await poll_until(old, 10)
        new = log.consumer("t", group="g", instance_id="w1", auto_commit=False)
        assert len(await poll_until(new, 10)) == 10, "at once: the clock did not move"
        with pytest.raises(StaleGeneration):
            await old.commit()
        with pytest.raises(InstanceFenced):
            await old.poll(0.01)
        await old.close()
        await new.close()  # a static member stays in the group...
        assert [m.instance_id for m in (await log.describe_group("g")).members] == ["w1"]
        again = log.consumer("t", group="g", instance_id="w1")
        await again.poll(0.01)
        await again.close(leave=True)  # ...unless told to leave
        assert (await log.describe_group("g")).members == ()

    run(url, scenario)


def test_transaction_commit_and_rollback(url: str) -> None:
    async def scenario(log: AsyncLog, clock: SimClock) -> None:
        await log.create_topic("a")
        await log.create_topic("b")
        tp = TopicPartition("a", 0)
        if url.startswith("nats://"):  # records and offsets never commit together there
            with pytest.raises(NotSupported, match="records and offset commits"):
                async with log.transaction() as tx:
                    await tx.append("a", b"1")
                    tx.commit_offsets(group="g", offsets={tp: 1})
            assert await log.read("a") == [] and await log.groups() == []
            return
        with pytest.raises(KeyError):
            async with log.transaction() as tx:
                await tx.append("a", b"1")
                tx.commit_offsets(group="g", offsets={tp: 1})
                raise KeyError("boom")
        assert await log.read("a") == [] and await log.groups() == []
        async with log.transaction() as tx:
            await tx.append("a", b"1")
            await tx.append_batch("b", [Message(b"2", key=b"k")])
            tx.commit_offsets(group="g", offsets={tp: 1})
            assert await log.read("b") == []
        assert [p.topic for p in tx.positions] == ["a", "b"]
        assert (await log.describe_group("g")).committed == {tp: 1}

    run(url, scenario)


def test_consumer_group_split_commit_and_fencing(url: str) -> None:
    async def scenario(log: AsyncLog, clock: SimClock) -> None:
        await log.create_topic("t", 2)
        await log.append_batch("t", [Message(b"%d" % i, key=b"%d" % i) for i in range(20)])
        first = log.consumer("t", group="g", member_id="first", auto_commit=False)
        got = await poll_until(first, 20)
        assert sorted(r.value or b"" for r in got) == sorted(b"%d" % i for i in range(20))
        await first.commit()
        assert sum((await log.describe_group("g")).committed.values()) == 20
        await log.append_batch("t", [Message(b"x", key=b"1"), Message(b"y", key=b"2")])
        clock.advance(10_001)  # first's lease runs out; second takes over
        async with log.consumer("t", group="g", member_id="second") as second:
            assert sorted(r.value or b"" for r in await poll_until(second, 2)) == [b"x", b"y"]
            assert second.assignment() == {TopicPartition("t", 0), TopicPartition("t", 1)}
        with pytest.raises(StaleGeneration):
            await first.commit(dict.fromkeys(first.positions(), 0))
        await first.close()

    run(url, scenario)


def test_two_async_consumers_share_partitions(url: str) -> None:
    async def scenario(log: AsyncLog, clock: SimClock) -> None:
        await log.create_topic("t", 4)
        await log.append_batch("t", [Message(b"%d" % i, key=b"k%d" % i) for i in range(40)])
        a = log.consumer("t", group="g", member_id="a")
        b = log.consumer("t", group="g", member_id="b")
        got: list[Record] = []
        for _ in range(60):
            got += await a.poll(0.01) + await b.poll(0.01)
            if len(a.assignment()) == len(b.assignment()) == 2:
                break
        assert not a.assignment() & b.assignment()
        for _ in range(3):
            got += await a.poll(0.01) + await b.poll(0.01)
        assert sorted(r.value or b"" for r in got) == sorted(b"%d" % i for i in range(40))
        await a.close()
        await b.close()

    run(url, scenario)


def test_async_iteration_yields_new_records(url: str) -> None:
    async def scenario(log: AsyncLog, clock: SimClock) -> None:
        await log.create_topic("t")
        consumer = log.consumer("t")  # no group: reads every partition
        iterator = consumer.__aiter__()
        later = asyncio.get_running_loop().call_later(
            0.05, lambda: asyncio.ensure_future(log.append("t", b"late"))
        )
        record = await asyncio.wait_for(iterator.__anext__(), timeout=10)
        assert record.value == b"late"
        later.cancel()
        await consumer.close()

    run(url, scenario)


def test_closed_async_log_refuses(url: str) -> None:
    async def main() -> None:
        log = await AsyncLog.open(url, sync="off")
        await log.create_topic("t")
        await log.close()
        await log.close()
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: log.append("t", b"x"),
            lambda: log.append_batch("t", [b"x"]),
            lambda: log.read("t"),
            lambda: log.create_topic("u"),
            log.topics,
            lambda: log.producer("p"),
            log.maintain,
        ]
        for call in calls:
            with pytest.raises(Closed):
                await call()
        with pytest.raises(Closed):
            log.transaction()
        with pytest.raises(Closed):
            log.consumer("t")

    asyncio.run(main())


def test_scan_end_offsets_lag_and_position(url: str) -> None:
    async def scenario(log: AsyncLog, clock: SimClock) -> None:
        await log.create_topic("s", partitions=2)
        await log.append_batch("s", [Message(b"v%d" % i, partition=1) for i in range(5)])
        assert [r.value async for r in log.scan("s", 1, 2)] == [b"v2", b"v3", b"v4"]
        assert await log.end_offsets("s") == {0: 0, 1: 5}

        async def later() -> None:
            await asyncio.sleep(0.05)
            await log.append("s", b"late", partition=0)

        task = asyncio.create_task(later())
        followed = [r.value async for r in log.scan("s", 0, follow=True, timeout_s=2.0)]
        await task
        assert followed[0] == b"late"

        consumer = log.consumer("s", group="g", auto_commit=False)
        got = await poll_until(consumer, 6)
        assert consumer.position(TopicPartition("s", 1)) == 5
        await consumer.commit()
        assert await log.lag("g") == {
            TopicPartition("s", 0): (1, 1, 0),
            TopicPartition("s", 1): (5, 5, 0),
        }
        assert len(got) == 6
        await consumer.close()

    run(url, scenario)
