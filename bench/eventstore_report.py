"""The report of ``bench/eventstore_bench.py``: machine facts, what each
line measures, and the Markdown page (``bench/results/eventstore.md``)."""

from __future__ import annotations

import datetime
import os
import platform
import sqlite3
from typing import Any, Protocol

from bench.common import HEADERS, cells, git_commit, markdown_table
from bench.log_bench import Row

REBUILD_HOW = "`Repository(store, BankAccount).load(id)` (unbundled.eventstore.aggregate)"


class Sizes(Protocol):
    """What the page says of a run's sizes (``eventstore_bench.Sizes`` is one)."""

    @property
    def repeats(self) -> int: ...

    @property
    def fsync_seconds(self) -> float: ...


CASES = [
    "Durable appends of single events from 64 concurrent writers, each append its own request "
    "waiting for its own commit, each writer on its own stream with its exact expected "
    "version. unbundled: (a) 64 asyncio tasks on `AsyncEventStore.append`, (b) 64 threads on "
    "`EventStore.append`, group-committed. eventsourcing (64 threads, it has no asyncio API): "
    "`Application.save(account)` after each `account.deposit()` (aggregate, mapper, one "
    "transaction per event), and `recorder.insert_events([stored_event])` with the events "
    "serialized beforehand (persistence alone). The ratios are to the first, the issue's "
    "baseline (eventsourcing's one-save-per-event rate); the notes give them to the second too.",
    "Rebuilding aggregates: the same accounts (Opened + 19 deposits) on both sides; "
    f"unbundled: {REBUILD_HOW}; eventsourcing: `application.repository.get(id)` (no cache, "
    "no snapshots, its defaults). Both check the rebuilt balances.",
    "Reading the whole log into typed events: unbundled `EventStore.read_all` (global order, "
    "decoded into msgspec event classes); eventsourcing `recorder.select_notifications` pages "
    "of 10,000 + `mapper.to_domain_event` (its domain event objects).",
    "fsync floor: how many times a second this disk persists a 1-byte write.",
]


def machine_facts(fsync: Row, sizes: Sizes, rival: Any) -> list[tuple[str, str]]:
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("commit", git_commit()),
        ("CPUs", str(os.cpu_count())),
        ("platform", platform.platform()),
        ("Python", platform.python_version()),
        ("SQLite", sqlite3.sqlite_version),
        ("eventsourcing", rival.VERSION if rival is not None else "not installed"),
        (
            "fsync rate",
            f"{fsync.rate:,.0f}/s (write 1 byte + os.fsync, median of {len(fsync.samples)} "
            f"x {sizes.fsync_seconds:g} s taken before each case and at the end)",
        ),
        ("runs", f"each line is the median of {sizes.repeats} runs; ratios are of medians"),
        (
            "durability",
            'both sides: SQLite WAL + synchronous=FULL (unbundled sync="full"; eventsourcing '
            "sets WAL itself and its connection reports synchronous=2, FULL), one fsync per "
            "commit; PostgreSQL: the same local server, synchronous_commit=on for both "
            '(unbundled sync="full", eventsourcing\'s default), each side in a fresh database',
        ),
    ]


def markdown(facts: list[tuple[str, str]], rows: list[Row], notes: list[str]) -> str:
    parts = [
        "# Event-store benchmarks",
        "",
        "Written by `make bench` (`bench/run.py --only eventstore`, which runs "
        "`bench/eventstore_bench.py` in `bench/.venv`). unbundled and the `eventsourcing` "
        "library were measured side by side, repetition by repetition, in one run on this "
        "machine.",
        "",
        *[f"- {name}: {value}" for name, value in facts],
        "",
        markdown_table(HEADERS, [cells(r) for r in rows]),
        "",
        *[f"- {n}" for n in notes],
        "",
        "## What each line measures",
        "",
        *[f"{i}. {text}" for i, text in enumerate(CASES, 1)],
    ]
    return "\n".join(parts) + "\n"


__all__ = ["CASES", "machine_facts", "markdown"]
