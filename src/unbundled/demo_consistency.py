"""The consistency part of ``make demo``: claims checked, not asserted.

1. Eight threads hammer a linearizable key-value store on a fresh SQLite file
   with reads, writes and compare-and-sets; the history they record is proved
   linearizable by the checker (against the store's model, versions included).
2. The same history with one read made stale is rejected, and the checker
   names that read: the proof in 1 has teeth.
3. Hermitage's isolation tests against SQLite (WAL): every anomaly prevented.
4. The causal store in a seeded simulation of a network that delays,
   reorders, duplicates, drops and partitions: no effect before its cause,
   concurrent writes kept as siblings, every replica converges.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from .consistency.checker import History, Operation, Recorder, check
from .consistency.isolation import run_suite
from .consistency.kv import KV
from .consistency.kv.model import model as kv_model
from .demo_events import Check, report_checks
from .errors import Error
from .testing.causal_sim import SimConfig, simulate

CLIENTS, OPS, KEYS = 8, 60, ("a", "b", "c")
SIM_SEEDS, SIM_OPERATIONS = 20, 300


def run_consistency_demo(console: Console, workdir: Path) -> bool:
    """Run the consistency demo in ``workdir``, printing as it goes; True if
    every check passed."""
    workdir.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]unbundled demo: consistency, checked")
    try:
        checks = _demo(console, workdir)
    except Error as exc:
        console.print(f"[red]consistency demo: failed: {escape(str(exc))}")
        return False
    return report_checks(console, "consistency demo", checks)


def _demo(console: Console, workdir: Path) -> list[Check]:
    db = workdir / "kv.db"
    with (
        console.status(f"{CLIENTS} threads on a key-value store in {db.name} ..."),
        KV.open(db, sync="normal") as kv,
    ):
        history = _record(kv)
    checks = [_linearizable(history), _stale_read_caught(history, workdir)]
    with console.status("Hermitage's isolation tests on SQLite ..."):
        checks.append(_isolation(workdir))
    with console.status(f"the causal store: {SIM_SEEDS} simulated networks ..."):
        checks.append(_causal())
    return checks


def _record(kv: KV) -> History:
    """Eight threads, random reads, writes and compare-and-sets by version
    (no deletes, so a key once written is never absent again)."""
    rec = Recorder()
    start = threading.Barrier(CLIENTS)
    errors: list[BaseException] = []

    def client(index: int) -> None:
        rng = random.Random(index)
        seen: dict[str, int] = {}
        try:
            start.wait()
            for n in range(OPS):
                key = rng.choice(KEYS)
                roll = rng.random()
                value = f"{index}.{n}"
                if roll < 0.5:
                    input: tuple[Any, ...] = ("read", key)
                elif roll < 0.75:
                    input = ("write", key, value)
                else:
                    input = ("cas", key, "version", seen.get(key, 0), value)
                with rec.call(f"t{index}", input) as call:
                    output = _apply(kv, input)
                    call.ok(output)
                if input[0] == "read" and output is not None:
                    seen[key] = output[1]
        except BaseException as exc:  # reported by the caller, not lost in a thread
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return rec.history()


def _apply(kv: KV, input: tuple[Any, ...]) -> Any:
    """Run one operation; its output as the model (kv.model) records it."""
    if input[0] == "read":
        got = kv.read(input[1])
        return None if got is None else (got.value.decode(), got.version)
    if input[0] == "write":
        return kv.write(input[1], input[2].encode())
    _, key, _, expected, new = input
    return kv.compare_and_set(key, expected_version=expected, new=new.encode())


def _most_in_flight(history: History) -> int:
    """The most operations that were in progress at one moment."""
    events = sorted(
        [(o.call_time, 1) for o in history]
        + [(o.return_time, -1) for o in history if o.return_time is not None],
        key=lambda event: (event[0], -event[1]),
    )
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def _linearizable(history: History) -> Check:
    result = check(history, kv_model(), budget_s=60)
    return (
        "every KV operation took effect at one instant (linearizable)",
        result.ok,
        f"{len(history):,} operations by {CLIENTS} threads on SQLite, up to "
        f"{_most_in_flight(history)} at once; checker: "
        f"{result.verdict.value} in {result.elapsed_s:.2f} s",
    )


def _stale_read_caught(history: History, workdir: Path) -> Check:
    """Make one read miss a write it must have seen: a read that began after
    another read of the same key had returned a value now says the key is
    absent. Keys are never deleted here, so no order explains it."""
    ops = list(history)
    reads = [o for o in ops if o.input[0] == "read" and o.returned and o.output is not None]
    victim = next(
        (
            later
            for earlier in reads
            for later in reads
            if later.input == earlier.input
            and earlier.return_time is not None
            and later.call_time > earlier.return_time
        ),
        None,
    )
    if victim is None:
        return ("a stale read is caught", False, "no pair of reads to make stale")
    stale = [
        Operation(o.client, o.input, None, o.call_time, o.return_time) if o is victim else o
        for o in ops
    ]
    result = check(History.of(stale), kv_model(), budget_s=60)
    culprit = result.violation.culprit if result.violation is not None else None
    caught = result.verdict.value == "not linearizable" and culprit is not None
    page = workdir / "stale-read.html"
    if caught:
        result.write_html(page)
    return (
        "a stale read is caught",
        caught and culprit is not None and culprit.client == victim.client,
        f"one read of {victim.input[1]!r} by {victim.client} made stale: "
        f"{result.verdict.value}; culprit named: {culprit.client if culprit else '-'}",
    )


def _isolation(workdir: Path) -> Check:
    outcomes = run_suite(f"sqlite:///{workdir / 'hermitage.db'}?journal_mode=wal")
    anomalies = [o.test for o in outcomes if o.outcome == "anomaly"]
    return (
        "SQLite (WAL) prevents every Hermitage anomaly",
        not anomalies and len(outcomes) == 14,
        f"{len(outcomes)} tests with real connections; anomalies: {anomalies or 'none'}",
    )


def _causal() -> Check:
    config = SimConfig(operations=SIM_OPERATIONS)
    reports = [simulate(seed, config) for seed in range(SIM_SEEDS)]
    failed = [r.seed for r in reports if not r.ok]
    total: dict[str, int] = {}
    for report in reports:
        for name, count in report.stats.items():
            total[name] = total.get(name, 0) + count
    return (
        "causal store: causes first, siblings kept, replicas converge",
        not failed,
        f"{SIM_SEEDS} seeds x {SIM_OPERATIONS} operations, 3 replicas; "
        f"{total.get('partitions', 0)} partitions, {total.get('dropped', 0):,} messages "
        f"dropped, {total.get('duplicated', 0):,} duplicated, "
        f"{total.get('sibling_reads', 0):,} reads with siblings; failing seeds: {failed or 'none'}",
    )
