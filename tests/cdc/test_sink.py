"""The sink's exactly-once bookkeeping: records and position in one transaction.

Guarantees (docs/explanation/cdc.md): a replayed change (at or before the stored
position) is dropped, so a restart that replays stores nothing twice; rows that share a
commit LSN are told apart by their index; a second runner of a connector fences the first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unbundled
from unbundled.cdc import Change, LogSink, SourcePosition
from unbundled.errors import CompareFailed, UsageError


def change(commit: int, index: int, row_id: int, op: str = "c") -> Change:
    return Change(
        op=op,  # type: ignore[arg-type]
        connector="postgresql",
        db="shop",
        schema="public",
        table="orders",
        position=SourcePosition(commit, index),
        ts_ms=1_700_000_000_000,
        key={"id": row_id},
        after={"id": row_id, "total": "12.50"},
        tx_id=commit,
    )


@pytest.fixture(params=["memory", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[unbundled.Database]:
    url = "memory://" if request.param == "memory" else str(tmp_path / "log.db")
    database = unbundled.open(url)
    yield database
    database.close()


def stored(db: unbundled.Database) -> list[dict[str, Any]]:
    records = db.log.read("shop.public.orders", 0, 0, records_max=10_000)
    return [json.loads(r.value or b"null") for r in records]


def test_writes_debezium_envelopes_keyed_by_primary_key(db: unbundled.Database) -> None:
    sink = LogSink(db, "shop", prefix="shop")
    result = sink.write([change(100, 0, 1), change(100, 1, 2)])
    assert (result.written, result.skipped) == (2, 0)
    records = db.log.read("shop.public.orders", 0, 0, records_max=10)
    assert [json.loads(r.key or b"null") for r in records] == [{"id": 1}, {"id": 2}]
    first = json.loads(records[0].value or b"null")
    assert first["op"] == "c" and first["after"] == {"id": 1, "total": "12.50"}
    assert first["source"]["table"] == "orders" and first["source"]["txId"] == 100
    assert json.loads(first["source"]["sequence"]) == ["100", "0"]


def test_replay_after_restart_is_dropped_by_position(db: unbundled.Database) -> None:
    LogSink(db, "shop", prefix="shop").write([change(100, 0, 1), change(100, 1, 2)])
    again = LogSink(db, "shop", prefix="shop")  # a restarted runner
    assert again.position == SourcePosition(100, 1)
    # The source replays the whole unconfirmed transaction, then goes on.
    result = again.write([change(100, 0, 1), change(100, 1, 2), change(100, 2, 3)])
    assert (result.written, result.skipped) == (1, 2)
    assert [r["after"]["id"] for r in stored(db)] == [1, 2, 3]


def test_rows_sharing_a_commit_lsn_are_told_apart_by_index(db: unbundled.Database) -> None:
    sink = LogSink(db, "shop", prefix="shop")
    sink.write([change(7, i, i) for i in range(3)])
    # a crash after the first three of a COPY of five: the replay holds all five
    LogSink(db, "shop", prefix="shop").write([change(7, i, i) for i in range(5)])
    assert [r["after"]["id"] for r in stored(db)] == [0, 1, 2, 3, 4]


def test_a_second_runner_fences_the_first(db: unbundled.Database) -> None:
    first = LogSink(db, "shop", prefix="shop")
    second = LogSink(db, "shop", prefix="shop")
    second.write([change(1, 0, 1)])
    with pytest.raises(CompareFailed):
        first.write([change(1, 0, 1), change(2, 0, 2)])
    assert [r["after"]["id"] for r in stored(db)] == [1]  # nothing of the fenced write


def test_out_of_order_changes_are_refused_and_nothing_is_written(db: unbundled.Database) -> None:
    sink = LogSink(db, "shop", prefix="shop")
    sink.write([change(5, 0, 1)])
    with pytest.raises(UsageError, match="source order"):
        sink.write([change(6, 0, 2), change(4, 0, 3)])
    assert [r["after"]["id"] for r in stored(db)] == [1]


def test_bad_connector_name_is_refused(db: unbundled.Database) -> None:
    with pytest.raises(UsageError, match="connector name"):
        LogSink(db, "no spaces", prefix="x")


@settings(max_examples=40, deadline=None)
@given(
    commits=st.lists(st.integers(1, 4), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 30), max_size=6),
)
def test_any_replay_schedule_stores_each_change_once(commits: list[int], cuts: list[int]) -> None:
    """Whatever prefix each crashed runner stored, replaying from any earlier point
    ends with every change stored once, in order."""
    changes = [
        change(100 + t, i, t * 10 + i) for t, size in enumerate(commits) for i in range(size)
    ]
    with unbundled.open("memory://") as db:
        done = 0
        for cut in [*cuts, len(changes)]:
            sink = LogSink(db, "shop", prefix="shop")
            start = max(0, done - 3)  # the source replays from a confirmed point at or before
            end = max(done, min(len(changes), cut))
            sink.write(changes[start:end])
            done = end
        ids = [r["after"]["id"] for r in stored(db)]
        assert ids == [c.after["id"] for c in changes]  # type: ignore[index]
