"""unbundled's side of the unit-of-work benchmark: the workload itself, run
by ``bench/unit_of_work_bench.py`` and, profiled, by :func:`profile_units`
and :func:`profile_log` (``bench/writer_profile.py``).

Every task owns one stream and writes it with exact expected versions; each
transaction appends one event, (on SQLite) one outbox record, and completes
one idempotency attempt. After the run the results are checked as a user
would: the event store's position, the topic's end offset, every attempt
completed, and every key's stored result once the file is reopened.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import unbundled
from bench import writer_profile as wp
from bench.eventstore_bench import EVENTS, Deposited
from bench.log_bench import scratch_dir

TOPIC = "payments"
VALUE = b"%0100d" % 7  # 100 bytes, the log benchmark's record size


# --- the unit of work ------------------------------------------------------------------


@dataclass(frozen=True)
class UnitRun:
    """One measurement of the unit of work."""

    rate: float  # transactions/s
    per_commit: float  # transactions per writer commit (0 without a group-commit writer)
    claim_rate: float  # claims/s before the timed region (0 when claimed inside it)


def _writer_of(db: Any) -> Any:
    return getattr(db.backend, "_writer", None)


async def _units(
    url: str,
    writers: int,
    per_writer: int,
    *,
    log: bool,
    claim_inside: bool,
    profile: wp.Profile | None = None,
) -> UnitRun:
    db = await unbundled.open_async(url, sync="full", events=EVENTS)
    try:
        if log:
            await db.log.create_topic(TOPIC, partitions=1)

        def key(n: int, i: int) -> str:
            return f"deposit-{n}-{i}"

        def payload(n: int, i: int) -> dict[str, int]:
            return {"account": n, "amount": i}

        attempts: list[list[Any]] = [[None] * per_writer for _ in range(writers)]
        claim_rate = 0.0
        if not claim_inside:

            async def claim(n: int) -> None:
                for i in range(per_writer):
                    attempts[n][i] = await db.idempotency.attempt(key(n, i), payload(n, i))

            started = time.perf_counter()
            await asyncio.gather(*(claim(n) for n in range(writers)))
            claim_rate = writers * per_writer / (time.perf_counter() - started)
        start = asyncio.Event()

        async def work(n: int) -> None:
            await start.wait()
            stream = f"account-{n}"
            for i in range(per_writer):
                if claim_inside:  # the handler's first round trip: claim the key
                    attempts[n][i] = await db.idempotency.attempt(key(n, i), payload(n, i))
                async with db.transaction() as tx:
                    tx.append_events(stream, [Deposited(amount=i)], i - 1)
                    if log:
                        await tx.append(TOPIC, VALUE, key=stream.encode())
                    tx.complete(attempts[n][i], {"ok": True, "version": i})

        tasks = [asyncio.create_task(work(n)) for n in range(writers)]
        await asyncio.sleep(0)  # let every task reach start.wait()
        writer = _writer_of(db)
        before = writer.transactions if writer is not None else 0
        if profile is not None:
            profile.start()
        started = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        if profile is not None:
            profile.stop()
        commits = writer.transactions - before if writer is not None else 0
        total = writers * per_writer
        await _check_units(db, attempts, total, log)
    finally:
        await db.close()
    await asyncio.to_thread(_check_results, url, total)
    return UnitRun(total / elapsed, total / commits if commits else 0.0, claim_rate)


async def _check_units(db: Any, attempts: list[list[Any]], total: int, log: bool) -> None:
    if await db.events.safe_position() != total:
        raise AssertionError("the unit-of-work benchmark lost events")
    if not all(a.completed for row in attempts for a in row):
        raise AssertionError("an attempt of the unit-of-work benchmark is not completed")
    if log and (await db.log.end_offsets(TOPIC))[0] != total:
        raise AssertionError("the unit-of-work benchmark lost log records")


def _check_results(url: str, total: int) -> None:
    """Reopened as a user would: every key holds its completed result."""
    completed = 0
    after = ""
    with unbundled.open(url, events=EVENTS) as db:
        while True:
            page = db.idempotency.records(state="completed", after=after, limit=1000)
            completed += len(page)
            if len(page) < 1000:
                break
            after = page[-1].key
    if completed != total:
        raise AssertionError(f"{completed} completed idempotency keys, expected {total}")


def units(url: str, writers: int, per_writer: int, *, log: bool, claim_inside: bool) -> UnitRun:
    """Transactions/s of ``writers`` asyncio tasks, each running ``per_writer``
    transactions (with an outbox record if ``log``; claiming each key inside
    the timed loop if ``claim_inside``, else all of them before it)."""
    return asyncio.run(_units(url, writers, per_writer, log=log, claim_inside=claim_inside))


# --- where a commit cycle goes ---------------------------------------------------------


def profile_log(parent: Path | None, writers: int, per_writer: int) -> wp.Profile:
    """One profiled run of ``writers`` tasks appending ``per_writer`` records each."""
    with scratch_dir(parent, "profile-log") as d, wp.profiled() as profile:
        asyncio.run(_profiled_log(d / "log.db", writers, per_writer, profile))
    return profile


async def _profiled_log(path: Path, writers: int, per_writer: int, profile: wp.Profile) -> None:
    log = await unbundled.AsyncLog.open(path, sync="full")
    try:
        await log.create_topic(TOPIC, partitions=1)
        start = asyncio.Event()

        async def work() -> None:
            await start.wait()
            for _ in range(per_writer):
                await log.append(TOPIC, VALUE)

        tasks = [asyncio.create_task(work()) for _ in range(writers)]
        await asyncio.sleep(0)
        profile.start()
        start.set()
        await asyncio.gather(*tasks)
        profile.stop()
        if (await log.end_offsets(TOPIC))[0] != writers * per_writer:
            raise AssertionError("the profiled log run lost records")
    finally:
        await log.close()


def profile_units(parent: Path | None, writers: int, per_writer: int) -> wp.Profile:
    """One profiled run of the SQLite unit of work, the attempts claimed before it."""
    with scratch_dir(parent, "profile-unit") as d, wp.profiled() as profile:
        asyncio.run(
            _units(
                str(d / "unit.db"),
                writers,
                per_writer,
                log=True,
                claim_inside=False,
                profile=profile,
            )
        )
    return profile


__all__ = ["TOPIC", "VALUE", "UnitRun", "profile_log", "profile_units", "units"]
