"""Heartbeats: the application's clock, written into the log.

A partition that receives nothing holds its windows open -- and, behind a
repartitioning key_by, everyone's. ``run(..., heartbeat_s=...)`` appends the
wall clock's time to the worker's partitions; a merge that waits too long
for a silent partition says which one, instead of growing without bound.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

import unbundled
from unbundled import limits, streams
from unbundled.errors import LimitExceeded, UsageError
from unbundled.log import Message


def _flow() -> streams.Flow:
    flow = streams.Flow("beats", out_of_orderness_ms=100, watermark_every_ms=100)
    per_user = flow.source("clicks").key_by(lambda v: v["user"]).window(streams.Tumbling(1000))
    per_user.count().to_topic("counts")
    return flow


def _produce(db: Any, now: int) -> None:
    db.log.create_topic("clicks", 2)  # partition 1 stays silent
    msgs = [
        Message(msgspec.json.encode({"user": f"u{i % 3}"}), partition=0, timestamp=now - 5000 + i)
        for i in range(30)
    ]
    db.log.append_batch("clicks", msgs)


def _counts(db: Any) -> int:
    return sum(
        msgspec.json.decode(r.value or b"")["value"]
        for p in range(2)
        for r in db.log.scan("counts", p)
    )


def test_without_heartbeats_a_silent_partition_holds_the_windows(tmp_path: Path) -> None:
    with unbundled.open(tmp_path / "h.db") as db:
        _produce(db, int(time.time() * 1000))
        streams.run(db, _flow(), until_end=True)
        assert _counts(db) == 0  # nothing closes: partition 1 never said how late it is


def test_heartbeat_s_closes_them(tmp_path: Path) -> None:
    with unbundled.open(tmp_path / "h.db") as db:
        _produce(db, int(time.time() * 1000))
        stop = threading.Event()
        done = threading.Timer(1.0, stop.set)
        done.start()
        report = streams.run(db, _flow(), stop=stop, heartbeat_s=0.05)
        done.cancel()
        assert _counts(db) == 30  # every window closed, every click counted once
        assert report.late == 0
        beats = [r for r in db.log.scan("clicks", 1) if r.headers]
        assert beats and all(h[0][0] == streams.TIME_HEADER for h in (r.headers for r in beats))


def test_heartbeat_arguments(tmp_path: Path) -> None:
    with unbundled.open(tmp_path / "h.db") as db:
        _produce(db, 10_000)
        for bad in (0, -1, True, "1"):
            with pytest.raises(UsageError, match="heartbeat_s"):
                streams.run(db, _flow(), heartbeat_s=bad)  # type: ignore[arg-type]
        with pytest.raises(UsageError, match=r"partitions 0\.\.1"):
            streams.heartbeat(db.log, "clicks", 20_000, partitions=[2])
        streams.heartbeat(db.log, "clicks", 20_000, partitions=[1])
        assert [r.timestamp for r in db.log.scan("clicks", 1)] == [20_000]


def test_a_merge_waiting_too_long_names_the_silent_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "stream_merge_items_max", 10)
    with unbundled.open(tmp_path / "h.db") as db:
        _produce(db, 10_000)
        with pytest.raises(LimitExceeded, match="upstream partition 1's watermark"):
            streams.run(db, _flow(), until_end=True, poll_records=7)
