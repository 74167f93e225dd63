"""A consumer's arguments: ``position``, ``seek`` and ``poll`` answer bad
input with ``UsageError``, never a ``KeyError``, a ``TypeError`` at the next
poll or a hang; a refused call changes nothing (sync and async twins alike);
and any valid ``timeout_s``, however long, waits in slices a backend can take."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unbundled import AsyncLog, Log, TopicPartition, UsageError, limits
from unbundled.log._consumer import _WAIT_SLICE_S, ConsumerCore, Op

ASSIGNED = TopicPartition("t", 0)
UNASSIGNED = [TopicPartition("t", 1), TopicPartition("other", 0), ("t", 7)]


def _log_with_records(count: int) -> Log:
    log = Log.open("memory://")
    log.create_topic("t")
    log.append_batch("t", [b"r%d" % i for i in range(count)])
    return log


@pytest.mark.parametrize("tp", UNASSIGNED, ids=str)
def test_position_of_an_unassigned_partition_is_a_usage_error(tp: Any) -> None:
    with _log_with_records(3) as log, log.consumer("t") as consumer:
        assert consumer.poll(0.0)
        with pytest.raises(UsageError, match="not assigned"):
            consumer.position(tp)
        with pytest.raises(UsageError, match="not assigned"):
            consumer.seek(tp, 0)


def test_async_position_of_an_unassigned_partition_is_a_usage_error() -> None:
    async def scenario() -> None:
        async with await AsyncLog.open("memory://") as log:
            await log.create_topic("t")
            await log.append("t", b"r")
            async with log.consumer("t") as consumer:
                assert await consumer.poll(0.0)
                with pytest.raises(UsageError, match="not assigned"):
                    consumer.position(TopicPartition("t", 1))
                with pytest.raises(UsageError, match="offset must be an int"):
                    consumer.seek(ASSIGNED, -1)
                assert consumer.position(ASSIGNED) == 1

    asyncio.run(scenario())


offsets = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.none(),
    st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(offset=offsets)
def test_seek_takes_an_int_offset_or_changes_nothing(offset: Any) -> None:
    with _log_with_records(5) as log, log.consumer("t") as consumer:
        consumer.poll(0.0)
        before = consumer.position(ASSIGNED)
        if type(offset) is int and 0 <= offset <= limits.position_max:
            consumer.seek(ASSIGNED, offset)
            # Outside the stored range the next poll resets it (offset_reset).
            expected = list(range(offset, 5)) if offset <= 5 else list(range(5))
        else:
            with pytest.raises(UsageError, match="offset must be an int"):
                consumer.seek(ASSIGNED, offset)
            assert consumer.position(ASSIGNED) == before
            expected = []
        assert [record.offset for record in consumer.poll(0.0)] == expected


# Over limits.wait_s_max (a week) too: a bound, and a finite one.
BAD_TIMEOUTS: list[Any] = ["1", None, True, -1, -0.5, math.nan, -math.inf, math.inf, 2**80]


@pytest.mark.parametrize("timeout_s", BAD_TIMEOUTS, ids=repr)
def test_poll_refuses_a_bad_timeout(timeout_s: Any) -> None:
    with _log_with_records(2) as log, log.consumer("t") as consumer:
        with pytest.raises(UsageError, match="timeout_s must be a number"):
            consumer.poll(timeout_s)
        assert [record.offset for record in consumer.poll(limits.wait_s_max)] == [0, 1]


def test_async_poll_refuses_a_bad_timeout() -> None:
    async def scenario() -> None:
        async with await AsyncLog.open("memory://") as log:
            await log.create_topic("t")
            async with log.consumer("t") as consumer:
                for timeout_s in BAD_TIMEOUTS:
                    with pytest.raises(UsageError, match="timeout_s must be a number"):
                        await consumer.poll(timeout_s)

    asyncio.run(scenario())


def _first_wait(timeout_s: float) -> float:
    """The timeout of the first wait a poll of an empty partition asks the
    backend for (the consumer's decisions, driven without a backend); 0 if
    the poll ends without waiting (its time is up)."""
    tp = TopicPartition("t", 0)
    core = ConsumerCore(
        ("t",),
        group=None,
        member_id="m",
        auto_commit=False,
        auto_commit_interval_s=0.0,
        offset_reset="earliest",
        lease_ms=10_000,
        partitions=[tp],
    )
    answers: dict[str, Callable[[tuple[Any, ...]], Any]] = {
        "change_token": lambda _: 1,
        "offset_bounds": lambda _: {tp: (0, 0)},
    }
    steps = core.poll(timeout_s, 10)
    try:
        op: Op = next(steps)
        while op.name != "wait_for_change":
            op = steps.send(answers[op.name](op.args))
    except StopIteration as stop:
        assert stop.value == []
        return 0.0
    waited: float = op.args[1]
    return waited


@settings(max_examples=60, deadline=None)
@given(timeout_s=st.one_of(st.floats(0, limits.wait_s_max), st.integers(0, int(limits.wait_s_max))))
def test_any_valid_timeout_waits_in_slices_a_backend_can_take(timeout_s: float) -> None:
    # A memory backend's condition wait raised OverflowError for 1e300 s.
    waited = _first_wait(timeout_s)
    assert 0 <= waited <= _WAIT_SLICE_S
    assert waited <= timeout_s or math.isclose(waited, timeout_s)
