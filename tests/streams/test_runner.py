"""``streams.run`` against real storage (``memory://`` and a SQLite file):
the output topics hold the batch oracle's answer; epochs of any size, a stop
half-way and a second run change none of their bytes; the table and
callback sinks; failures commit nothing. On PostgreSQL a flow writes the
same bytes as on memory:// (the server is needed for that test, and CI
fails without it, as everywhere)."""

from __future__ import annotations

import random
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import unbundled
from tests import matrix
from unbundled import limits, streams
from unbundled.database import Database
from unbundled.errors import NotSupported, UsageError
from unbundled.log._protocol import Message, Record
from unbundled.streams import (
    TIME_HEADER,
    Count,
    Flow,
    Hopping,
    OperatorFailed,
    Session,
    TestDriver,
    Tumbling,
)

from ._flows import AGGREGATE, END_OF_TIME, window_flow
from ._oracle import Event, batch_results
from .test_restart import running

PARTITIONS = 4
KEYS = [f"k{i}" for i in range(12)]


@pytest.fixture(params=["memory", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url = "memory://" if request.param == "memory" else str(tmp_path / "x.db")
    options: dict[str, Any] = {} if request.param == "memory" else {"sync": "off"}
    with unbundled.open(url, **options) as opened:
        yield opened


def produce(db: Database, seed: int, *, n: int = 300, ooo: int = 20, disorder: int = 0) -> None:
    """Keyed JSON events into the 4-partition topic ``in``: event ``i`` at
    ``i * 3 - jitter`` (jitter up to ``ooo``, plus up to ``disorder`` for
    one event in ten: late ones), three undecodable records, then a
    heartbeat at the end of time."""
    rng = random.Random(seed)
    db.log.create_topic("in", PARTITIONS, exist_ok=True)
    messages = []
    for i in range(n):
        jitter = rng.randint(0, ooo) + (rng.randint(0, disorder) if rng.random() < 0.1 else 0)
        ts = max(0, 100 + i * 3 - jitter)
        key = rng.choice(KEYS)
        messages.append(Message(msgspec.json.encode(rng.randint(-5, 20)), key.encode(), (), ts))
        if i % 100 == 50:
            messages.append(Message(b"{not json", key.encode(), (("h", b"1"),), ts))
    db.log.append_batch("in", messages)
    streams.heartbeat(db.log, "in", now_ms=END_OF_TIME)


Row = tuple[bytes | None, bytes | None, tuple[tuple[str, bytes], ...], int]


def read_topic(db: Database, topic: str) -> dict[int, list[Row]]:
    """Every record of ``topic`` per partition, as (key, value, headers, timestamp)."""
    if topic not in db.log.topics():
        return {}
    out: dict[int, list[Row]] = {}
    for p, end in sorted(db.log.end_offsets(topic).items()):
        records: list[Record] = []
        while len(records) < end:
            records += db.log.read(topic, p, len(records))
        out[p] = [(r.key, r.value, tuple(r.headers), r.timestamp) for r in records]
    return out


def input_events(db: Database) -> dict[int, list[Event]]:
    """The events of ``in`` per partition as the log holds them (heartbeats
    and undecodable records left out)."""
    out: dict[int, list[Event]] = {}
    for p, rows in read_topic(db, "in").items():
        out[p] = []
        for key, value, headers, ts in rows:
            if dict(headers).get(TIME_HEADER) is None and value != b"{not json":
                assert key is not None and value is not None
                out[p].append(Event(p, key.decode(), msgspec.json.decode(value), ts))
    return out


SPECS = [Tumbling(50, 7), Hopping(60, 20), Session(8)]


@pytest.mark.parametrize("spec", SPECS, ids=["tumbling", "hopping", "session"])
def test_run_writes_the_batch_answer(db: Database, spec: Any) -> None:
    produce(db, seed=1)
    agg = "max" if isinstance(spec, Session) else "reduce"
    report = streams.run(db, window_flow(spec, agg, 20), until_end=True, epoch_records=64)

    assert report.late == 0 and report.dead == 3
    events = input_events(db)
    assert report.records_in == sum(len(e) for e in events.values()) + 3 + PARTITIONS
    got = read_topic(db, "out")
    assert sorted(got) == list(range(PARTITIONS))  # as many partitions as the source
    for p, rows in got.items():
        expected = batch_results(events[p], spec, agg)
        assert [(k, msgspec.json.decode(v or b""), ts) for k, v, _h, ts in rows] == [
            (r.key.encode(), msgspec.to_builtins(r), r.end - 1) for r in expected
        ]
    dead = [row for rows in read_topic(db, "f.dead").values() for row in rows]
    assert [v for _k, v, _h, _t in dead] == [b"{not json"] * 3
    for _k, _v, headers, _t in dead:
        assert dict(headers)["h"] == b"1"
        assert dict(headers)["unbundled.error"].startswith(b"DecodeError")


def busy_flow(name: str, calls: list[tuple[Any, Any, int]]) -> Flow:
    """Early, on-time and late results, a late side topic, per-key state,
    a count window and a callback: everything an epoch stores."""
    flow = Flow(name, out_of_orderness_ms=10)
    src = flow.source("in")
    windows = src.window(Tumbling(40), allowed_lateness_ms=30, early_every_ms=7).collect()
    windows.to_topic(f"{name}.w").late.map(lambda v: [v]).to_topic(f"{name}.late-out")
    src.window(Session(6), allowed_lateness_ms=15).reduce(max).to_topic(f"{name}.s")
    src.map_with_state(running, init=lambda: [0, 0]).to_topic(f"{name}.state")
    AGGREGATE["reduce"](src.window(Count(4))).to_topic(f"{name}.c")
    src.key_by(lambda v: v % 3).window(Hopping(30, 10)).sum().to_callback(
        lambda key, value, ts: calls.append((key, value, ts))
    )
    return flow


OUTPUTS = ("w", "late-out", "s", "state", "c", "dead")


def outputs(db: Database, name: str) -> dict[str, dict[int, list[Row]]]:
    return {t: read_topic(db, f"{name}.{t}") for t in OUTPUTS}


def called(calls: list[tuple[Any, Any, int]]) -> list[str]:
    """The callbacks as a multiset: every partition has windows for each
    re-keyed key, and how their calls interleave depends on the epochs."""
    return sorted(map(repr, calls))


def test_epochs_change_no_byte(db: Database) -> None:
    produce(db, seed=2, disorder=80)
    calls: dict[str, list[tuple[Any, Any, int]]] = {"a": [], "b": [], "c": []}
    ra = streams.run(db, busy_flow("a", calls["a"]), until_end=True)
    rb = streams.run(
        db, busy_flow("b", calls["b"]), until_end=True, epoch_records=1, poll_records=3
    )
    rc = streams.run(
        db, busy_flow("c", calls["c"]), until_end=True, epoch_records=17, poll_records=5
    )

    assert ra.epochs < rc.epochs < rb.epochs
    assert ra.late > 0 and ra.dead == 3  # the input has late and dead records to compare
    assert (ra.late, ra.dead, ra.records_in) == (rb.late, rb.dead, rb.records_in)
    a = outputs(db, "a")
    assert all(a[t] for t in OUTPUTS), {t: bool(a[t]) for t in OUTPUTS}
    assert outputs(db, "b") == a
    assert outputs(db, "c") == a
    assert called(calls["a"]) == called(calls["b"]) == called(calls["c"])
    assert calls["a"]

    again = streams.run(db, busy_flow("b", calls["b"]), until_end=True, epoch_records=3)
    assert (again.records_in, again.records_out, again.epochs) == (0, 0, 0)
    assert outputs(db, "b") == a


def test_memory_and_sqlite_write_the_same_bytes(tmp_path: Path) -> None:
    got = []
    for url in ("memory://", str(tmp_path / "same.db")):
        with unbundled.open(url) as db:
            produce(db, seed=8, disorder=80)
            streams.run(db, busy_flow("same", []), until_end=True, epoch_records=30)
            got.append(outputs(db, "same"))
    assert got[0] == got[1]
    assert all(got[0][t] for t in OUTPUTS)


def test_a_stopped_run_goes_on_where_it_stopped(db: Database) -> None:
    produce(db, seed=3, disorder=80)
    whole = streams.run(db, busy_flow("whole", []), until_end=True, epoch_records=50)

    stop = threading.Event()

    def after_three(report: streams.RunReport, tasks: Any) -> None:
        if report.epochs == 3:
            stop.set()

    flow = busy_flow("parts", [])
    first = streams.run(
        db, flow, until_end=True, epoch_records=20, poll_records=20, stop=stop, on_epoch=after_three
    )
    assert first.epochs == 3 and 0 < first.records_in < whole.records_in
    second = streams.run(db, flow, until_end=True, epoch_records=1000, poll_records=7)
    assert first.records_in + second.records_in == whole.records_in
    assert outputs(db, "parts") == outputs(db, "whole")


def test_table_sink_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    with unbundled.open(path, sync="off") as db:
        produce(db, seed=4)
        flow = Flow("t", out_of_orderness_ms=20)
        windows = flow.source("in").window(Tumbling(50), early_every_ms=9)
        windows.sum().to_table("sums")  # early results upserted, then the on-time one
        streams.run(db, flow, until_end=True, epoch_records=40, poll_records=40)
        events = [e for es in input_events(db).values() for e in es]
    expected = {
        (r.key, r.start, r.end): (r.value, r.end - 1)
        for r in batch_results(events, Tumbling(50), "sum")
    }
    with sqlite3.connect(path) as conn:
        rows = conn.execute('SELECT key, start, "end", value, ts FROM sums').fetchall()
    assert {(k, s, e): (msgspec.json.decode(v), ts) for k, s, e, v, ts in rows} == expected


def test_a_value_its_table_cannot_hold_fails_the_epoch_naming_the_sink(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    with unbundled.open(path, sync="off") as db:
        db.log.create_topic("one", 1)
        db.log.append_batch("one", [msgspec.json.encode(v) for v in [1, 2, 3, 13, 4]])
        flow = Flow("t")
        flow.source("one").map(lambda v: object() if v == 13 else v).to_table("rows")
        with pytest.raises(OperatorFailed, match="is not JSON") as caught:
            streams.run(db, flow, until_end=True, epoch_records=1, poll_records=1)
        assert caught.value.details["node"].startswith("sink#")
        with pytest.raises(OperatorFailed, match="is not JSON"):
            TestDriver(flow).send(13, ts=1)  # the test driver refuses it too
    with sqlite3.connect(path) as conn:  # one row (no key): the epochs before it committed
        assert conn.execute("SELECT value FROM rows").fetchall() == [("3",)]


def test_a_raising_callback_is_operator_failed(db: Database) -> None:
    """After its epoch committed (callbacks are at least once), but typed and
    naming the sink, as any function of the flow that raises."""
    db.log.create_topic("one", 1)
    db.log.append_batch("one", [msgspec.json.encode(v) for v in [1, 2]])
    flow = Flow("cb")
    flow.source("one").to_callback(lambda key, value, ts: 1 // (value - 2))
    with pytest.raises(OperatorFailed, match="ZeroDivisionError") as caught:
        streams.run(db, flow, until_end=True)
    assert caught.value.details["node"].startswith("sink#")


def test_table_sink_needs_sql_transactions() -> None:
    with unbundled.open("memory://") as db:
        produce(db, seed=5, n=20)
        flow = Flow("t")
        flow.source("in").to_table("rows")
        with pytest.raises(NotSupported, match="SQL"):
            streams.run(db, flow, until_end=True)
        assert db.kv.read("streams/t/0/m") is None  # the failed epoch stored nothing


def test_a_raising_function_commits_nothing_of_its_epoch(db: Database) -> None:
    db.log.create_topic("one", 1)
    db.log.append_batch("one", [msgspec.json.encode(v) for v in [1, 2, 3, 13, 4]])
    flow = Flow("boom")
    flow.source("one").map(lambda v: 100 // (v - 13)).to_topic("out")
    for _ in range(2):  # a restart meets the same record again
        with pytest.raises(OperatorFailed, match="ZeroDivisionError"):
            streams.run(db, flow, until_end=True, epoch_records=1, poll_records=1)
        values = [msgspec.json.decode(v or b"") for _k, v, _h, _t in read_topic(db, "out")[0]]
        assert values == [100 // (v - 13) for v in [1, 2, 3]]


@pytest.mark.parametrize(
    ("encode", "out", "why"),
    [
        ("json", lambda v: object() if v == 13 else v, "is not JSON"),
        ("raw", lambda v: str(v).encode() if v != 13 else "13", 'encode="raw" needs bytes'),
        (lambda v: 7 if v == 13 else b"ok", lambda v: v, "must return bytes"),
    ],
    ids=["json", "raw", "function"],
)
def test_a_value_its_sink_cannot_encode_fails_the_epoch_naming_the_sink(
    db: Database, encode: Any, out: Callable[[Any], Any], why: str
) -> None:
    """Not a driver's TypeError escaping the run: OperatorFailed naming the
    sink and the value, and nothing of the epoch committed."""
    db.log.create_topic("one", 1)
    db.log.append_batch("one", [msgspec.json.encode(v) for v in [1, 2, 3, 13, 4]])
    flow = Flow("enc")
    flow.source("one").map(out).to_topic("out", encode=encode)
    for _ in range(2):  # a restart meets the same record again
        with pytest.raises(OperatorFailed, match=why) as caught:
            streams.run(db, flow, until_end=True, epoch_records=1, poll_records=1)
        assert caught.value.details["node"].startswith("sink#")
        assert len(read_topic(db, "out")[0]) == 3  # the three epochs before it
    driver = TestDriver(flow)  # the test driver refuses it the same way
    with pytest.raises(OperatorFailed, match=why):
        for v in [1, 13]:
            driver.send(v, key="a", ts=v)


def test_a_changed_flow_cannot_resume_old_state(db: Database) -> None:
    produce(db, seed=6, n=30)
    streams.run(db, window_flow(Tumbling(10), "count", name="x"), until_end=True)
    with pytest.raises(UsageError, match="different flow"):
        streams.run(db, window_flow(Tumbling(20), "count", name="x"), until_end=True)
    streams.run(db, window_flow(Tumbling(10), "count", name="x"), until_end=True)  # same: fine


def test_run_arguments(db: Database) -> None:
    produce(db, seed=7, n=5)
    flow = window_flow(Tumbling(10), "count")
    bad: Any
    for name, bad in [
        ("epoch_records", 0),
        ("epoch_records", True),
        ("epoch_records", limits.stream_epoch_records_max + 1),
        ("poll_records", 0),
        ("poll_records", 2.0),
        ("epoch_event_ms", 0),
        ("epoch_event_ms", True),
        ("epoch_interval_s", 0),
        ("epoch_interval_s", True),
    ]:
        with pytest.raises(UsageError, match=name) as caught:
            streams.run(db, flow, until_end=True, **{name: bad})
        assert repr(bad) in str(caught.value)
    assert db.log.groups() == []  # nothing ran
    with pytest.raises(UsageError, match="no source"):
        streams.run(db, Flow("empty"), until_end=True)
    for ms in (-1, END_OF_TIME + 1):
        with pytest.raises(UsageError) as caught:
            streams.heartbeat(db.log, "in", now_ms=ms)
        assert str(ms) in str(caught.value)


@pytest.mark.postgres
def test_a_windowed_flow_on_postgres(tmp_path: Path) -> None:
    """The same flow on PostgreSQL writes the bytes it writes on memory://:
    state in the key-value store, outputs and offsets in one transaction."""
    with unbundled.open("memory://") as db:
        produce(db, seed=1, n=120)
        streams.run(db, window_flow(Tumbling(50, 7), "reduce", 20), until_end=True)
        expected = read_topic(db, "out")
    with matrix.isolated("postgres", tmp_path) as url, unbundled.open(url, sync="off") as db:
        produce(db, seed=1, n=120)
        flow = window_flow(Tumbling(50, 7), "reduce", 20)
        report = streams.run(db, flow, until_end=True, epoch_records=16, poll_records=16)
        assert report.dead == 1 and report.epochs > 1
        assert read_topic(db, "out") == expected and any(expected.values())
        again = streams.run(db, flow, until_end=True)  # resumes at the committed offsets
        assert (again.records_in, again.records_out) == (0, 0)


@pytest.mark.postgres
def test_table_sink_on_postgres(tmp_path: Path) -> None:
    """The table sink's SQL runs in the epoch's PostgreSQL transaction (in
    the connection's default schema, as any ``tx.sql``)."""
    import psycopg

    table = f"sums_{uuid.uuid4().hex[:12]}"
    with matrix.isolated("postgres", tmp_path) as url, unbundled.open(url, sync="off") as db:
        produce(db, seed=4, n=100)
        flow = Flow("t", out_of_orderness_ms=20)
        flow.source("in").window(Tumbling(50), early_every_ms=9).sum().to_table(table)
        streams.run(db, flow, until_end=True, epoch_records=40, poll_records=40)
        events = [e for es in input_events(db).values() for e in es]
        with psycopg.connect(url.partition("?")[0], autocommit=True) as conn:
            try:
                rows = conn.execute(f'SELECT key, start, "end", value, ts FROM {table}').fetchall()
            finally:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
    expected = {
        (r.key, r.start, r.end): (r.value, r.end - 1)
        for r in batch_results(events, Tumbling(50), "sum")
    }
    assert {(k, s, e): (msgspec.json.decode(v), ts) for k, s, e, v, ts in rows} == expected


def test_a_rebalance_before_the_first_epoch_loses_no_record(tmp_path: Path) -> None:
    """A worker that read records of a partition and committed no epoch yet
    sees its assignment change (another worker joins, then leaves): the
    partition's task starts again from the group's offset (none: the
    partition's start), not from where the consumer had read to. It used to
    start there, and the records before were never processed (found by the
    SIGKILL test under load: a worker's first records of a partition missing)."""
    from unbundled.streams._runner import Runner
    from unbundled.streams._store import group_name

    flow = Flow("rb")
    flow.source("clicks").map_with_state(lambda n, v: (n + 1, n + 1), init=int).to_topic("out")
    with unbundled.open(tmp_path / "rb.db") as db:
        db.log.create_topic("clicks", 2)
        db.log.append_batch("clicks", [Message(b"1", partition=i % 2) for i in range(40)])
        runner = Runner(
            db,
            flow,
            instance_id=None,
            epoch_records=10_000,
            epoch_event_ms=None,
            epoch_interval_s=60.0,
            poll_records=5,
            lease_ms=10_000,
        )
        try:
            runner.step(0.5)  # records read and fed, no epoch committed
            assert runner.pending > 0 and runner.report.epochs == 0
            other = db.log.consumer("clicks", group=group_name(flow), auto_commit=False)
            other.poll(0.5)  # joins: the partitions are split
            runner.step(0.5)
            other.close()  # leaves: they come back
            ends = {(0, p): end for p, end in db.log.end_offsets("clicks").items()}
            for _ in range(100):
                runner.step(0.2)
                if runner.done(ends) and len(runner.tasks) == 2:
                    break
            runner.commit()
        finally:
            runner.close()
        outs = [[r.value for r in db.log.scan("out", p)] for p in range(2)]
    assert outs == [[str(n).encode() for n in range(1, 21)]] * 2, "each partition counted 1..20"
