"""key_by through the log: downstream tasks merge the upstream partitions in
a fixed order, so results -- lateness and output order included -- do not
depend on how the partitions' records interleave, on restarts, or on epoch
and poll sizes."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unbundled
from unbundled import streams
from unbundled.log import Message

PARTS = 3
SIZE = 1000


def _flow(name: str = "by-user") -> streams.Flow:
    flow = streams.Flow(name, out_of_orderness_ms=200, watermark_every_ms=100)
    counts = (
        flow.source("clicks").key_by(lambda v: v["user"]).window(streams.Tumbling(SIZE)).count()
    )
    counts.to_topic("out")
    return flow


def _events(rnd: random.Random, n: int, disorder: int) -> list[tuple[int, dict[str, Any], int]]:
    """(partition, value, ts): users spread over every partition."""
    return [
        (
            rnd.randrange(PARTS),
            {"user": f"u{rnd.randrange(9)}"},
            10_000 + i * 7 - rnd.randint(0, disorder),
        )
        for i in range(n)
    ]


def _drive(events: list[Any], rnd: random.Random, restarts: int) -> tuple[list[Any], list[Any]]:
    """Feed each partition's events in order, the partitions interleaved at random."""
    queues = {p: [e for e in events if e[0] == p] for p in range(PARTS)}
    d = streams.TestDriver(_flow(), partitions=PARTS)
    cut = set(rnd.sample(range(len(events)), restarts))
    n = 0
    while any(queues.values()):
        p = rnd.choice([q for q in queues if queues[q]])
        _p, value, ts = queues[p].pop(0)
        if n in cut:
            d.restart()
        d.send(value, key=f"r{n}", ts=ts, partition=p)
        n += 1
    d.advance(10**9)
    # The driver lists what all downstream tasks emit in one list, in the order
    # it ran them; per task (per output partition) the order is fixed, and the
    # runner test below compares that byte for byte.
    return sorted(d.output("out"), key=repr), sorted(d.late, key=repr)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6), disorder=st.sampled_from([0, 150, 3000]))
def test_the_merge_order_is_a_function_of_the_partitions(seed: int, disorder: int) -> None:
    rnd = random.Random(seed)
    events = _events(rnd, 300, disorder)
    first = _drive(events, rnd, 0)
    assert _drive(events, rnd, 4) == first  # another interleaving, with restarts
    out, late = first
    counted = sum(o.value.value for o in out)
    assert counted + len(late) == len(events)  # a late event is never lost
    if disorder <= 150:  # within out_of_orderness_ms: the batch answer
        expected: dict[tuple[str, int], int] = {}
        for _p, value, ts in events:
            key = (value["user"], ts - ts % SIZE)
            expected[key] = expected.get(key, 0) + 1
        assert {(o.key, o.value.start): o.value.value for o in out} == expected
        assert late == []


def _produce(db: Any, rnd: random.Random) -> None:
    db.log.create_topic("clicks", PARTS)
    db.log.append_batch(
        "clicks",
        [
            Message(msgspec.json.encode(value), partition=p, timestamp=ts)
            for p, value, ts in _events(rnd, 2000, 150)
        ],
    )
    streams.heartbeat(db.log, "clicks", now_ms=10**8)


def _out(db: Any, topic: str = "out") -> list[list[tuple[Any, ...]]]:
    return [
        [(r.key, r.value, r.headers, r.timestamp) for r in db.log.scan(topic, p)]
        for p in range(PARTS)
    ]


def test_epoch_and_poll_sizes_change_no_byte(tmp_path: Path) -> None:
    results = []
    for n, (epoch, poll) in enumerate([(10_000, 5000), (37, 13), (500, 101)]):
        with unbundled.open(tmp_path / f"r{n}.db") as db:
            _produce(db, random.Random(7))
            streams.run(db, _flow(), until_end=True, epoch_records=epoch, poll_records=poll)
            results.append(_out(db))
            assert streams.run(db, _flow(), until_end=True).records_out == 0  # nothing twice
    assert results[0] == results[1] == results[2]
    assert sum(len(p) for p in results[0]) > 0


def test_reset_reruns_from_the_start_without_the_old_repartition_records(tmp_path: Path) -> None:
    with unbundled.open(tmp_path / "reset.db") as db:
        _produce(db, random.Random(3))
        streams.run(db, _flow(), until_end=True)
        before = _out(db)
        deleted, moved = streams.reset(db, "by-user")
        assert deleted > 0 and moved == 2 * PARTS  # the source's group and the repartition's
        streams.run(db, _flow(), until_end=True)
        after = _out(db)
        assert [a[len(b) :] for a, b in zip(after, before, strict=True)] == before


def test_a_value_msgpack_cannot_carry_fails_the_operator() -> None:
    flow = streams.Flow("odd")
    flow.source("x").map(lambda v: {1j}).key_by(lambda v: "k").to_topic("out")
    d = streams.TestDriver(flow)
    with pytest.raises(streams.OperatorFailed, match="msgpack"):
        d.send(1, ts=5)


def test_key_by_in_place_keeps_the_partition() -> None:
    flow = streams.Flow("inplace")
    counts = (
        flow.source("x").key_by(lambda v: v % 2, repartition=False).window(streams.Count(2)).count()
    )
    counts.to_topic("out")
    d = streams.TestDriver(flow, partitions=2)
    for i in range(4):
        d.send(i, ts=i, partition=i % 2)  # the evens in 0, the odds in 1
    assert sorted(o.key for o in d.output("out")) == [0, 1]
    assert flow.segments() == [0]
    assert _flow().segments() == [0, 1]
