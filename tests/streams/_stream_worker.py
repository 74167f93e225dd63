"""The flow, the workload and the worker of the stream crash tests
(tests/streams/test_streams_crash.py).

The flow and the workload live here so that the worker processes and the
test's in-process reference run build exactly the same ones.

Run as ``python -m tests.streams._stream_worker <db> <instance> <epoch_records>
<poll_records> <lease_ms> <mode> <die>`` from the repository root (with
``PYTHONPATH`` naming the ``src`` to test). It opens ``<db>`` (a SQLite file
or a PostgreSQL URL), says ``ready``, runs :func:`unbundled.streams.run` on
:func:`build_flow` and says ``epoch <n>`` after each epoch it committed. ``instance`` is the static
member's instance id, or ``-`` for a dynamic member (which leaves the group
when it stops). ``mode`` is ``end`` (stop at the input's end, then say
``done``) or ``forever`` (until SIGTERM, which sets the ``stop`` event: a
clean stop). ``die`` is ``none`` or ``<moment>:<n>``: at its ``n``-th epoch
commit the worker kills itself with SIGKILL

- ``before``: the transaction is built, nothing was sent;
- ``inside``: inside the database's transaction, after the epoch's records,
  offsets and state were written and before COMMIT (a ``tx.sql`` part runs
  last in the writer's transaction);
- ``during``: from a timer thread, a random fraction of a typical commit's
  duration after the commit started (lands in the writer at any point);
- ``after``: as soon as ``tx.commit()`` returned, before the runner's
  bookkeeping and the next poll.
"""

from __future__ import annotations

import faulthandler
import os
import random
import signal
import sys
import threading
import time
import zlib
from typing import Any

import unbundled
from tests.crash._children import exit_with_parent, guarded, say
from unbundled import streams
from unbundled.log._protocol import Message

FLOW = "sc"
SOURCE = "sc.in"
PARTITIONS = 4
KEYS = 24
OOO_MS = 200  # the bound of the disorder: out_of_orderness_ms
TUMBLE_MS = 1000
LATENESS_MS = 500
EARLY_MS = 250
GAP_MS = 150
SESSION_LATENESS_MS = 100
COUNTS, LATE_COUNTS, SESSIONS, TOTALS = "sc.counts", "sc.late_counts", "sc.sessions", "sc.totals"
#: Every topic the flow writes; "sc.late" is the default side output (the session's late events).
OUTPUTS = (COUNTS, LATE_COUNTS, SESSIONS, TOTALS, "sc.late")
END_MS = 10**9  # the final heartbeat's event time: every window closes and is purged


def running_total(state: int, value: dict[str, int]) -> tuple[int, dict[str, int]]:
    total = state + value["v"]
    return total, {"n": value["n"], "total": total}


def build_flow() -> streams.Flow:
    """Tumbling counts (allowed lateness, early results; late events to a
    topic), sessions collecting event numbers (late events to the default
    ``sc.late``), and a running total per key."""
    flow = streams.Flow(FLOW, out_of_orderness_ms=OOO_MS)
    events = flow.source(SOURCE)
    counts = events.window(
        streams.Tumbling(TUMBLE_MS), allowed_lateness_ms=LATENESS_MS, early_every_ms=EARLY_MS
    ).count()
    counts.to_topic(COUNTS)
    counts.late.to_topic(LATE_COUNTS)
    numbers = events.map(lambda v: v["n"])
    numbers.window(
        streams.Session(GAP_MS), allowed_lateness_ms=SESSION_LATENESS_MS
    ).collect().to_topic(SESSIONS)
    events.map_with_state(running_total, init=int).to_topic(TOTALS)
    return flow


def partition_of(key: str) -> int:
    return zlib.crc32(key.encode()) % PARTITIONS


def workload(seed: int, count: int) -> list[Message]:
    """``count`` keyed JSON events ``{"n", "v"}`` with explicit partitions
    and event times: a clock moving 0-6 ms per event, each event behind it
    by 0..OOO_MS (on time), and about 3 % of them much further behind (late
    for a window, or corrections within the allowed lateness). The same seed
    gives the same records at the same offsets."""
    rng = random.Random(seed)
    now = 1_000_000
    out = []
    for n in range(count):
        now += rng.randint(0, 6)
        key = f"k{rng.randrange(KEYS)}"
        behind = rng.randint(0, OOO_MS)
        if rng.random() < 0.03:
            behind = rng.randint(OOO_MS, OOO_MS + 3 * TUMBLE_MS)
        value = b'{"n":%d,"v":%d}' % (n, rng.randint(-50, 100))
        out.append(Message(value, key.encode(), (), now - behind, partition_of(key)))
    return out


def populate(log: Any, messages: list[Message], *, end: bool = True) -> None:
    """Append ``messages`` to the source topic (created if missing) and,
    with ``end``, the final heartbeat that closes every window."""
    if SOURCE not in log.topics():
        log.create_topic(SOURCE, PARTITIONS)
    for i in range(0, len(messages), 500):
        log.append_batch(SOURCE, messages[i : i + 500])
    if end:
        streams.heartbeat(log, SOURCE, END_MS)


Dump = dict[tuple[str, int], list[tuple[int, bytes | None, bytes | None, Any, int]]]


def dump(log: Any) -> Dump:
    """Every record of every output partition: (offset, key, value, headers, timestamp)."""
    out: Dump = {}
    topics = set(log.topics())
    for topic in OUTPUTS:
        if topic not in topics:
            continue
        for p in range(len(log.describe_topic(topic).partitions)):
            out[(topic, p)] = [
                (r.offset, r.key, r.value, tuple(r.headers), r.timestamp)
                for r in log.scan(topic, p)
            ]
    return out


# --- the worker process ------------------------------------------------------------------


def arm(db: Any, die: str, lease_s: float) -> None:
    """Wrap ``db.transaction`` so the ``n``-th epoch commit kills the process
    at the moment ``die`` names (see the module docstring)."""
    if die == "none":
        return
    moment, _, nth = die.partition(":")
    assert moment in ("before", "inside", "during", "after", "stall"), die
    target = int(nth)
    commits = 0
    durations: list[float] = []
    new_transaction = db.transaction

    def die_now(*_: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    # The killer of "during" is started now and waits, so that at the commit
    # only the delay separates it from the kill (starting a thread takes longer).
    go = threading.Event()
    delay: list[float] = []

    def killer() -> None:
        go.wait()
        time.sleep(delay[0])
        die_now()

    if moment == "during":
        threading.Thread(target=killer, daemon=True).start()

    def transaction() -> Any:
        tx = new_transaction()
        commit = tx.commit

        def commit_or_die() -> Any:
            nonlocal commits
            commits += 1
            if commits == target:
                if moment == "before":
                    die_now()
                elif moment == "stall":  # a zombie: paused past its lease, then goes on
                    say("stalling")
                    time.sleep(3 * lease_s)
                elif moment == "inside":
                    tx.sql(die_now)
                elif moment == "during":
                    typical = sorted(durations)[len(durations) // 2] if durations else 0.001
                    delay.append(random.uniform(0.0, typical))
                    go.set()
            started = time.monotonic()
            result = commit()
            durations.append(time.monotonic() - started)
            if commits == target and moment in ("after", "during"):
                if moment == "during":  # the timer came too late: right after, then
                    say("missed")
                die_now()
            return result

        tx.commit = commit_or_die
        return tx

    db.transaction = transaction


def main(
    path: str,
    instance: str,
    epoch_records: int,
    poll_records: int,
    lease_ms: int,
    mode: str,
    die: str,
) -> None:
    exit_with_parent()
    faulthandler.dump_traceback_later(60, exit=False)  # a stuck worker shows where
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    db = unbundled.open(path, sync="normal")
    arm(db, die, lease_ms / 1000)
    epochs = 0

    def on_epoch(report: streams.RunReport, tasks: Any) -> None:
        nonlocal epochs
        epochs += 1
        say(f"epoch {epochs} {','.join(map(str, report.partitions))}")

    say("ready")
    report = streams.run(
        db,
        build_flow(),
        instance_id=None if instance == "-" else instance,
        until_end=mode == "end",
        epoch_records=epoch_records,
        poll_records=poll_records,
        lease_ms=lease_ms,
        stop=stop,
        on_epoch=on_epoch,
    )
    db.close()
    say(f"done {report.records_in} {report.epochs}")


if __name__ == "__main__":
    a = sys.argv[1:]
    guarded(lambda: main(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), a[5], a[6]))()
