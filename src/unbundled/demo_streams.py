"""The stream-processing part of ``make demo``: windowed counts that stay right
through crashes.

Clicks of 40 users arrive in a 4-partition topic, out of order (a few far too
late). A flow re-keys them by user (through the log: a user's clicks come from
every partition) and counts them per user and second of event time; late clicks
go to a side topic. It runs twice on copies of the same log:

1. once, uninterrupted, in this process: the reference;
2. in a worker process that is SIGKILLed at random moments -- mid-epoch, or
   while it commits -- and restarted each time, then finished here.

Then: the crashed run's output topic equals the reference byte for byte, every
window holds what a plain count over the clicks gives, and every click is
either counted once or in the late topic. Nothing depends on timing or crashes.

The worker runs ``python -m unbundled.demo_streams worker DB``.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.markup import escape

from . import streams
from .database import open as open_database
from .demo_events import Check, report_checks
from .errors import Error
from .log import Message

SOURCE = "clicks"
OUTPUT = "clicks.per-user"
NAME = "clicks-per-user"
PARTITIONS = 4
USERS = 40
CLICKS = 6000
WINDOW_MS = 1000
BOUND_MS = 300  # out_of_orderness_ms: clicks later than this are late
START_MS = 1_700_000_000_000
KILLS = 4
WAIT_S = 60.0


def flow() -> streams.Flow:
    f = streams.Flow(NAME, out_of_orderness_ms=BOUND_MS, watermark_every_ms=100)
    per_user = f.source(SOURCE).key_by(lambda click: click["user"])
    per_user.window(streams.Tumbling(WINDOW_MS)).count().to_topic(OUTPUT)
    return f


def clicks(seed: int = 5) -> list[tuple[int, str, int]]:
    """(partition, user, event time): mostly in order, 2% far too late."""
    rng = random.Random(seed)
    out = []
    for i in range(CLICKS):
        late = rng.random() < 0.02
        ts = START_MS + i * 2 - (rng.randint(2000, 4000) if late else rng.randint(0, BOUND_MS))
        out.append((rng.randrange(PARTITIONS), f"user-{rng.randrange(USERS)}", ts))
    return out


def _produce(path: Path, data: list[tuple[int, str, int]]) -> None:
    with open_database(path) as db:
        db.log.create_topic(SOURCE, PARTITIONS)
        msgs = [Message(msgspec.json.encode({"user": u}), None, (), ts, p) for p, u, ts in data]
        db.log.append_batch(SOURCE, msgs)
        streams.heartbeat(db.log, SOURCE, now_ms=max(ts for _p, _u, ts in data) + 60_000)


def _outputs(path: Path, topic: str) -> list[list[tuple[Any, ...]]]:
    with open_database(path) as db:
        if topic not in db.log.topics():
            return []
        return [
            [(r.key, r.value, r.headers, r.timestamp) for r in db.log.scan(topic, p)]
            for p in sorted(db.log.end_offsets(topic))
        ]


def _committed(path: Path) -> int:
    with open_database(path) as db:
        if f"streams.{NAME}" not in db.log.groups():
            return 0
        return sum(c or 0 for c, _end, _lag in db.log.lag(f"streams.{NAME}").values())


def _committed_so_far(path: Path, last: int) -> int:
    """``_committed``, or ``last`` if the file is busy: the demo looks while
    it SIGKILLs the worker, and a look that meets a lock is not a failure."""
    try:
        return _committed(path)
    except Error:
        return last


def _crashes(path: Path, console: Console) -> int:
    """Start the worker, SIGKILL it at KILLS random points; return the kills."""
    rng = random.Random(11)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    kills = 0
    for k in range(KILLS):
        target = (k + rng.random()) * CLICKS / (KILLS + 1)
        proc = subprocess.Popen(
            [sys.executable, "-m", "unbundled.demo_streams", "worker", str(path)], env=env
        )
        try:
            deadline = time.monotonic() + WAIT_S
            seen = 0
            while (seen := _committed_so_far(path, seen)) < target and proc.poll() is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the worker made no progress in {WAIT_S:.0f} s "
                        f"({seen:,} of {target:,.0f} clicks committed)"
                    )
                time.sleep(0.02)
            time.sleep(rng.random() * 0.05)  # anywhere: mid-epoch or inside a commit
        finally:
            proc.kill()
            proc.wait()
        kills += 1
        console.print(f"  worker SIGKILLed after {_committed(path):,} clicks committed")
    return kills


def run_streams_demo(console: Console, workdir: Path) -> bool:
    """Run the demo in ``workdir``; True if every check passed."""
    workdir.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]unbundled demo: stream processing, exactly once, whatever crashes")
    try:
        checks = _demo(console, workdir)
    except (Error, TimeoutError) as exc:
        console.print(f"[red]streams demo: failed: {escape(str(exc))}")
        return False
    return report_checks(console, "stream-processing demo", checks)


def _demo(console: Console, workdir: Path) -> list[Check]:
    data = clicks()
    ref, crashed = workdir / "reference.db", workdir / "crashed.db"
    _produce(ref, data)
    shutil.copy(ref, crashed)
    with open_database(ref) as db:
        streams.run(db, flow(), until_end=True)
    kills = _crashes(crashed, console)
    with open_database(crashed) as db:
        streams.run(db, flow(), until_end=True)
    same = _outputs(crashed, OUTPUT) == _outputs(ref, OUTPUT)
    same_late = _outputs(crashed, f"{NAME}.late") == _outputs(ref, f"{NAME}.late")
    counted: dict[tuple[str, int], int] = {}
    for part in _outputs(crashed, OUTPUT):
        for _key, value, _headers, _ts in part:
            window = msgspec.json.decode(value or b"{}")
            counted[(window["key"], window["start"])] = window["value"]
    late_windows: dict[tuple[str, int], int] = {}
    for part in _outputs(crashed, f"{NAME}.late"):
        for key, _value, _headers, ts in part:
            window = ((key or b"").decode(), ts - ts % WINDOW_MS)
            late_windows[window] = late_windows.get(window, 0) + 1
    late = sum(late_windows.values())
    batch: dict[tuple[str, int], int] = {}
    for _p, user, ts in data:
        batch[(user, ts - ts % WINDOW_MS)] = batch.get((user, ts - ts % WINDOW_MS), 0) + 1
    exact = all(counted.get(w, 0) + late_windows.get(w, 0) == n for w, n in batch.items()) and set(
        counted
    ) <= set(batch)
    results = sum(len(p) for p in _outputs(crashed, OUTPUT))
    return [
        ("the worker was SIGKILLed and restarted", kills == KILLS, f"{kills} kills"),
        (
            "output byte-identical to an uninterrupted run",
            same and same_late,
            f"{results:,} window results and {late} late clicks, partition by partition",
        ),
        (
            "every window = a batch count, but for its late clicks",
            exact,
            f"{len(batch):,} windows of {USERS} users; {sum(counted.values()):,} counted + "
            f"{late} late = {len(data):,} clicks",
        ),
    ]


def _worker(path: str) -> None:
    """Run the flow forever in small epochs (the process the demo kills)."""
    with open_database(path) as db:
        streams.run(db, flow(), instance_id="demo-worker", epoch_records=100, poll_records=50)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        _worker(sys.argv[2])
