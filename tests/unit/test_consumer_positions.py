"""A consumer's positions: ``position`` and ``seek`` answer bad input with
``UsageError``, never a ``KeyError`` now or a ``TypeError`` at the next poll,
and a refused ``seek`` changes nothing (sync and async twins alike)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unbundled import AsyncLog, Log, TopicPartition, UsageError

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
        if type(offset) is int and offset >= 0:
            consumer.seek(ASSIGNED, offset)
            # Outside the stored range the next poll resets it (offset_reset).
            expected = list(range(offset, 5)) if offset <= 5 else list(range(5))
        else:
            with pytest.raises(UsageError, match="offset must be an int"):
                consumer.seek(ASSIGNED, offset)
            assert consumer.position(ASSIGNED) == before
            expected = []
        assert [record.offset for record in consumer.poll(0.0)] == expected
