"""Joins: stream-table by event time and stream-stream within a window.

Each is checked against a plain computation over the same events, and for
determinism: the same two logs fed in different interleavings, with
restarts in between, give the same outputs in the same order.
"""

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
from unbundled.errors import UsageError
from unbundled.log._core import partition_for_key
from unbundled.streams._flow import JOINS_MAX

Event = tuple[str, Any, int]  # (key, value, ts)


def _interleave(a: list[Any], b: list[Any], rnd: random.Random) -> list[Any]:
    out, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and rnd.random() < 0.5):
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out


def _drive(flow: streams.Flow, order: list[tuple[str, Event]], restarts: set[int]) -> Any:
    d = streams.TestDriver(flow)
    for n, (side, (key, value, ts)) in enumerate(order):
        if n in restarts:
            d.restart()
        if side == "s":
            d.send(value, key=key, ts=ts)
        else:
            d.send_table(value, key=key, ts=ts)
    d.advance(10**9)
    d.advance_table(10**9)
    return d.output("out"), d.late


def _events(rnd: random.Random, n: int, keys: int, disorder: int, base: int) -> list[Event]:
    return [
        (f"k{rnd.randrange(keys)}", base + i, 1000 + i * 10 - rnd.randint(0, disorder))
        for i in range(n)
    ]


def _table_oracle(stream: list[Event], table: list[Event]) -> list[tuple[str, Any, Any]]:
    """Each stream event with the row of its key at its time (inner join)."""
    out = []
    for key, value, ts in stream:
        rows = [(t, v) for k, v, t in table if k == key and t <= ts]
        if rows:
            out.append((key, value, max(rows, key=lambda r: r[0])[1]))
    return sorted(out, key=lambda r: (r[0], r[1]))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_stream_table_join_meets_the_row_as_of_each_event(seed: int) -> None:
    rnd = random.Random(seed)
    table = [(k, v, ts) for k, v, ts in _events(rnd, 40, 5, 0, 10_000)]
    table.sort(key=lambda e: e[2])  # a table in time order: no row is late
    stream = _events(rnd, 120, 6, 30, 0)
    flow = streams.Flow("tj", out_of_orderness_ms=30)
    flow.source("orders").join_table("users").to_topic("out")
    runs = [
        _drive(
            flow,
            _interleave([("s", e) for e in stream], [("t", e) for e in table], rnd),
            set(rnd.sample(range(160), 3)),
        )
        for _ in range(3)
    ]
    assert runs[0] == runs[1] == runs[2]  # whatever the read order and restarts
    out, late = runs[0]
    assert late == []
    got = sorted(((o.key, o.value[0], o.value[1]) for o in out), key=lambda r: (r[0], r[1]))
    assert got == _table_oracle(stream, table)
    assert [o.ts for o in out] == sorted(o.ts for o in out)  # released in event-time order


def test_left_join_passes_none_and_a_deleted_row_stops_matching() -> None:
    flow = streams.Flow("lj")
    flow.source("orders").join_table("users", lambda o, u: [o, u], how="left").to_topic("out")
    d = streams.TestDriver(flow)
    d.send_table({"name": "ann"}, key="u1", ts=10)
    d.send_table(None, key="u1", ts=30)  # deleted from 30 on
    for ts in (5, 20, 40):
        d.send(ts, key="u1", ts=ts)
    d.advance(1000)
    d.advance_table(1000)
    assert [o.value for o in d.output("out")] == [[5, None], [20, {"name": "ann"}], [40, None]]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), within=st.integers(0, 60))
def test_window_join_emits_each_pair_once(seed: int, within: int) -> None:
    rnd = random.Random(seed)
    left = _events(rnd, 80, 4, 40, 0)
    right = _events(rnd, 80, 4, 40, 1000)
    flow = streams.Flow("wj", out_of_orderness_ms=40)
    flow.source("clicks").join_window("views", within, out_of_orderness_ms=40).to_topic("out")
    runs = [
        _drive(
            flow,
            _interleave([("s", e) for e in left], [("t", e) for e in right], rnd),
            set(rnd.sample(range(160), 2)),
        )
        for _ in range(3)
    ]
    assert runs[0] == runs[1] == runs[2]
    out, late = runs[0]
    assert late == []
    expected = sorted(
        (k, a, b) for k, a, ta in left for k2, b, tb in right if k == k2 and abs(ta - tb) <= within
    )
    assert sorted((o.key, o.value[0], o.value[1]) for o in out) == expected


def test_a_side_later_than_its_watermark_goes_to_late() -> None:
    flow = streams.Flow("wl")
    flow.source("a").join_window("b", 10).to_topic("out")
    d = streams.TestDriver(flow)
    d.send(1, key="k", ts=100)
    d.send(2, key="k", ts=50)  # behind the source's watermark (100)
    d.send_table(3, key="k", ts=95)
    d.advance(1000)
    d.advance_table(1000)
    assert [o.value for o in d.late] == [2]
    assert [o.value for o in d.output("out")] == [[1, 3]]


def test_join_arguments_are_checked() -> None:
    flow = streams.Flow("bad")
    src = flow.source("a")
    with pytest.raises(UsageError, match="how"):
        src.join_table("t", how="outer")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="within_ms"):
        src.join_window("t", -1)
    joined = src.join_table("t")
    for n in range(1, JOINS_MAX):
        joined = joined.join_table(f"t{n}", how="left")
    with pytest.raises(UsageError, match=f"at most {JOINS_MAX} joins"):
        joined.join_window("u", 5)


def test_table_join_runs_over_a_compacted_topic(tmp_path: Path) -> None:
    with unbundled.open(tmp_path / "j.db") as db:
        db.log.create_topic("orders", 2)
        db.log.create_topic("users", 2, cleanup_policy="compact")
        db.log.create_topic("short", 3)
        enc = msgspec.json.encode
        for i in range(10):
            db.log.append("users", enc({"n": i}), key=f"u{i}".encode(), timestamp=1000)
        for i in range(60):
            db.log.append("orders", enc(i), key=f"u{i % 12}".encode(), timestamp=2000 + i)
        streams.heartbeat(db.log, "orders", now_ms=9000)
        streams.heartbeat(db.log, "users", now_ms=9000)
        flow = streams.Flow("enrich")
        flow.source("orders").join_table("users").to_topic("out")
        report = streams.run(db, flow, until_end=True)
        rows = [
            msgspec.json.decode(r.value or b"") for p in range(2) for r in db.log.scan("out", p)
        ]
        assert sorted(r[0] for r in rows) == [i for i in range(60) if i % 12 < 10]
        assert all(r[1] == {"n": r[0] % 12} for r in rows)
        assert report.records_out == len(rows)
        bad = streams.Flow("bad-parts")
        bad.source("short").join_table("users").to_topic("out2")
        with pytest.raises(UsageError, match="co-partitioned"):
            streams.run(db, bad, until_end=True)


def test_a_window_join_forgets_keys_that_went_quiet() -> None:
    flow = streams.Flow("quiet")
    flow.source("a").join_window("b", 10).to_topic("out")
    d = streams.TestDriver(flow)
    for i in range(200):  # every key seen once, 100 ms apart
        d.send(i, key=f"k{i}", ts=i * 100)
        d.send_table(-i, key=f"k{i}", ts=i * 100 + 5)
    d.advance(10**6)
    d.advance_table(10**6)
    assert len(d.output("out")) == 200
    kept = d.state()["wjoin#1"]
    assert len(kept) <= 20  # the keys of the last second or so, not all 200


# --- a join after a repartitioning key_by -------------------------------------------


def _orders(rnd: random.Random, n: int, users: int) -> list[tuple[str, dict[str, Any], int]]:
    """Orders keyed by their own id (so spread over partitions by it), each
    naming a user; times with some disorder."""
    return [
        (
            f"o{i}",
            {"order": i, "user": f"u{rnd.randrange(users)}"},
            1000 + i * 10 - rnd.randint(0, 30),
        )
        for i in range(n)
    ]


def _drive_keyed(
    d: streams.TestDriver, feed: list[tuple[str, Any]], parts: int, rnd: random.Random
) -> list[Any]:
    """Feed ``(side, event)`` pairs, each to the partition of its key: side
    ``"s"`` the source, else the joined topic of that name; two restarts at
    random; then every watermark to the end. The outputs come sorted: the
    driver lists what every downstream task emitted in one list, in the order
    it ran them (per task the order is fixed; the SQLite tests compare that)."""
    restarts = set(rnd.sample(range(len(feed)), 2))
    for n, (side, (key, value, ts)) in enumerate(feed):
        if n in restarts:
            d.restart()
        p = partition_for_key(key.encode(), parts)
        if side == "s":
            d.send(value, key=key, ts=ts, partition=p)
        else:
            d.send_table(value, key=key, ts=ts, partition=p, topic=side)
    d.advance(10**9)
    d.advance_table(10**9)
    return sorted(d.output("out"), key=repr)


def _by_user_flow(name: str) -> streams.Flow:
    flow = streams.Flow(name, out_of_orderness_ms=30)
    (
        flow.source("orders")
        .key_by(lambda v: v["user"])
        .join_table("users", lambda o, u: [o["order"], u["plan"]])
        .to_topic("out")
    )
    return flow


def _plans_oracle(orders: list[Any], table: list[Event]) -> list[tuple[str, int, str]]:
    out = []
    for _key, value, ts in orders:
        rows = [(t, v) for k, v, t in table if k == value["user"] and t <= ts]
        if rows:
            out.append((value["user"], value["order"], max(rows, key=lambda r: r[0])[1]["plan"]))
    return sorted(out)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_a_join_after_key_by_meets_the_rows_of_the_new_key(seed: int) -> None:
    """Orders spread by order id are re-keyed by user, then joined with the
    users table (partitioned by user, as the log partitions keyed records):
    the same rows as a plain computation, whatever the interleaving and restarts."""
    rnd = random.Random(seed)
    orders = _orders(rnd, 90, 6)
    table = sorted(
        ((f"u{rnd.randrange(6)}", {"plan": f"p{i}"}, 900 + i * 25) for i in range(30)),
        key=lambda e: e[2],
    )
    outs = []
    for _ in range(2):
        d = streams.TestDriver(_by_user_flow("kj"), partitions=3)
        order = _interleave([("s", e) for e in orders], [("users", e) for e in table], rnd)
        outs.append(_drive_keyed(d, order, 3, rnd))
    assert outs[0] == outs[1]
    got = sorted((o.key, o.value[0], o.value[1]) for o in outs[0])
    assert got == _plans_oracle(orders, table)


def test_a_join_after_key_by_runs_on_sqlite_as_in_the_driver(tmp_path: Path) -> None:
    rnd = random.Random(5)
    orders = _orders(rnd, 300, 20)
    table = [(f"u{i}", {"plan": f"p{i % 3}"}, 500) for i in range(18)]  # u18, u19: no row
    enc = msgspec.json.encode
    with unbundled.open(tmp_path / "kj.db") as db:
        db.log.create_topic("orders", 3)
        db.log.create_topic("users", 3, cleanup_policy="compact")
        db.log.append_batch(
            "users", [unbundled.Message(enc(v), k.encode(), timestamp=ts) for k, v, ts in table]
        )
        db.log.append_batch(
            "orders", [unbundled.Message(enc(v), k.encode(), timestamp=ts) for k, v, ts in orders]
        )
        streams.heartbeat(db.log, "orders", now_ms=10**7)
        streams.heartbeat(db.log, "users", now_ms=10**7)
        report = streams.run(db, _by_user_flow("kj"), until_end=True)
        got = sorted(
            (r.key.decode(), *msgspec.json.decode(r.value or b""))
            for p in range(3)
            for r in db.log.scan("out", p)
            if r.key is not None
        )
    assert got == [(u, o, plan) for u, o, plan in _plans_oracle(orders, table)]
    assert report.records_out >= len(got)
    assert report.records_in == len(orders) + len(table) + 6, "orders, rows and heartbeats"


def test_an_int_key_at_a_join_is_an_error_not_a_silent_miss() -> None:
    for shape in ("table", "window"):
        flow = streams.Flow(f"ik-{shape}")
        keyed = flow.source("orders").key_by(lambda v: v["n"])
        joined = keyed.join_table("t") if shape == "table" else keyed.join_window("t", 10)
        joined.to_topic("out")
        d = streams.TestDriver(flow)
        with pytest.raises(streams.OperatorFailed, match="is an int"):
            d.send({"n": 7}, key="x", ts=1)


def _load_kj(db: Any) -> None:
    rnd = random.Random(11)
    enc = msgspec.json.encode
    db.log.create_topic("orders", 3)
    db.log.create_topic("users", 3, cleanup_policy="compact")
    rows = [(f"u{i % 20}", {"plan": f"p{i}"}, 400 + i * 40) for i in range(60)]  # rows change
    db.log.append_batch(
        "users", [unbundled.Message(enc(v), k.encode(), timestamp=ts) for k, v, ts in rows]
    )
    db.log.append_batch(
        "orders",
        [unbundled.Message(enc(v), k.encode(), timestamp=ts) for k, v, ts in _orders(rnd, 400, 20)],
    )
    streams.heartbeat(db.log, "orders", now_ms=10**7)
    streams.heartbeat(db.log, "users", now_ms=10**7)


def _out_bytes(db: Any, parts: int = 3) -> list[list[tuple[Any, ...]]]:
    return [
        [(r.offset, r.key, r.value, r.timestamp) for r in db.log.scan("out", p)]
        for p in range(parts)
    ]


class _Stop(Exception):
    pass


def test_a_join_after_key_by_is_the_same_bytes_whatever_the_epochs_and_a_crash(
    tmp_path: Path,
) -> None:
    """Epoch and poll sizes change how the orders, the repartition topic and
    the table interleave; a run stopped by an error after its fifth epoch
    resumes with other sizes. Neither changes a byte of the output."""
    results = []
    for n, (epoch, poll) in enumerate([(10_000, 5000), (37, 13), (500, 101)]):
        with unbundled.open(tmp_path / f"kj{n}.db") as db:
            _load_kj(db)
            streams.run(
                db, _by_user_flow("kj"), until_end=True, epoch_records=epoch, poll_records=poll
            )
            results.append(_out_bytes(db))
            assert streams.run(db, _by_user_flow("kj"), until_end=True).records_out == 0
    with unbundled.open(tmp_path / "crash.db") as db:
        _load_kj(db)
        epochs = 0

        def stop_at_the_fifth(report: Any, tasks: Any) -> None:
            nonlocal epochs
            epochs += 1
            if epochs == 5:
                raise _Stop

        with pytest.raises(_Stop):
            streams.run(
                db,
                _by_user_flow("kj"),
                until_end=True,
                epoch_records=29,
                poll_records=17,
                on_epoch=stop_at_the_fifth,
            )
        streams.run(db, _by_user_flow("kj"), until_end=True, epoch_records=41, poll_records=23)
        results.append(_out_bytes(db))
    assert results[0] == results[1] == results[2] == results[3]
    assert sum(len(p) for p in results[0]) > 100


# --- several joins ------------------------------------------------------------------


def _with_price(order: dict[str, Any], product: dict[str, Any] | None) -> list[Any]:
    return [order["order"], order["plan"], None if product is None else product["price"]]


def _two_tables_flow(name: str) -> streams.Flow:
    """Orders joined with their user's row, re-keyed by product, joined with
    the product's row: two tables, one before and one after a key_by."""
    flow = streams.Flow(name, out_of_orderness_ms=30)
    (
        flow.source("orders")
        .join_table("users", lambda o, u: {**o, "plan": u["plan"]})
        .key_by(lambda v: v["product"])
        .join_table("products", _with_price, how="left")
        .to_topic("out")
    )
    return flow


def _two_tables_oracle(
    orders: list[Any], users: list[Event], products: list[Event]
) -> list[tuple[str, int, str, Any]]:
    def row(table: list[Event], key: str, ts: int) -> Any:
        rows = [(t, v) for k, v, t in table if k == key and t <= ts]
        return max(rows, key=lambda r: r[0])[1] if rows else None

    out = []
    for user, value, ts in orders:
        u = row(users, user, ts)
        if u is None:
            continue
        p = row(products, value["product"], ts)
        out.append((value["product"], value["order"], u["plan"], None if p is None else p["price"]))
    return sorted(out, key=repr)


def _two_tables_input(rnd: random.Random) -> tuple[list[Any], list[Event], list[Event]]:
    orders = [
        (f"u{rnd.randrange(5)}", {"order": i, "product": f"x{rnd.randrange(4)}"}, 1000 + i * 10)
        for i in range(80)
    ]
    users = sorted(
        ((f"u{rnd.randrange(5)}", {"plan": f"p{i}"}, 900 + i * 40) for i in range(20)),
        key=lambda e: e[2],
    )
    products = sorted(
        ((f"x{rnd.randrange(4)}", {"price": i}, 950 + i * 50) for i in range(15)),
        key=lambda e: e[2],
    )
    return orders, users, products


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_two_joins_meet_each_table_as_of_each_event(seed: int) -> None:
    rnd = random.Random(seed)
    orders, users, products = _two_tables_input(rnd)
    parts = 2
    outs = []
    for _ in range(2):
        d = streams.TestDriver(_two_tables_flow("tt"), partitions=parts)
        feed = _interleave(
            [("s", e) for e in orders],
            _interleave([("users", e) for e in users], [("products", e) for e in products], rnd),
            rnd,
        )
        outs.append(_drive_keyed(d, feed, parts, rnd))
    assert outs[0] == outs[1]
    got = sorted(((o.key, *o.value) for o in outs[0]), key=repr)
    assert got == _two_tables_oracle(orders, users, products)
    with pytest.raises(UsageError, match="name one"):
        streams.TestDriver(_two_tables_flow("tt")).send_table({}, key="u1")


def test_two_joins_on_sqlite_are_the_same_bytes_whatever_the_epochs(tmp_path: Path) -> None:
    orders, users, products = _two_tables_input(random.Random(3))
    enc = msgspec.json.encode
    results = []
    for n, (epoch, poll) in enumerate([(10_000, 5000), (7, 3)]):
        with unbundled.open(tmp_path / f"tt{n}.db") as db:
            db.log.create_topic("orders", 2)
            for name, rows in (("users", users), ("products", products)):
                db.log.create_topic(name, 2, cleanup_policy="compact")
                db.log.append_batch(
                    name, [unbundled.Message(enc(v), k.encode(), timestamp=ts) for k, v, ts in rows]
                )
                streams.heartbeat(db.log, name, now_ms=10**7)
            db.log.append_batch(
                "orders",
                [unbundled.Message(enc(v), k.encode(), timestamp=ts) for k, v, ts in orders],
            )
            streams.heartbeat(db.log, "orders", now_ms=10**7)
            flow = _two_tables_flow("tt")
            streams.run(db, flow, until_end=True, epoch_records=epoch, poll_records=poll)
            assert streams.run(db, flow, until_end=True).records_out == 0
            results.append(_out_bytes(db, 2))
    assert results[0] == results[1]
    got = sorted(
        ((r[1] or b"").decode(), *msgspec.json.decode(r[2] or b""))
        for part in results[0]
        for r in part
        if r[1] is not None
    )
    assert sorted(got, key=repr) == _two_tables_oracle(orders, users, products)
