"""``AsyncLog`` on NATS appends from the caller's event loop, on a connection
of that loop (``backends/nats/_log_loop``), and publishes through ``Acks``
(``_publish``): the same records, ids and errors as the backend's own loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import nats
import nats.errors
import pytest
from nats.js import errors as js_errors

from tests.backends.nats._nats import bucket_url, delete_bucket, fresh_bucket, server
from unbundled import AsyncLog, Log, PartitionNotFound
from unbundled.backends.nats import NatsBackend
from unbundled.backends.nats._log_loop import NatsLoopWriter
from unbundled.backends.nats._publish import Acks

pytestmark = pytest.mark.nats


@pytest.fixture
def url() -> Iterator[str]:
    name = fresh_bucket("test_loop")
    server()
    yield bucket_url(name)
    delete_bucket(name)


def test_async_appends_go_out_on_a_connection_of_the_callers_loop(url: str) -> None:
    async def main() -> None:
        async with await AsyncLog.open(url) as log:
            backend = log.backend
            assert isinstance(backend, NatsBackend)
            await log.create_topic("t", partitions=2)
            token = backend.change_token()
            positions = await asyncio.gather(
                *(log.append("t", b"%d" % i, partition=i % 2) for i in range(40))
            )
            assert sorted(p.offset for p in positions if p.partition == 0) == list(range(20))
            writer = await log._loop_writer()
            assert isinstance(writer, NatsLoopWriter)
            assert writer.loop is asyncio.get_running_loop()
            assert writer._view._nc is not backend._nc, "the caller's loop has its own"
            # An idempotent producer's retry (same sequence) lands once.
            producer = await log.producer("p")
            first = await producer.append_batch("t", [b"a", b"b"], sequence=3)
            again = await producer.append_batch("t", [b"a", b"b"], sequence=3)
            assert again == first
            # This process's readers were woken (the backend's token moved).
            deadline = time.monotonic() + 5
            while backend.change_token() == token:
                assert time.monotonic() < deadline, "no wake-up after async appends"
                await asyncio.sleep(0.01)

    asyncio.run(main())
    with Log.open(url) as log:
        assert sum(log.end_offsets("t").values()) == 42, "40 appends and one batch of 2"


def test_a_batch_whose_caller_is_cancelled_is_still_written_whole(url: str) -> None:
    async def main() -> None:
        async with await AsyncLog.open(url) as log:
            await log.create_topic("t")
            await log.append("t", b"warm")  # the writer is open
            task = asyncio.ensure_future(log.append_batch("t", [b"%d" % i for i in range(2000)]))
            for _ in range(3):  # a few turns of the loop: the batch has started going out,
                await asyncio.sleep(0)  # and 2,000 acknowledgements take longer than that
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            deadline = time.monotonic() + 10
            while (await log.end_offsets("t"))[0] < 2001:
                assert time.monotonic() < deadline, await log.end_offsets("t")
                await asyncio.sleep(0.05)
            values = [r.value for r in await log.read("t", 0, 1, records_max=5000)]
            assert values == [b"%d" % i for i in range(2000)], "in order, once each"

    asyncio.run(main())


def test_an_append_after_the_topic_was_made_again_elsewhere_lands_in_the_new_one(
    url: str,
) -> None:
    async def append_async(value: bytes) -> int:
        async with await AsyncLog.open(url) as log:
            await log.append("t", b"first")  # caches this incarnation
            with Log.open(url) as other:  # meanwhile, another process...
                other.delete_topic("t")
                other.create_topic("t")
            return (await log.append("t", value)).offset

    with Log.open(url) as log, Log.open(url) as other:
        log.create_topic("t")
        log.append("t", b"old")
        other.delete_topic("t")
        other.create_topic("t")
        assert log.append("t", b"new").offset == 0, "the stale stream was not an error"
        assert [r.value for r in other.read("t")] == [b"new"]
    assert asyncio.run(append_async(b"newer")) == 0
    with Log.open(url) as log, Log.open(url) as other:
        log.append("t", b"x")
        other.delete_topic("t")
        other.create_topic("t", partitions=2)
        with pytest.raises(PartitionNotFound, match="deleted and created again"):
            log.append("t", b"y", partition=0)


def test_a_log_used_from_a_second_event_loop_still_appends(url: str) -> None:
    """Only the first loop gets a writer; another loop's appends take the
    backend's own loop (``asyncio.run`` twice with one log)."""

    async def first() -> AsyncLog:
        log = await AsyncLog.open(url)
        await log.create_topic("t")
        await log.append("t", b"a")
        return log

    log = asyncio.run(first())

    async def second() -> None:
        assert await log._loop_writer() is None
        await log.append("t", b"b")
        await log.close()

    asyncio.run(second())
    with Log.open(url) as plain:
        assert [r.value for r in plain.read("t")] == [b"a", b"b"]


def test_acks_time_out_and_report_refusals_and_missing_streams() -> None:
    async def main() -> None:
        nc = await nats.connect(server())
        try:
            acks = Acks(nc, timeout_s=0.3)
            await acks.subscribe()

            async def refuse(msg: Any) -> None:
                await msg.respond(
                    b'{"error": {"code": 400, "err_code": 10071, "description": "wrong last"}}'
                )

            async def ignore(msg: Any) -> None:
                return None

            await nc.subscribe("ubtest.silent", cb=ignore)
            await nc.subscribe("ubtest.refuse", cb=refuse)
            await nc.flush()
            started = time.monotonic()
            with pytest.raises(nats.errors.TimeoutError):
                await acks.publish("ubtest.silent", b"x", {})
            assert 0.25 < time.monotonic() - started < 3
            with pytest.raises(js_errors.BadRequestError) as refused:
                await acks.publish("ubtest.refuse", b"x", {})
            assert refused.value.err_code == 10071
            with pytest.raises(nats.errors.NoRespondersError):
                await acks.publish("ubtest.nobody", b"x", {})
            assert not acks._waiting, "every publish forgot its token"
            acks.close()
        finally:
            await nc.close()

    asyncio.run(main())


def test_a_process_that_only_writes_never_subscribes_to_announcements(url: str) -> None:
    """N9: announcements reach only processes that read (took the token)."""
    with Log.open(url) as writer, Log.open(url) as reader:
        writer.create_topic("t")
        writer.append("t", b"a")
        backend = writer.backend
        assert isinstance(backend, NatsBackend) and not backend._listening
        token = reader.backend.change_token()  # the reader subscribes here
        started = time.monotonic()
        writer.append("t", b"b")
        assert reader.backend.wait_for_change(token, 10.0) != token
        assert time.monotonic() - started < 5, "woken by the announcement, not the timeout"
        assert not backend._listening
