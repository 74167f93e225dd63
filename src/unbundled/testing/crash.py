"""Crash testing with real SIGKILL: what a writer acknowledged survives its death.

:func:`run_crash_test` repeatedly starts a child Python process that appends to
a SQLite log with ``sync="full"`` from several threads (single appends and
atomic batches, keyed and keyless, over several partitions), each thread
through its own idempotent :class:`~unbundled.Producer` whose sequence is the
number of the *unit* (one append call) it writes. The child reports each
acknowledged position on stdout, only after ``append`` returned. The parent
kills it with SIGKILL at a seed-chosen moment (during start-up, right after
opening, or deep into writing) and then checks:

1. the file opens again, and ``PRAGMA quick_check`` passes (every few kills);
2. every acknowledged record is present exactly once, at the position that
   was reported, with its key, value and headers intact, and every batch
   (acknowledged or not) is present whole or not at all;
3. offsets are dense per partition and match the partition's counters, and
   each thread's records appear in the order it wrote them;
4. the log is still appendable (a probe record lands at the end offset).

The next child resumes each thread after its last acknowledged unit and also
re-sends a few units before it, as a client retrying after a restart would:
the producer must answer those from its window with the original positions,
so a retry never writes twice (``duplicates == 0``).

The kill plan (when to kill, how much to re-send) comes from ``seed``; the
exact moments also depend on timing, so a replay reruns the same plan, not
necessarily the same interleaving. Run it by hand::

    python -m unbundled.testing.crash run --kills 1000 --seed 7

Each thread has its own producer because a sequence must reach the log in
increasing order: threads sharing one producer with caller-chosen numbers
would race between choosing a number and submitting it.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Error, UsageError
from ..log._protocol import Message, Record
from ..log.api import Log
from .child import ChildProcess

TOPIC = "crash"
PARTITIONS = 4
THREADS = 4  # producer threads in a child; thread t writes the units u with u % THREADS == t
SINGLE_THREADS = 2  # threads 0..SINGLE_THREADS-1 append one record per unit, the rest batches
RESEND_UNITS_MAX = 3  # units each thread re-sends after a restart (a client's retry)
FULL_CHECK_EVERY = 25  # kills between full re-scans; the others check only what is new
CHILD_LIFETIME_S = 60.0  # a child not killed by then exits on its own (a stuck parent)
START_TIMEOUT_S = 60.0  # generous: a loaded CI machine can be slow to start Python
_PATTERN = bytes(range(256)) * 2


@dataclass(frozen=True)
class CrashReport:
    """What a crash test saw. ``ok`` means nothing acknowledged was lost or doubled."""

    kills: int  # SIGKILLs delivered
    acknowledged: int  # records the children acknowledged (each counted once)
    present: int  # acknowledged records found exactly where they were reported
    duplicates: int  # records found more than once (0 expected)
    lost: int  # acknowledged records missing (0 expected)
    seed: int
    units: int = 0  # acknowledged append calls
    retries: int = 0  # re-sent units answered with their original positions
    records: int = 0  # records in the log at the end (acknowledged or not)
    elapsed_s: float = 0.0
    failures: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return (
            not self.failures
            and self.duplicates == 0
            and self.lost == 0
            and self.present == self.acknowledged
        )

    def summary(self) -> str:
        head = (
            f"crash test seed={self.seed}: {self.kills} kills, {self.acknowledged} records "
            f"acknowledged ({self.units} appends, {self.retries} retries deduplicated), "
            f"{self.present} present, {self.duplicates} duplicates, {self.lost} lost, "
            f"{self.records} records in the log, {self.elapsed_s:.1f} s"
        )
        if self.ok:
            return head
        replay = (
            f"replay: python -m unbundled.testing.crash run --kills {self.kills} --seed {self.seed}"
        )
        return "\n".join([f"FAILED {head}", *self.failures, replay])


# --- the records: a pure function of the unit number, so the parent can check them --------


def unit_records(unit: int) -> list[tuple[bytes | None, bytes, tuple[tuple[str, bytes], ...]]]:
    """``(key, value, headers)`` of each record of ``unit``, in order."""
    thread = unit % THREADS
    count = 1 if thread < SINGLE_THREADS else 1 + (unit // THREADS) % 6
    out: list[tuple[bytes | None, bytes, tuple[tuple[str, bytes], ...]]] = []
    for i in range(count):
        keyless = thread < SINGLE_THREADS and unit % 5 == 0
        key = None if keyless else b"key-%d" % ((unit + i) % 11)
        start = (unit * 131 + i * 17) % 256
        value = b"%d.%d|" % (unit, i) + _PATTERN[start : start + (unit * 37 + i) % 97]
        out.append((key, value, (("unit", b"%d" % unit),)))
    return out


def _parse(value: bytes | None) -> tuple[int, int] | None:
    """``(unit, index)`` of a record written by a child, ``(-1, n)`` for probe n."""
    if value is None:
        return None
    if value.startswith(b"probe:"):
        return (-1, int(value[6:]))
    head, sep, _ = value.partition(b"|")
    unit, dot, index = head.partition(b".")
    if not sep or not dot or not unit.isdigit() or not index.isdigit():
        return None
    return (int(unit), int(index))


# --- child processes ---------------------------------------------------------------------


# --- the child ---------------------------------------------------------------------------


def _child_main(path: str, starts: list[int]) -> None:
    """Append units forever (until killed), reporting each acknowledged one."""

    def report(line: bytes) -> None:
        os.write(1, line)  # one write(2) per line: atomic on a pipe, never interleaved

    parent = os.getppid()
    log = Log.open(path, sync="full")
    producers = [log.producer(f"crash-{t}") for t in range(THREADS)]
    report(b"ready\n")
    deadline = time.monotonic() + CHILD_LIFETIME_S

    def write(thread: int) -> None:
        producer = producers[thread]
        unit = starts[thread]
        try:
            # Stop when the parent is gone: a crashed parent leaves no orphan.
            while time.monotonic() < deadline and os.getppid() == parent:
                records = unit_records(unit)
                if thread < SINGLE_THREADS:
                    key, value, headers = records[0]
                    positions = [
                        producer.append(TOPIC, value, key=key, headers=headers, sequence=unit)
                    ]
                else:
                    messages = [Message(v, k, h) for k, v, h in records]
                    positions = producer.append_batch(TOPIC, messages, sequence=unit)
                where = b",".join(b"%d:%d" % (p.partition, p.offset) for p in positions)
                report(b"ack %d %s\n" % (unit, where))
                unit += THREADS
        except BaseException:
            import traceback

            traceback.print_exc()
            os._exit(3)

    threads = [threading.Thread(target=write, args=(t,), daemon=True) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os._exit(0)


# --- the parent's checks -----------------------------------------------------------------


class _Checker:
    """What the children acknowledged, and what the log holds, checked incrementally."""

    def __init__(self, db: Path, seed: int) -> None:
        self.db = db
        self.seed = seed
        self.acked: dict[int, tuple[tuple[int, int], ...]] = {}
        self.acked_max: list[int | None] = [None] * THREADS
        self.retries = 0
        self.failures: list[str] = []
        self.probes = 0
        self._reset()

    def _reset(self) -> None:
        self.where: dict[tuple[int, int], tuple[int, int]] = {}  # (unit, i) -> (partition, offset)
        self.checked_end = [0] * PARTITIONS
        self.last_seen: dict[tuple[int, int], tuple[int, int]] = {}  # (partition, thread) -> id
        self.confirmed: set[int] = set()
        self.unconfirmed = set(self.acked)  # acknowledged units not yet found in the log
        self.duplicates = 0
        self.probes_seen = 0
        self.touched: set[int] = set()  # units with records found by the current scan

    def fail(self, message: str) -> None:
        self.failures.append(f"seed={self.seed}: {message}")

    def absorb(self, lines: list[str], kill: int) -> None:
        for line in lines:
            if not line.startswith("ack "):
                continue
            _, unit_text, where = line.split(" ")
            unit = int(unit_text)
            positions = tuple(
                (int(p), int(o)) for p, o in (item.split(":") for item in where.split(","))
            )
            first = self.acked.get(unit)
            if first is None:
                self.acked[unit] = positions
                self.unconfirmed.add(unit)
            elif first == positions:
                self.retries += 1
            else:
                self.fail(
                    f"kill {kill}: the retry of unit {unit} was acknowledged at {positions}, "
                    f"but it was first acknowledged at {first}: written twice"
                )
            thread = unit % THREADS
            best = self.acked_max[thread]
            if best is None or unit > best:
                self.acked_max[thread] = unit

    def starts(self, rng: random.Random) -> list[int]:
        """Where each thread of the next child begins: its next unit, minus a few re-sends."""
        out = []
        for t in range(THREADS):
            best = self.acked_max[t]
            following = t if best is None else best + THREADS
            out.append(max(t, following - THREADS * rng.randint(0, RESEND_UNITS_MAX)))
        return out

    def verify(self, kill: int, *, full: bool) -> None:
        if full:
            self._reset()
            self._quick_check(kill)
        try:
            with Log.open(self.db, sync="full", maintenance_interval_s=None) as log:
                self._scan(log, kill)
                self._check_atomic(kill)
                self._confirm(kill)
                self._probe(log, kill)
        except Error as exc:
            self.fail(f"kill {kill}: reopening or reading the log failed: {exc!r}")

    def _quick_check(self, kill: int) -> None:
        conn = sqlite3.connect(self.db)
        try:
            result = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
        if result != [("ok",)]:
            self.fail(f"kill {kill}: PRAGMA quick_check says {result[:5]}")

    def _scan(self, log: Log, kill: int) -> None:
        info = {p.partition: p for p in log.describe_topic(TOPIC).partitions}
        for partition in range(PARTITIONS):
            bounds = info[partition]
            if bounds.start_offset != 0 or bounds.records != bounds.end_offset:
                self.fail(
                    f"kill {kill}: partition {partition} counters are off: start "
                    f"{bounds.start_offset}, end {bounds.end_offset}, records {bounds.records}"
                )
            expected = self.checked_end[partition]
            while expected < bounds.end_offset:
                batch = log.read(TOPIC, partition, expected, records_max=5000)
                if not batch:
                    self.fail(
                        f"kill {kill}: partition {partition} ends at {expected}, "
                        f"its end offset says {bounds.end_offset}"
                    )
                    break
                for record in batch:
                    if record.offset != expected:
                        self.fail(
                            f"kill {kill}: partition {partition} offsets are not dense: "
                            f"expected {expected}, found {record.offset}"
                        )
                    expected = record.offset + 1
                    self._record(record, kill)
            self.checked_end[partition] = expected

    def _record(self, record: Record, kill: int) -> None:
        partition, offset, value = record.partition, record.offset, record.value
        ident = _parse(value)
        if ident is None:
            self.fail(f"kill {kill}: a record nobody wrote at {partition}:{offset}: {value!r}")
            return
        unit, index = ident
        if unit == -1:
            self.probes_seen += 1
            return
        records = unit_records(unit)
        if index >= len(records) or records[index] != (record.key, value, record.headers):
            self.fail(f"kill {kill}: record {partition}:{offset} has damaged content")
            return
        if ident in self.where:
            self.duplicates += 1
            self.fail(
                f"kill {kill}: record {unit}.{index} is stored twice, at "
                f"{self.where[ident]} and {(partition, offset)}"
            )
            return
        self.where[ident] = (partition, offset)
        self.touched.add(unit)
        slot = (partition, unit % THREADS)
        last = self.last_seen.get(slot)
        if last is not None and last > ident:
            self.fail(
                f"kill {kill}: partition {partition} holds {ident} after {last}, out of the "
                f"order thread {unit % THREADS} wrote them"
            )
        self.last_seen[slot] = ident

    def _check_atomic(self, kill: int) -> None:
        """A unit (one append call: one record or a batch across partitions)
        is stored whole or not at all, acknowledged or not."""
        for unit in sorted(self.touched):
            count = len(unit_records(unit))
            missing = [i for i in range(count) if (unit, i) not in self.where]
            if missing:
                self.fail(f"kill {kill}: unit {unit} is stored in part: records {missing} missing")
        self.touched.clear()

    def _confirm(self, kill: int) -> None:
        for unit in sorted(self.unconfirmed):
            positions = self.acked[unit]
            for index, position in enumerate(positions):
                found = self.where.get((unit, index))
                if found != position:
                    self.fail(
                        f"kill {kill}: acknowledged record {unit}.{index} at {position} is "
                        + ("missing" if found is None else f"at {found} instead")
                    )
                    break
            else:
                if len(positions) == len(unit_records(unit)):
                    self.confirmed.add(unit)
                    self.unconfirmed.discard(unit)
                else:
                    self.fail(f"kill {kill}: unit {unit} acknowledged {len(positions)} records")

    def _probe(self, log: Log, kill: int) -> None:
        if self.probes_seen != self.probes:
            self.fail(f"kill {kill}: {self.probes} probes appended, {self.probes_seen} found")
        partition = self.probes % PARTITIONS
        end = log.end_offsets(TOPIC)[partition]
        position = log.append(TOPIC, b"probe:%d" % self.probes, partition=partition)
        self.probes += 1
        if (position.partition, position.offset) != (partition, end):
            self.fail(f"kill {kill}: a probe append landed at {position}, not at end {end}")

    def report(self, kills: int, elapsed_s: float) -> CrashReport:
        acknowledged = sum(len(p) for p in self.acked.values())
        present = sum(len(self.acked[u]) for u in self.confirmed)
        lost = sum(
            1
            for unit, positions in self.acked.items()
            for index in range(len(positions))
            if (unit, index) not in self.where
        )
        return CrashReport(
            kills=kills,
            acknowledged=acknowledged,
            present=present,
            duplicates=self.duplicates,
            lost=lost,
            seed=self.seed,
            units=len(self.acked),
            retries=self.retries,
            records=sum(self.checked_end),
            elapsed_s=elapsed_s,
            failures=tuple(self.failures),
        )


# --- the parent --------------------------------------------------------------------------


def _kill_one(
    db: Path, checker: _Checker, rng: random.Random, kill: int, startup_s: float
) -> float:
    """Run one child and SIGKILL it; returns how long it took to get ready."""
    starts = checker.starts(rng)
    plan = rng.random()
    lines: list[str] = []
    ready_s = startup_s
    with ChildProcess(
        ["-m", "unbundled.testing.crash", "child", str(db), ",".join(map(str, starts))]
    ) as child:
        if plan < 0.15:
            # During start-up: importing, opening the file, registering producers.
            deadline = time.monotonic() + rng.uniform(0.0, 1.2 * startup_s)
            while time.monotonic() < deadline and not child.eof:
                lines.extend(child.read_lines(deadline - time.monotonic()))
        else:
            if child.wait_for(lambda line: line == "ready", START_TIMEOUT_S, lines) is None:
                checker.fail(
                    f"kill {kill}: the child did not start: {child.stderr_text() or 'no error'}"
                )
                return ready_s
            ready_s = time.monotonic() - child.started
            if plan < 0.3:
                time.sleep(rng.uniform(0.0, 0.005))  # right after opening
            else:
                wanted = 1 + min(2000, int(rng.expovariate(1 / 150)))
                acks = 0

                def enough(line: str) -> bool:
                    nonlocal acks
                    acks += line.startswith("ack ")
                    return acks >= wanted

                child.wait_for(enough, 5.0, lines)  # then kill, however far it got
        status = child.proc.poll()
        child.kill()
        lines.extend(child.drain())
        if status is not None or child.proc.returncode != -signal.SIGKILL:
            checker.fail(
                f"kill {kill}: the child exited by itself (status {child.proc.returncode}): "
                f"{child.stderr_text()}"
            )
    checker.absorb(lines, kill)
    return ready_s


def run_crash_test(
    path: Path,
    kills: int,
    *,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> CrashReport:
    """SIGKILL a writing child ``kills`` times and check the log after each kill.

    ``path`` is a directory (the log goes to ``crash.db`` inside it) or the path
    of a database file that does not exist yet. Stops at the first failure;
    the report's :meth:`CrashReport.summary` says what failed and how to replay.
    """
    if type(kills) is not int or kills < 0:
        raise UsageError(f"kills must be an int >= 0, got {kills!r}", kills=kills)
    db = path / "crash.db" if path.is_dir() else path
    if db.exists():
        raise UsageError(f"{db} exists: the crash test needs a fresh log", path=str(db))
    started = time.monotonic()
    rng = random.Random(seed)
    with Log.open(db, sync="full", maintenance_interval_s=None) as log:
        log.create_topic(TOPIC, PARTITIONS)
    checker = _Checker(db, seed)
    startup_s = 0.1
    done = 0
    for kill in range(1, kills + 1):
        startup_s = _kill_one(db, checker, rng, kill, startup_s)
        done = kill
        if not checker.failures:
            checker.verify(kill, full=kill % FULL_CHECK_EVERY == 0)
        if checker.failures:
            break
        if progress is not None:
            progress(kill)
    if not checker.failures:
        checker.verify(done, full=True)
    return checker.report(done, time.monotonic() - started)


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["child"]:
        _child_main(argv[1], [int(s) for s in argv[2].split(",")])
        return 0
    import argparse

    parser = argparse.ArgumentParser(prog="python -m unbundled.testing.crash")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a crash test and print its report")
    run.add_argument("--kills", type=int, default=50)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--dir", type=Path, default=None, help="where to put crash.db")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="unbundled-crash-") as tmp:
        directory = args.dir or Path(tmp)
        report = run_crash_test(
            directory,
            args.kills,
            seed=args.seed,
            progress=lambda k: print(f"\r{k}/{args.kills} kills", end="", file=sys.stderr),
        )
    print(file=sys.stderr)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
