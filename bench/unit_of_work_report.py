"""The table lines of ``bench/unit_of_work_bench.py`` and its page,
``bench/results/unit-of-work.md``: machine facts, the results table, where
one commit cycle of the SQLite writer goes, and what each line measures.

A line can be held to more than one baseline (the unit of work to the event
store alone, A, and to eventsourcing, B), so its ratios, floors and result
name the baseline each refers to.
"""

from __future__ import annotations

import datetime
import os
import platform
import sqlite3
import statistics
from dataclasses import dataclass

from bench.common import git_commit, markdown_table
from bench.log_bench import Floor
from bench.writer_profile import Profile

HEADERS = ["#", "measured", "median rate", "min to max", "ratios", "floors", "result", "notes"]
PROFILE_HEADERS = ["step", "calls/cycle", "wall us/cycle", "share", "CPU us/cycle", "not running"]


@dataclass(frozen=True)
class Versus:
    """A comparison with a baseline line, labelled (``A``, ``B``, ``NATS``)."""

    label: str
    rate: float
    floor: Floor | None = None


@dataclass(frozen=True)
class Line:
    """One line of the table. ``kind``: ``baseline`` (a reference others are
    compared with), ``measured`` (held to the floors of ``against``) or
    ``context`` (compared, not judged)."""

    case: str
    name: str
    unit: str
    samples: tuple[float, ...]
    kind: str = "context"
    against: tuple[Versus, ...] = ()
    note: str = ""

    @property
    def rate(self) -> float:
        return statistics.median(self.samples)

    def ratio(self, versus: Versus) -> float | None:
        return self.rate / versus.rate if versus.rate > 0 else None

    @property
    def verdict(self) -> str:
        if self.kind != "measured":
            return self.kind
        missed = []
        for versus in self.against:
            if versus.floor is None:
                continue
            if versus.floor.verdict(self.rate, self.ratio(versus)) != "PASS":
                missed.append(versus.label)
        return f"BELOW FLOOR ({', '.join(missed)})" if missed else "PASS"


def cells(line: Line) -> list[str]:
    ratios = [
        f"{ratio:.2f}x {v.label}" for v in line.against if (ratio := line.ratio(v)) is not None
    ]
    floors = [f"{v.floor.describe()} {v.label}" for v in line.against if v.floor is not None]
    return [
        line.case,
        line.name,
        f"{line.rate:,.0f} {line.unit}/s",
        f"{min(line.samples):,.0f} to {max(line.samples):,.0f}",
        "; ".join(ratios),
        "; ".join(floors) if line.kind == "measured" else "",
        line.verdict,
        line.note,
    ]


def profile_cells(profile: Profile) -> list[list[str]]:
    """One row per step of the writer's cycle, per cycle, largest first."""
    cycles = max(profile.cycles, 1)
    rows = []
    for name, wall, cpu, calls in profile.steps():
        not_running = "" if cpu is None else f"{(wall - cpu) / cycles / 1000:,.1f}"
        rows.append(
            [
                name,
                f"{calls / cycles:,.2f}",
                f"{wall / cycles / 1000:,.1f}",
                f"{100 * wall / max(profile.wall_ns, 1):.1f}%",
                "" if cpu is None else f"{cpu / cycles / 1000:,.1f}",
                not_running,
            ]
        )
    return rows


def profile_summary(
    profile: Profile, items: int, what: str, plain_rate: float, fsync_rate: float
) -> list[str]:
    """What a profile's table needs beside it: the cycle, the threads' CPU,
    and the disk's own fsync time to read COMMIT's against."""
    cycles = max(profile.cycles, 1)
    wall = max(profile.wall_ns, 1)
    rate = items / wall * 1e9
    return [
        f"{items:,} {what} in {cycles:,} commit cycles ({items / cycles:,.1f} per cycle), "
        f"{wall / cycles / 1000:,.0f} us per cycle; profiled rate {rate:,.0f}/s "
        f"(the same work unprofiled in this run: median {plain_rate:,.0f}/s)",
        f"writer thread CPU: {profile.writer_cpu_ns / cycles / 1000:,.0f} us per cycle "
        f"({100 * profile.writer_cpu_ns / wall:.0f}% of the wall time); event loop thread CPU: "
        f"{profile.loop_cpu_ns / cycles / 1000:,.0f} us per cycle "
        f"({100 * profile.loop_cpu_ns / wall:.0f}%); the whole process: "
        f"{100 * profile.process_cpu_ns / wall:.0f}% of one core (the machine has "
        f"{os.cpu_count()}); one fsync of this disk takes {1e6 / max(fsync_rate, 1):,.0f} us "
        "(the fsync floor's median), the rest of COMMIT's time not running is the writer "
        "waiting to run again (the GIL, a core)",
    ]


def machine_facts(
    fsync_rate: float,
    fsync_samples: int,
    repeats: int,
    versions: dict[str, str],
    load: tuple[float, float],
) -> list[tuple[str, str]]:
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("commit", git_commit()),
        ("CPUs", str(os.cpu_count())),
        ("platform", platform.platform()),
        ("Python", platform.python_version()),
        ("SQLite", sqlite3.sqlite_version),
        *versions.items(),
        (
            "fsync rate",
            f"{fsync_rate:,.0f}/s (write 1 byte + os.fsync, median of {fsync_samples} samples "
            "taken before each case and at the end)",
        ),
        ("runs", f"each line is the median of {repeats} runs; ratios are of medians"),
        (
            "durability",
            'SQLite: WAL + synchronous=FULL on both sides (unbundled sync="full"; '
            "eventsourcing's connection reports synchronous=2, FULL), one fsync per commit. "
            "PostgreSQL: the same local server, synchronous_commit as shown above for both. "
            "NATS: a file-storage stream; the server acks once the message is written to "
            "its file, and fsyncs on a timer (sync_interval, 2 minutes by default), so its "
            "ack is not a disk sync where ours is",
        ),
        (
            "load average",
            f"{load[0]:.2f} before, {load[1]:.2f} after (1-minute; 2 = both CPUs busy; other "
            "sessions share this machine)",
        ),
    ]


CASES = [
    "The unit of work on SQLite: 64 asyncio tasks, each on its own stream, each "
    "transaction `async with db.transaction() as tx:` = `tx.append_events(stream, [event], "
    "expected_version=<exact>)` + `await tx.append('payments', 100-byte value, key=stream)` "
    "(the outbox record) + `tx.complete(attempt, result)`. The attempts "
    "(`await db.idempotency.attempt(key, payload)`) are claimed before the timed region in "
    "1a; a real handler claims first, a separate round trip, so 1b claims inside the timed "
    "loop (context). A: the same 64 tasks doing `AsyncEventStore.append` alone (one event, "
    "exact expected version). B: eventsourcing, 64 threads (it has no asyncio API), "
    "`Application.save(account)` after each `account.deposit()`, then the outbox INSERT in "
    "a transaction of its own (two commits per command, as a user of it writes an outbox). "
    "1L, the least work (`bench/unit_least.py`): in a file unbundled made (its real tables, "
    "indexes, triggers; for 1a the topic and every key claimed), one thread on a plain "
    "sqlite3 connection (WAL, synchronous=FULL) writes rows built before the clock starts, "
    "grouped as 1a's commits were: A's events (one multi-row INSERT and the events head), "
    "and 1a's events plus its outbox batch, partition row and idempotency UPSERTs. No "
    "checks, checksums, decisions or asyncio: what SQLite alone costs for those rows. "
    "Their ratio is the share of 1a's ratio to A that the SQL itself sets.",
    "The same on PostgreSQL, the outbox record in the log on PostgreSQL: event + record + "
    "idempotency completion per transaction; A and B likewise (B: eventsourcing's "
    "postgres module, a pool of 64 connections, the outbox INSERT in its own commit). "
    "Each side in a fresh schema of database `test`, dropped after.",
    "The log beside NATS: durable `AsyncLog.append(topic, 100-byte value)` from 64 asyncio "
    "tasks (SQLite, one partition) vs NATS JetStream `await js.publish(subject, 100-byte "
    "value)` (waits for the PubAck) from 64 asyncio tasks on one nats-py connection, to a "
    "fresh file-storage stream on the machine's server, deleted after.",
    "fsync floor: how many times a second this disk persists a 1-byte write.",
]

PROFILE_TEXT = (
    "Each table is one profiled run (`bench/writer_profile.py`): the writer's steps are "
    "patched with timers for that run only (nothing is left in the library). Times are per "
    "commit cycle and exclusive (a step's time leaves out the steps it calls). `wall` is "
    "elapsed time; `CPU` the writer thread's own CPU time, read only around the steps that "
    "run once per cycle; `not running` = wall - CPU: waiting for the disk (COMMIT's "
    "fsync), for the GIL, or for a core. The rest of the writer loop is what its thread did "
    "outside every timed step. The timers add about 0.1 us per step call and 1 us per CPU "
    "reading, so a profiled run is a little slower than a plain one."
)


def markdown(
    facts: list[tuple[str, str]],
    lines: list[Line],
    notes: list[str],
    profiles: list[tuple[str, Profile, list[str]]],
) -> str:
    parts = [
        "# Unit-of-work benchmarks",
        "",
        "Written by `make bench` (`bench/run.py --only unit`, which runs "
        "`bench/unit_of_work_bench.py` in `bench/.venv`). Every line was measured side by "
        "side with its baselines, repetition by repetition, in one run on this machine.",
        "",
        *[f"- {name}: {value}" for name, value in facts],
        "",
        markdown_table(HEADERS, [cells(line) for line in lines]),
        "",
        *[f"- {n}" for n in notes],
    ]
    if profiles:
        parts += ["", "## Where one commit cycle of the SQLite writer goes", "", PROFILE_TEXT]
        for title, profile, summary in profiles:
            parts += [
                "",
                f"### {title}",
                "",
                markdown_table(PROFILE_HEADERS, profile_cells(profile)),
                "",
                *[f"- {s}" for s in summary],
            ]
    parts += ["", "## What each line measures", ""]
    parts += [f"{i}. {text}" for i, text in enumerate(CASES, 1)]
    return "\n".join(parts) + "\n"


__all__ = [
    "CASES",
    "HEADERS",
    "PROFILE_HEADERS",
    "Line",
    "Versus",
    "cells",
    "machine_facts",
    "markdown",
    "profile_cells",
    "profile_summary",
]
