"""A run stopped by its stop event keeps what it did: the work since the
last epoch commits before run() returns, and a later run starts after it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import msgspec

import unbundled
from unbundled import streams


def test_a_stopped_run_commits_what_it_did(tmp_path: Path) -> None:
    stop = threading.Event()
    seen: list[Any] = []

    def note(v: Any) -> Any:
        seen.append(v)
        if len(seen) == 50:
            stop.set()  # mid-batch: the run ends after this poll
        return v

    with unbundled.open(tmp_path / "s.db") as db:
        db.log.create_topic("x", 1)
        db.log.append_batch("x", [msgspec.json.encode(i) for i in range(500)])
        flow = streams.Flow("stoppable")
        flow.source("x").map(note).to_topic("out")
        report = streams.run(db, flow, stop=stop, epoch_records=10_000, poll_records=100)
        assert report.epochs == 1 and report.records_in == 100  # the poll in hand, committed
        assert [r.value for r in db.log.scan("out")] == [msgspec.json.encode(i) for i in range(100)]
        rest = streams.run(db, flow, until_end=True)
        assert rest.records_in == 400  # nothing redone
        assert len(list(db.log.scan("out"))) == 500
