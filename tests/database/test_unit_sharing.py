"""One database shared by every part, from many threads and asyncio tasks.

A :class:`unbundled.Database` (SQLite and memory) is used at once by the
log, the event store, idempotency keys and the KV store, through
transactions that write every part together and through plain calls, from
12 threads; an :class:`unbundled.AsyncDatabase` likewise from 64 tasks while
threads use its synchronous KV part. Each actor counts what it was told was
written (tests/database/_sharing.py); at the end the database holds exactly
that: nothing lost, nothing doubled.

Then the database is closed in every order of its parts and itself (a part
first, the database first, the parts after the database) while actors use
it, sync and async: every actor ends with ``Closed``, nothing hangs, no
thread dies with a traceback, and on SQLite the file then holds exactly what
the actors were told was written. That runs in a child process, so that a
crash fails the test rather than ending the test run.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crash._helpers import ROOT
from unbundled.database import Database

from ._sharing import Noted, Tally, aact, check_tallies, join, open_async, open_db, start

THREADS = 12
TASKS = 64
ROUNDS = 100  # operations per actor
KV_THREADS = 2  # threads using an AsyncDatabase's KV part while its tasks run


@pytest.fixture
def thread_failures() -> Iterator[list[BaseException]]:
    """Exceptions that end any thread (a background thread's traceback) during the test."""
    failures: list[BaseException] = []
    before = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        failures.append(args.exc_value or RuntimeError(str(args.exc_type)))
        before(args)

    threading.excepthook = hook
    try:
        yield failures
    finally:
        threading.excepthook = before


def url_of(backend: str, tmp_path: Path) -> str:
    return "memory://" if backend == "memory" else str(tmp_path / "shared.db")


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_threads_share_one_database(
    backend: str, tmp_path: Path, thread_failures: list[BaseException]
) -> None:
    tallies = [Tally(i) for i in range(THREADS)]
    url = url_of(backend, tmp_path)
    with open_db(url) as db:
        join(start(db, tallies, ROUNDS))
        assert all(t.closed == 0 for t in tallies)
        assert sum(t.transactions for t in tallies) > THREADS  # most actors did some
        check_tallies(db, tallies)
    if backend == "sqlite":
        with open_db(url) as db:
            check_tallies(db, tallies)
    assert thread_failures == []


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_tasks_share_one_async_database(
    backend: str, tmp_path: Path, thread_failures: list[BaseException]
) -> None:
    tallies = [Tally(i) for i in range(TASKS)]
    url = url_of(backend, tmp_path)
    kv_tallies = [Tally(TASKS + i) for i in range(KV_THREADS)]

    async def main() -> None:
        db = await open_async(url)
        # Meanwhile, threads count on the (synchronous) KV part of the same database.
        kv = db.kv

        def count(t: Tally) -> None:
            for _ in range(ROUNDS):
                kv.compare_and_set(t.counter_key, new=t.next_count(), expected_value=t.count())
                t.committed(part="kv")

        threads = [threading.Thread(target=count, args=(t,)) for t in kv_tallies]
        for thread in threads:
            thread.start()
        await asyncio.gather(*(aact(db, t, ROUNDS) for t in tallies))
        await asyncio.to_thread(join, threads)
        if backend == "memory":  # its state ends with it: look through a sync facade
            check_tallies(Database(db.backend, events=[Noted]), [*tallies, *kv_tallies])
        await db.close()

    asyncio.run(main())
    assert all(t.closed == 0 for t in tallies)
    assert sum(t.transactions for t in tallies) > TASKS
    if backend == "sqlite":
        with open_db(url) as db:
            check_tallies(db, [*tallies, *kv_tallies])
    assert thread_failures == []


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_closed_in_every_order_while_in_use(backend: str, tmp_path: Path) -> None:
    child = subprocess.run(
        [
            sys.executable,
            "-X",
            "faulthandler",
            "-m",
            "tests.database._sharing",
            "close",
            backend,
            str(tmp_path),
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 0, f"exit {child.returncode}:\n{child.stderr[-4000:]}"
    assert child.stdout.strip() == "closed in 120 orders" and child.stderr == "", child.stderr
