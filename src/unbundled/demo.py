"""``unbundled demo``: the log's guarantees, shown on a fresh SQLite file.

1. Create topic ``orders`` (4 partitions) and ``orders.processed``.
2. Start two consumer-group member *processes* (group ``billing``). Each
   consumes ``orders`` and, inside ``log.transaction()``, appends a processed
   record to ``orders.processed`` and commits its offsets: both or neither.
3. Produce keyed orders from several threads, each a durable single append
   (``sync="full"``), group-committed, while the members process them.
4. SIGKILL one member half-way and start a replacement; the killed member's
   partitions move once its lease runs out.
5. When everything is processed, check and print: every order processed
   exactly once, per-key order kept, offsets dense, lag 0, the killed member's
   partitions taken over; and the throughput.

Member processes run ``python -m unbundled.demo member DB MEMBER_ID LEASE_MS``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import Error, NotFound, StaleGeneration
from .log.api import Log
from .testing.child import ChildProcess

SOURCE = "orders"
TARGET = "orders.processed"
GROUP = "billing"
PARTITIONS = 4
PRODUCER_THREADS = 8
CUSTOMERS = 96  # 12 per producer thread
LEASE_MS = 1000
WAIT_S = 60.0  # the longest any phase may take before the demo gives up
_ORDER = re.compile(rb"order=(\d+) customer=(\d+) seq=(\d+) amount=(\d+)")


class _Failed(Exception):
    """The demo could not finish (a member died, or a phase took too long)."""


@dataclass
class _Run:
    """What happened, for the checks and the figures."""

    produced: int = 0
    produce_s: float = 0.0
    killed: str = ""
    killed_partitions: set[int] = field(default_factory=set)
    killed_at: int = 0  # records committed when the member was killed
    output_at_kill: dict[int, int] = field(default_factory=dict)  # TARGET end offsets then
    process_s: float = 0.0
    takeover_s: float | None = None
    owners_after: dict[str, set[int]] = field(default_factory=dict)
    processed_by: Counter[str] = field(default_factory=Counter)  # outputs per member


def run_demo(console: Console, workdir: Path | None = None, *, records: int = 20_000) -> bool:
    """Run the demo, printing as it goes; True if every check passed.

    ``workdir`` holds ``demo.db`` (replaced if present); by default a
    temporary directory, removed afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="unbundled-demo-") as tmp:
        directory = workdir if workdir is not None else Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        db = directory / "demo.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        console.rule("[bold]unbundled demo: a durable log with consumer groups")
        console.print(f"log file: {db}")
        try:
            return _demo(console, db, records)
        except (Error, _Failed) as exc:
            console.print(f"[red]demo: failed: {escape(str(exc))}")
            return False


def _demo(console: Console, db: Path, records: int) -> bool:
    run = _Run()
    with Log.open(db, sync="full") as log:
        log.create_topic(SOURCE, PARTITIONS)
        log.create_topic(TARGET, PARTITIONS)
        console.print(
            f"created topics [bold]{SOURCE}[/] and [bold]{TARGET}[/] ({PARTITIONS} partitions each)"
        )
        pipeline = _Pipeline(console, log, db, records, run)
        try:
            pipeline.go()
        finally:
            pipeline.stop()
        checks = _check(log, records, run)
    _print(console, checks, run)
    failed = [name for name, ok, _ in checks if not ok]
    if failed:
        console.print(f"[red]demo: FAILED: {'; '.join(failed)}")
        return False
    console.print("[green]demo: all checks passed")
    return True


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


# --- the pipeline ------------------------------------------------------------------------


def _committed(log: Log) -> int:
    try:
        return sum(log.describe_group(GROUP).committed.values())
    except NotFound:
        return 0


def _owners(log: Log) -> dict[str, set[int]]:
    try:
        info = log.describe_group(GROUP)
    except NotFound:
        return {}
    return {m.member_id: {tp.partition for tp in m.partitions} for m in info.members}


def _wait(what: str, condition: Callable[[], bool], tick: Callable[[], None]) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        tick()
        if condition():
            return
        if time.monotonic() > deadline:
            raise _Failed(f"gave up after {WAIT_S} s waiting for {what}")
        time.sleep(0.01)


class _Pipeline:
    """Producer threads here, consumer-group members in child processes."""

    def __init__(self, console: Console, log: Log, db: Path, records: int, run: _Run) -> None:
        self.console = console
        self.log = log
        self.db = db
        self.records = records
        self.run = run
        self.members: dict[str, ChildProcess] = {}
        self.produced = [0] * PRODUCER_THREADS
        self.errors: list[BaseException] = []
        self.killed_at = 0.0

    def start(self, member_id: str) -> None:
        self.members[member_id] = ChildProcess(
            ["-m", "unbundled.demo", "member", str(self.db), member_id, str(LEASE_MS)],
            stdin=True,
        )

    def tick(self) -> None:
        for member_id, child in self.members.items():
            child.read_lines(0)  # keep the pipe flowing; the log itself is the record
            if member_id != self.run.killed and child.proc.poll() is not None:
                raise _Failed(f"member {member_id} died: {child.stderr_text()}")
        if self.errors:
            raise self.errors[0]

    def write(self, thread: int) -> None:
        """Each thread owns some customers, so each customer's orders are
        appended in ``seq`` order: the order the output must keep."""
        seq: Counter[int] = Counter()
        per_thread = CUSTOMERS // PRODUCER_THREADS
        try:
            for order in range(thread, self.records, PRODUCER_THREADS):
                customer = thread + PRODUCER_THREADS * (order // PRODUCER_THREADS % per_thread)
                value = b"order=%d customer=%d seq=%d amount=%d" % (
                    order,
                    customer,
                    seq[customer],
                    100 + order * 37 % 9900,
                )
                seq[customer] += 1
                self.log.append(SOURCE, value, key=b"customer-%d" % customer)
                self.produced[thread] += 1
        except BaseException as exc:
            self.errors.append(exc)

    def go(self) -> None:
        run, log = self.run, self.log
        self.start("member-1")
        self.start("member-2")

        def joined() -> bool:
            owners = _owners(log)
            return len(owners) == 2 and all(owners.values())

        _wait("two members to join", joined, self.tick)
        self.console.print(f"2 member processes joined group {GROUP!r}: {_describe(_owners(log))}")
        threads = [
            threading.Thread(target=self.write, args=(t,), daemon=True)
            for t in range(PRODUCER_THREADS)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        with _progress(self.console) as progress:
            making = progress.add_task(
                f"orders produced by {PRODUCER_THREADS} threads", total=self.records
            )
            taking = progress.add_task("orders processed by the group", total=self.records)
            processed = 0

            def tick() -> None:
                nonlocal processed
                self.tick()
                processed = _committed(log)
                progress.update(making, completed=sum(self.produced))
                progress.update(taking, completed=processed)
                if run.produce_s == 0.0 and not any(t.is_alive() for t in threads):
                    run.produce_s = time.monotonic() - started

            _wait("half of the orders to be processed", lambda: processed * 2 >= self.records, tick)
            self.kill(progress.console)
            _wait("the killed member's partitions to move", self.taken_over, tick)
            _wait("every order to be processed", lambda: processed >= self.records, tick)
            run.process_s = time.monotonic() - started
        run.produced = sum(self.produced)
        run.owners_after = _owners(log)

    def kill(self, console: Console) -> None:
        run, log = self.run, self.log
        owners = _owners(log)
        run.killed = max(sorted(owners), key=lambda m: len(owners[m]))
        run.killed_partitions = owners[run.killed]
        self.members[run.killed].kill()  # SIGKILL: no goodbye, its lease has to run out
        self.killed_at = time.monotonic()
        run.killed_at = _committed(log)
        run.output_at_kill = log.end_offsets(TARGET)
        console.print(
            f"[yellow]SIGKILL {run.killed}[/] (partitions {sorted(run.killed_partitions)}) "
            f"with {run.killed_at}/{self.records} orders processed; starting member-3"
        )
        self.start("member-3")

    def taken_over(self) -> bool:
        run = self.run
        owners = _owners(self.log)
        if run.killed in owners:
            return False
        if run.takeover_s is None:
            run.takeover_s = time.monotonic() - self.killed_at
        return set().union(*owners.values()) == set(range(PARTITIONS))

    def stop(self) -> None:
        for member_id, child in self.members.items():
            if member_id != self.run.killed and child.proc.poll() is None:
                with contextlib.suppress(OSError):  # it may have just died
                    child.send("stop")  # leave the group cleanly
                child.wait(10.0)
            child.close()


# --- checking -----------------------------------------------------------------------------

Check = tuple[str, bool, str]


def _check(log: Log, records: int, run: _Run) -> list[Check]:
    checks: list[Check] = []
    dense = True
    inputs: dict[int, tuple[bytes | None, bytes]] = {}
    for partition in range(PARTITIONS):
        got = list(log.scan(SOURCE, partition))
        dense &= [r.offset for r in got] == list(range(len(got)))
        for r in got:
            match = _ORDER.match(r.value or b"")
            if match:
                inputs[int(match[1])] = (r.key, match[0])
    seen: Counter[int] = Counter()
    by_member: Counter[str] = Counter()
    after_kill: Counter[str] = Counter()  # outputs of the killed member's partitions since
    ordered = keys_kept = True
    last_seq: dict[bytes | None, int] = defaultdict(lambda: -1)
    for partition in range(PARTITIONS):
        got = list(log.scan(TARGET, partition))
        dense &= [r.offset for r in got] == list(range(len(got)))
        for r in got:
            value = r.value or b""
            match = _ORDER.match(value)
            if match is None:
                keys_kept = False
                continue
            member = value.rpartition(b" by=")[2].decode()
            order, seq = int(match[1]), int(match[3])
            seen[order] += 1
            by_member[member] += 1
            keys_kept &= inputs.get(order) == (r.key, match[0])
            ordered &= seq > last_seq[r.key]
            last_seq[r.key] = seq
            # Keys land in the same partition number in both topics.
            if partition in run.killed_partitions and r.offset >= run.output_at_kill.get(
                partition, 0
            ):
                after_kill[member] += 1
    lost = records - len(seen.keys() & set(range(records)))
    doubled = sum(count - 1 for count in seen.values() if count > 1)
    checks.append(("every order acknowledged", run.produced == records, f"{run.produced}"))
    checks.append(
        (
            "every order processed exactly once (with log.transaction())",
            lost == 0 and doubled == 0 and len(seen) == records,
            f"{len(seen)} processed, {lost} lost, {doubled} duplicated: each member "
            "appends its output and commits its offsets in one transaction (a "
            "consumer group alone is at-least-once)",
        )
    )
    checks.append(("per-key order preserved in the output", ordered, f"{len(last_seq)} keys"))
    checks.append(("output keys and payloads match the input", keys_kept, ""))
    checks.append(("offsets dense in both topics", dense, "no gaps, no repeats"))
    lag = log.lag(GROUP)
    ends = log.end_offsets(SOURCE)
    lag_zero = (
        all(left == 0 for _, _, left in lag.values())
        and {tp.partition: committed for tp, (committed, _, _) in lag.items()} == ends
    )
    checks.append(
        ("committed offsets == end offsets (lag 0)", lag_zero, f"{sum(ends.values())} committed")
    )
    owners = run.owners_after
    moved = bool(run.killed_partitions) and run.killed not in owners
    moved &= run.killed_partitions <= set().union(set(), *owners.values())
    moved &= after_kill[run.killed] == 0  # the dead wrote nothing more
    detail = ", ".join(f"{m} {n}" for m, n in sorted(after_kill.items())) or "none left"
    checks.append(
        (
            f"{run.killed or 'the killed member'}'s partitions taken over",
            moved,
            f"{sorted(run.killed_partitions)} -> {_describe(owners)}; "
            f"their records processed after the kill: {detail}",
        )
    )
    run.processed_by = by_member
    return checks


def _describe(owners: dict[str, set[int]]) -> str:
    return ", ".join(f"{m}: {sorted(p)}" for m, p in sorted(owners.items())) or "-"


def _print(console: Console, checks: list[Check], run: _Run) -> None:
    table = Table(title="what the demo verified")
    table.add_column("check")
    table.add_column("", justify="center")
    table.add_column("detail")
    for name, ok, detail in checks:
        table.add_row(name, "[green]✓[/]" if ok else "[red]✗[/]", detail)
    console.print(table)
    figures = Table(title="throughput")
    figures.add_column("what")
    figures.add_column("figure", justify="right")
    figures.add_row(
        f"durable appends ({PRODUCER_THREADS} threads, sync=full, consumers running)",
        f"{run.produced / max(run.produce_s, 1e-9):,.0f} records/s",
    )
    figures.add_row(
        "end to end: produced, processed and committed (incl. the takeover)",
        f"{run.produced / max(run.process_s, 1e-9):,.0f} records/s",
    )
    if run.takeover_s is not None:
        figures.add_row(f"takeover after SIGKILL (lease {LEASE_MS} ms)", f"{run.takeover_s:.2f} s")
    for member, count in sorted(run.processed_by.items()):
        figures.add_row(f"processed by {member}", f"{count:,} records")
    console.print(figures)


# --- the member process -------------------------------------------------------------------


def _member_main(db: str, member_id: str, lease_ms: int) -> None:
    """Consume, transform and produce in one transaction per poll, until told to stop."""
    stop = threading.Event()

    def listen() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()  # "stop", or the parent went away

    def say(line: str) -> None:
        os.write(1, line.encode() + b"\n")  # one write per line: atomic on a pipe

    threading.Thread(target=listen, daemon=True).start()
    suffix = b" by=" + member_id.encode()
    with Log.open(db, sync="full") as log:
        consumer = log.consumer(
            SOURCE, group=GROUP, member_id=member_id, auto_commit=False, lease_ms=lease_ms
        )
        while not stop.is_set():
            batch = consumer.poll(0.1, records_max=250)
            if not batch:
                continue
            try:
                with log.transaction() as tx:
                    for record in batch:
                        tx.append(TARGET, (record.value or b"") + suffix, key=record.key)
                    tx.commit_offsets(consumer)
            except StaleGeneration:
                # Our partitions moved while we worked: nothing of this batch
                # was written; start again from the committed offsets.
                consumer = log.consumer(
                    SOURCE, group=GROUP, member_id=member_id, auto_commit=False, lease_ms=lease_ms
                )
                continue
            say(f"tx {len(batch)}")
        consumer.close()


def _main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "member":
        _member_main(argv[1], argv[2], int(argv[3]))
        return 0
    print("usage: python -m unbundled.demo member DB MEMBER_ID LEASE_MS", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
