"""State that outgrows its first buckets: an operator's buckets double when
one would be stored larger than ``BUCKET_SPLIT_BYTES``, and nothing a flow
outputs changes -- with restarts anywhere (the layout is in the manifest),
on the test driver and on SQLite. The threshold is lowered here so that a
few thousand keys grow the layout; by default it is 256 KiB, so an
operator's state per partition can pass the 64 MiB that 64 buckets of the
KV store's 1 MiB could hold (it raised LimitExceeded before).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unbundled
from unbundled import limits, streams
from unbundled.streams import Flow, Session, TestDriver, Tumbling, _ops, _store, _task
from unbundled.streams._store import read_manifest

KEYS = 300


def history(state: list[int], value: int) -> tuple[list[int], int]:
    """Keeps every value of the key (state that only grows) and emits the count."""
    state = [*state, value]
    return state, len(state)


def flow() -> Flow:
    f = Flow("grow", out_of_orderness_ms=50)
    src = f.source("in")
    src.map_with_state(history, init=list).to_topic("h")
    src.window(Tumbling(100), allowed_lateness_ms=30).collect().to_topic("w")
    src.window(Session(40)).count().to_topic("s")
    return f


def events(n: int, seed: int) -> list[tuple[str, int, int]]:
    out = []
    ts = 0
    for i in range(n):
        ts += (i * 7 + seed) % 5
        out.append((f"key-{(i * 31 + seed) % KEYS}", i, ts))
    return out


def drive(items: list[tuple[str, int, int]], restarts: set[int]) -> dict[str, Any]:
    driver = TestDriver(flow())
    for i, (key, value, ts) in enumerate(items):
        if i in restarts:
            driver.restart()
        driver.send(value, key=key, ts=ts)
    driver.advance(10**12)
    return {
        "outputs": {t: driver.output(t) for t in ("h", "w", "s")},
        "state": driver.state(),
        "buckets": {op.node.label: op.nbuckets for op in driver._task(0).stateful},
    }


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 1000),
    restarts=st.sets(st.integers(0, 1499), max_size=6),
)
def test_a_grown_layout_outputs_what_the_first_one_does(seed: int, restarts: set[int]) -> None:
    items = events(1500, seed)
    expected = drive(items, set())
    assert set(expected["buckets"].values()) == {_ops.BUCKETS}  # small state: no growth
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_task, "BUCKET_SPLIT_BYTES", 100)
        got = drive(items, restarts | {750})  # one restart at least: the layout is reloaded
    assert got["outputs"] == expected["outputs"]
    assert got["state"] == expected["state"]
    grown = {label: n for label, n in got["buckets"].items() if n > _ops.BUCKETS}
    assert grown, got["buckets"]
    assert all(n & (n - 1) == 0 for n in got["buckets"].values())


def test_grown_state_on_sqlite_survives_reopening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite: the manifest names the grown layout, every bucket it lists
    is stored, and a run over more input after reopening writes what one run
    on memory:// (the first layout throughout) writes."""
    items = events(3000, 3)
    half = len(items) // 2

    def produce(db: unbundled.Database, part: list[tuple[str, int, int]]) -> None:
        if "in" not in db.log.topics():
            db.log.create_topic("in", 1)
        db.log.append_batch(
            "in",
            [unbundled.Message(b"%d" % v, key.encode(), (), ts, 0) for key, v, ts in part],
        )

    def outputs(db: unbundled.Database) -> dict[str, list[Any]]:
        return {
            t: [(r.key, r.value, r.timestamp) for r in db.log.scan(t, 0)] for t in ("h", "w", "s")
        }

    with unbundled.open("memory://") as db:
        produce(db, items)
        streams.heartbeat(db.log, "in", 10**12)
        streams.run(db, flow(), until_end=True)
        expected = outputs(db)
    monkeypatch.setattr(_task, "BUCKET_SPLIT_BYTES", 150)
    path = str(tmp_path / "grow.db")
    with unbundled.open(path) as db:
        produce(db, items[:half])
        streams.run(db, flow(), until_end=True, epoch_records=400)
        manifest = read_manifest(db, "grow", 0)
        assert manifest is not None and manifest.layout, manifest
        assert all(n > _ops.BUCKETS and n & (n - 1) == 0 for n in manifest.layout.values())
        for node_id, bucket in manifest.stored:
            assert db.kv.read(f"streams/grow/0/{node_id}/{bucket}") is not None
        restored = _store.restore(db, flow(), 0)
        assert restored is not None
        assert {op.node.id: op.nbuckets for op in restored.stateful if op.nbuckets > 64} == {
            int(k): v for k, v in manifest.layout.items()
        }
        assert not restored.ctx.dirty  # a restored layout is not written again
    with unbundled.open(path) as db:
        produce(db, items[half:])
        streams.heartbeat(db.log, "in", 10**12)
        streams.run(db, flow(), until_end=True, epoch_records=700)
        assert outputs(db) == expected
        assert any(expected.values())


def test_a_damaged_layout_is_corruption() -> None:
    """A manifest naming a bucket count that is no power of two, or an
    operator that is not there, is refused as CorruptionError on restore."""
    f = flow()
    task = _task.Task(f, 0)
    manifest_blob, _ = task.dump()
    manifest = _task.Task.read_manifest(manifest_blob, "here")
    stateful = next(iter(task.by_id))
    for layout in ({stateful: 96}, {stateful: 1 << 20}, {999: 128}):
        bad = _task.Manifest(**{**_fields(manifest), "layout": layout})
        with pytest.raises(unbundled.CorruptionError):
            _task.Task(f, 0).load(bad, {}, "here")


def _fields(manifest: _task.Manifest) -> dict[str, Any]:
    return {name: getattr(manifest, name) for name in manifest.__struct_fields__}


def padded(state: str, value: int) -> tuple[str, None]:
    """About 100 bytes of state per key, emitting nothing."""
    return f"{value:0100d}", None


def test_state_past_sixty_four_full_buckets_no_longer_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With 64 fixed buckets an operator's state per partition was capped at
    64 KV values: past it, LimitExceeded stopped the flow. Scaled down here
    (8 KiB values, so the old cap was 512 KiB; about 700 KB of state): the
    buckets double instead, the epoch commits, and the state comes back whole."""
    monkeypatch.setattr(limits, "kv_value_bytes_max", 8 * 1024)
    monkeypatch.setattr(_task, "BUCKET_SPLIT_BYTES", 2 * 1024)
    f = Flow("wide", out_of_orderness_ms=0)
    f.source("in").map_with_state(padded, init=str).to_topic("never")
    keys = 6000
    with unbundled.open("memory://") as db:
        db.log.create_topic("in", 1)
        db.log.append_batch(
            "in", [unbundled.Message(b"%d" % i, b"k%d" % i, (), i, 0) for i in range(keys)]
        )
        report = streams.run(db, f, until_end=True, epoch_records=keys)
        assert report.records_in == keys
        manifest = read_manifest(db, "wide", 0)
        assert manifest is not None and manifest.keys == keys
        (count,) = manifest.layout.values()
        assert count * limits.kv_value_bytes_max > keys * 100 > 64 * limits.kv_value_bytes_max
        restored = _store.restore(db, f, 0)
        assert restored is not None
        (op,) = restored.stateful
        state = {k: v for bucket in op.buckets for k, v in bucket.items()}
        assert state == {f"k{i}": f"{i:0100d}" for i in range(keys)}


def kept_or_dropped(state: str, value: int) -> tuple[str | None, int]:
    """About 100 bytes per key while values are positive; a negative one drops the key."""
    return (None if value < 0 else f"{value:0100d}"), value


def test_state_that_shrinks_gets_its_first_layout_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grown by 3,000 keys, then emptied key by key: the buckets halve back to
    64 (no bucket past them left stored, in the manifest or the store), the
    outputs are those of a run that never changed its layout, and a restart
    in between changes nothing."""
    keys = 3000

    def build() -> Flow:
        f = Flow("shrink", out_of_orderness_ms=0)
        f.source("in").map_with_state(kept_or_dropped, init=str).to_topic("seen")
        return f

    def messages(sign: int, first_ts: int) -> list[unbundled.Message]:
        return [
            unbundled.Message(b"%d" % (sign * (i + 1)), b"k%d" % i, (), first_ts + i, 0)
            for i in range(keys)
        ]

    def run_all(url: str, layouts: list[dict[int, int]]) -> list[Any]:
        with unbundled.open(url) as db:
            db.log.create_topic("in", 1)
            for sign, first_ts in ((1, 0), (-1, keys)):
                db.log.append_batch("in", messages(sign, first_ts))
                streams.run(db, build(), until_end=True, epoch_records=500)
                manifest = read_manifest(db, "shrink", 0)
                assert manifest is not None
                layouts.append(dict(manifest.layout))
                assert all(b < manifest.layout.get(n, 64) for n, b in manifest.stored)
                for node_id, bucket in manifest.stored:
                    assert db.kv.read(f"streams/shrink/0/{node_id}/{bucket}") is not None
                for bucket in range(manifest.layout.get(1, 64), 4096):
                    assert db.kv.read(f"streams/shrink/0/1/{bucket}") is None
            return [(r.key, r.value) for r in db.log.scan("seen", 0)]

    expected = run_all("memory://", [])
    monkeypatch.setattr(_task, "BUCKET_SPLIT_BYTES", 2 * 1024)
    layouts: list[dict[int, int]] = []
    got = run_all(str(tmp_path / "shrink.db"), layouts)
    assert got == expected and len(got) == 2 * keys
    grown, after = layouts
    assert grown and max(grown.values()) > _ops.BUCKETS, layouts
    assert after == {}, layouts  # back to the first layout
