"""The watermark window of an incremental snapshot chunk, as a model (no server).

Guarantee 6 (docs/explanation/cdc.md, incremental snapshots): whatever the writes,
whichever of them the chunk's select saw (every commit streamed before the low watermark
except those not yet visible, any of those streamed between the watermarks, none after),
the stream's events before the high watermark, then the chunk's rows, then the events
after it add up to the table for the chunk's keys.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from unbundled.cdc._change import Change, SourcePosition
from unbundled.cdc._incremental import Task
from unbundled.cdc._pg_incremental import Chunk, Snapshot

KEYS = 12


def change(op: Any, key: int, value: int | None, xid: int, table: str = "t") -> Change:
    return Change(
        op=op,
        connector="postgresql",
        db="db",
        schema="s",
        table=table,
        position=SourcePosition(xid, 0),
        ts_ms=0,
        key={"id": key},
        after=None if value is None else {"id": key, "v": value},
        tx_id=xid,
    )


def apply(state: dict[int, int], event: Change) -> None:
    key = event.key["id"] if event.key else None
    if event.op == "d":
        state.pop(key, None)  # type: ignore[arg-type]
    elif event.after is not None and key is not None:
        state[key] = event.after["v"]


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(1, KEYS), st.booleans(), st.booleans(), st.booleans()),
        max_size=40,
    ),
    data=st.data(),
)
def test_events_and_chunk_rows_add_up_to_the_table(
    ops: list[tuple[int, bool, bool, bool]], data: st.DataObject
) -> None:
    # Each op is one transaction: (key, delete?, visible to the select?, other table?).
    low = data.draw(st.integers(0, len(ops)))
    high = data.draw(st.integers(low, len(ops)))
    last_chunk_key = data.draw(st.integers(1, KEYS))
    table = {k: 0 for k in range(1, KEYS + 1)}
    seen = dict(table)  # what the select sees
    events, running = [], set()
    for i, (key, delete, visible, other) in enumerate(ops):
        xid = 1000 + i
        event = change("d" if delete else "u", key, None if delete else i + 1, xid)
        if other:
            event = change("u", key, -1, xid, table="other")
        events.append(event)
        if not other:
            apply(table, event)
        # Before the low watermark a commit may be not yet visible; after the high one
        # it never is; in between, either.
        if i < high and visible:
            if not other:
                apply(seen, event)
        else:
            running.add(xid)
    snapshot = Snapshot(xmin=1000, xmax=1000 + len(ops), running=frozenset(running))
    task = Task(0, "s", "t", None, 0, 0)
    rows = {
        f'{{"id":{k}}}': change("r", k, v, 0)
        for k, v in sorted(seen.items())
        if k <= last_chunk_key
    }
    chunk = Chunk(task, "m", rows, None, selected=len(rows), snapshot=snapshot)
    log: dict[int, int] = {}
    for i, event in enumerate(events):
        if i == low:
            chunk.in_window = True
        if i == high:
            emitted, _ = chunk.finish(1)
            for row in emitted:
                apply(log, row)
        chunk.saw(event)
        if event.table == "t":
            apply(log, event)
    if high == len(events):
        emitted, _ = chunk.finish(1)
        for row in emitted:
            apply(log, row)
    want = {k: v for k, v in table.items() if k <= last_chunk_key}
    assert {k: v for k, v in log.items() if k <= last_chunk_key} == want


def test_snapshot_visibility_wraps_around_32_bits() -> None:
    snap = Snapshot.parse(f"{(1 << 32) + 5}:{(1 << 32) + 10}:{(1 << 32) + 7}")
    assert snap.running == frozenset({7})
    assert snap.invisible(7) and snap.invisible(10) and snap.invisible(11)
    assert not snap.invisible(6) and not snap.invisible(9) and not snap.invisible(None)
    near = Snapshot.parse(f"{(1 << 32) - 3}:{(1 << 32) - 2}:")
    assert near.invisible(0xFFFFFFFE) and near.invisible(3)  # 3 came after the wrap
    assert not near.invisible(0xFFFFFFFD)


def test_a_key_change_or_truncate_in_the_window_drops_the_rows() -> None:
    task = Task(0, "s", "t", None, 0, 0)
    rows = {f'{{"id":{k}}}': change("r", k, 0, 0) for k in (1, 2, 3)}
    chunk = Chunk(task, "m", rows, None, selected=3, in_window=True)
    moved = Change(
        op="u",
        connector="postgresql",
        db="db",
        schema="s",
        table="t",
        position=SourcePosition(5, 0),
        ts_ms=0,
        key={"id": 9},
        before={"id": 1},
        after={"id": 9, "v": 1},
    )
    chunk.saw(moved)  # row 1 moved to key 9: the chunk must not bring key 1 back
    assert [c.key for c in chunk.finish(7)[0]] == [{"id": 2}, {"id": 3}]
    truncate = Change("t", "postgresql", "db", "s", "t", SourcePosition(6, 0), 0)
    chunk.saw(truncate)
    rows_left, done = chunk.finish(7)
    assert rows_left == [] and done.emitted == 0
