"""Async functions: awaited in order, wherever a flow takes a function."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec

import unbundled
from unbundled import streams


async def _double(v: int) -> int:
    await asyncio.sleep(0)
    return v * 2


async def _twice(v: int) -> list[int]:
    await asyncio.sleep(0)
    return [v, v]


async def _total(state: int, v: int) -> tuple[int, int]:
    await asyncio.sleep(0)
    return state + v, state + v


def test_async_functions_give_what_sync_ones_give() -> None:
    def build(double: Any, twice: Any, total: Any) -> streams.TestDriver:
        flow = streams.Flow("a")
        flow.source("x").map(double).flat_map(twice).map_with_state(total, init=lambda: 0).to_topic(
            "o"
        )
        d = streams.TestDriver(flow)
        for i in range(5):
            d.send(i, key="k", ts=i)
        return d

    async_out = build(_double, _twice, _total).output("o")
    sync_out = build(lambda v: v * 2, lambda v: [v, v], lambda s, v: (s + v, s + v)).output("o")
    assert async_out == sync_out
    assert [o.value for o in async_out][-1] == 2 * 2 * sum(range(5))


def test_an_async_callback_is_awaited_after_the_commit(tmp_path: Path) -> None:
    seen: list[tuple[Any, Any]] = []

    async def record(key: Any, value: Any, ts: int) -> None:
        await asyncio.sleep(0)
        seen.append((key, value))

    with unbundled.open(tmp_path / "a.db") as db:
        db.log.create_topic("x", 1)
        db.log.append_batch("x", [msgspec.json.encode(i) for i in range(4)])
        flow = streams.Flow("cb")
        flow.source("x").map(_double).to_callback(record)
        streams.run(db, flow, until_end=True)
    assert seen == [(None, 0), (None, 2), (None, 4), (None, 6)]
