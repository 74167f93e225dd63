"""Cancelled async writes (issue 9, item 15).

The rule: an append whose task is cancelled before the writer takes it is
withdrawn and never written; one the writer already took commits, and the
cancellation only ends the wait. Either way, retrying with the same event
ids (or the same producer sequence) is safe: it writes what was withdrawn
and is a no-op for what committed. Checked on SQLite and PostgreSQL, first
with the writer held so both cases happen for sure, then with 500 tasks
cancelled a millisecond after they submit, whatever the timing does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.backends.postgres.conftest import server_url
from tests.backends.postgres.test_backend import wait_until_waiting_for_lock
from unbundled import AsyncEventStore, AsyncLog, Position
from unbundled.backends.sqlite._log_stage import Stage
from unbundled.eventstore import AppendResult, Event

TASKS = 500


class Noted(Event, frozen=True):
    n: int


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "events.db")
    else:
        yield request.getfixturevalue("pg_url")


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[AsyncEventStore]:
    store = await AsyncEventStore.open(url, sync="normal", events=[Noted])
    try:
        yield store
    finally:
        await store.close()


async def stored_ids(store: AsyncEventStore) -> dict[str, int]:
    """Every stored event's id and position (and no id twice)."""
    events = await store.read_all(limit=10 * TASKS)
    ids = {e.id: e.position for e in events}
    assert len(ids) == len(events), "an event id is stored twice"
    return ids


# --- holding the writer inside a transaction ------------------------------------------


@contextlib.contextmanager
def sqlite_writer_held(
    store: AsyncEventStore, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Callable[[], object], Callable[[], object]]]:
    """The writer's next transaction stops before it writes, until released."""
    entered, release = threading.Event(), threading.Event()
    flush = Stage.flush

    def held_flush(stage: Stage) -> None:
        if not release.is_set():
            entered.set()
            release.wait(30)
        flush(stage)

    monkeypatch.setattr(Stage, "flush", held_flush)
    yield (lambda: entered.wait(10) or pytest.fail("the writer never began")), release.set


@contextlib.contextmanager
def postgres_writer_held(
    store: AsyncEventStore,
) -> Iterator[tuple[Callable[[], object], Callable[[], object]]]:
    """Another connection locks stream "held"'s row: the writer's next
    transaction (an append to it) waits inside, until released."""
    backend: Any = store.backend
    with psycopg.connect(server_url(), autocommit=True) as blocker:
        blocker.execute("BEGIN")
        blocker.execute(
            f'SELECT * FROM "{backend.schema}".streams WHERE stream = %s FOR UPDATE', ("held",)
        )

        def entered() -> None:
            wait_until_waiting_for_lock(blocker, backend._writer._conn.info.backend_pid)

        yield entered, lambda: blocker.execute("COMMIT")


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_cancelled_append_is_withdrawn_unless_the_writer_took_it(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    url = str(tmp_path / "events.db") if backend == "sqlite" else request.getfixturevalue("pg_url")

    async def main() -> None:
        async with opened(url) as store:
            await store.append("held", [Noted(n=0)])  # the stream whose row PostgreSQL locks
            if backend == "sqlite":
                holding = sqlite_writer_held(store, monkeypatch)
            else:
                holding = postgres_writer_held(store)
            taken_id, queued_ids = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(100)]
            with holding as (entered, release):
                taken = asyncio.create_task(store.append("held", [Noted(n=1)], ids=[taken_id]))
                await asyncio.to_thread(entered)  # the writer took it: it is in a transaction
                queued = [
                    asyncio.create_task(store.append(f"s-{i}", [Noted(n=i)], ids=[event_id]))
                    for i, event_id in enumerate(queued_ids)
                ]
                await asyncio.sleep(0)  # each task submits, then waits
                for task in [taken, *queued[::2]]:
                    task.cancel()
                release()
                outcomes = await asyncio.gather(taken, *queued, return_exceptions=True)
            assert isinstance(outcomes[0], asyncio.CancelledError)
            assert all(isinstance(o, asyncio.CancelledError) for o in outcomes[1::2])
            assert all(isinstance(o, AppendResult) for o in outcomes[2::2])
            ids = await stored_ids(store)
            assert taken_id in ids, "a request in a transaction commits"
            withdrawn = [i for i in queued_ids[::2] if i in ids]
            assert not withdrawn, f"{len(withdrawn)} cancelled queued appends were written"
            assert all(i in ids for i in queued_ids[1::2])
            # The retry recipe: the same ids. A no-op for the one that committed...
            again = await store.append("held", [Noted(n=1)], ids=[taken_id])
            assert again.positions == (ids[taken_id],)
            # ... and a first write for the withdrawn ones.
            for i, event_id in list(enumerate(queued_ids))[::2]:
                await store.append(f"s-{i}", [Noted(n=i)], ids=[event_id])
            assert len(await stored_ids(store)) == 2 + len(queued_ids)

    asyncio.run(main())


# --- whatever the timing --------------------------------------------------------------


def test_500_appends_half_cancelled_are_each_written_once_after_retries(store_url: str) -> None:
    async def main() -> None:
        async with opened(store_url) as store:
            ids = [str(uuid.uuid4()) for _ in range(TASKS)]

            def append(i: int) -> Any:
                return store.append(f"s-{i}", [Noted(n=i)], ids=[ids[i]])

            tasks = [asyncio.create_task(append(i)) for i in range(TASKS)]
            await asyncio.sleep(0.001)
            for task in tasks[::2]:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            stored = await stored_ids(store)
            for i, outcome in enumerate(outcomes):
                if isinstance(outcome, asyncio.CancelledError):
                    retried: AppendResult = await append(i)  # the same id
                    if ids[i] in stored:  # it had committed: the retry is a no-op
                        assert retried.positions == (stored[ids[i]],)
                else:
                    assert isinstance(outcome, AppendResult), outcome
                    assert outcome.positions == (stored[ids[i]],)
            assert sorted(await stored_ids(store)) == sorted(ids)

    asyncio.run(main())


def test_500_log_appends_half_cancelled_are_each_written_once_after_retries(
    tmp_path: Path,
) -> None:
    """The log's twin: one idempotent producer per task, retried with the same sequence."""

    async def main() -> None:
        async with await AsyncLog.open(tmp_path / "log.db", sync="normal") as log:
            await log.create_topic("t")
            producers = [await log.producer(f"p-{i}") for i in range(TASKS)]

            def append(i: int) -> Any:
                return producers[i].append("t", b"%d" % i, sequence=0)

            tasks = [asyncio.create_task(append(i)) for i in range(TASKS)]
            await asyncio.sleep(0.001)
            for task in tasks[::2]:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            before = {r.value: r.offset for r in await log.read("t", records_max=2 * TASKS)}
            for i, outcome in enumerate(outcomes):
                if isinstance(outcome, asyncio.CancelledError):
                    retried = await append(i)
                    if b"%d" % i in before:  # it had committed: the retry is a no-op
                        assert retried.offset == before[b"%d" % i]
                else:
                    assert isinstance(outcome, Position), outcome
                    assert outcome.offset == before[b"%d" % i]
            after = [r.value or b"" for r in await log.read("t", records_max=2 * TASKS)]
            assert sorted(after) == sorted(b"%d" % i for i in range(TASKS))

    asyncio.run(main())


def test_the_timeout_and_retry_recipe_writes_each_record_once(tmp_path: Path) -> None:
    """docs/how-to/asyncio.md: ``wait_for`` with a growing timeout, retried
    with the same producer sequence, until it answers."""

    async def main() -> None:
        async with await AsyncLog.open(tmp_path / "log.db", sync="normal") as log:
            await log.create_topic("t")
            producer = await log.producer("orders")
            for n in range(20):
                timeout_s = 0.0001  # so short that many attempts time out
                while True:
                    try:
                        await asyncio.wait_for(
                            producer.append("t", b"%d" % n, sequence=n), timeout_s
                        )
                        break
                    except TimeoutError:
                        timeout_s *= 2
            values = [r.value for r in await log.read("t")]
            assert values == [b"%d" % n for n in range(20)]

    asyncio.run(main())
