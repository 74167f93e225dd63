"""``AsyncIdempotency`` and ``@idempotent`` on the memory and SQLite backends.

Each async test is a plain function that runs its coroutine with
``asyncio.run``: the suite does not depend on an asyncio pytest plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import doctest
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

import unbundled.idempotency.aio
import unbundled.idempotency.decorator
from unbundled import (
    AsyncIdempotency,
    Idempotency,
    IdempotencyKeyReused,
    RequestInProgress,
    StaleToken,
    UsageError,
    idempotent,
)
from unbundled.idempotency import Attempt

WAIT_S = 30.0  # generous deadline; never a timing assertion


class Declined(Exception):
    """A deterministic error: the same request is declined every time."""


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else str(tmp_path / "idem.db")


Scenario = Callable[[AsyncIdempotency], Awaitable[None]]


def run(url: str, scenario: Scenario, **options: Any) -> None:
    async def main() -> None:
        async with await AsyncIdempotency.open(url, sync="off", **options) as idem:
            await scenario(idem)

    asyncio.run(main())


def test_docstring_examples() -> None:
    for module in (unbundled.idempotency.aio, unbundled.idempotency.decorator):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module


# --- AsyncIdempotency ---------------------------------------------------------------------


def test_call_runs_async_and_sync_handlers_once(url: str) -> None:
    calls: list[str] = []

    async def charge(attempt: Attempt) -> dict[str, int]:
        calls.append(attempt.key)
        return {"charged": 10}

    def refund(attempt: Attempt) -> dict[str, int]:
        calls.append(attempt.key)
        assert threading.current_thread() is not threading.main_thread()  # off the loop
        return {"refunded": 10}

    async def scenario(idem: AsyncIdempotency) -> None:
        for _ in range(2):
            assert await idem.call("charge-1", {"amount": 10}, charge) == {"charged": 10}
            assert await idem.call("refund-1", {"amount": 10}, refund) == {"refunded": 10}
        assert calls == ["charge-1", "refund-1"]
        with pytest.raises(IdempotencyKeyReused):
            await idem.call("charge-1", {"amount": 11}, charge)
        record = await idem.get("charge-1")
        assert record is not None and record.state == "completed"
        assert [r.key for r in await idem.records(state="completed")] == ["charge-1", "refund-1"]

    run(url, scenario)


def test_in_progress_then_wait_for_the_result(url: str) -> None:
    async def scenario(idem: AsyncIdempotency) -> None:
        started = asyncio.Event()
        release = asyncio.Event()

        async def slow(attempt: Attempt) -> str:
            started.set()
            await release.wait()
            return "done"

        first = asyncio.create_task(idem.call("k", None, slow))
        await asyncio.wait_for(started.wait(), WAIT_S)
        with pytest.raises(RequestInProgress):
            await idem.call("k", None, slow)
        waiter = asyncio.create_task(idem.call("k", None, slow, wait_s=WAIT_S))
        release.set()
        assert await asyncio.wait_for(first, WAIT_S) == "done"
        assert await asyncio.wait_for(waiter, WAIT_S) == "done"

    run(url, scenario)


def test_errors_release_or_are_stored(url: str) -> None:
    calls = 0

    async def flaky(attempt: Attempt) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("the bank is down")  # transient: released
        raise Declined("card declined")  # deterministic: stored

    async def scenario(idem: AsyncIdempotency) -> None:
        with pytest.raises(ConnectionError):
            await idem.call("pay", None, flaky)
        assert await idem.get("pay") is None
        for _ in range(2):
            with pytest.raises(Declined, match="card declined"):
                await idem.call("pay", None, flaky)
        assert calls == 2
        record = await idem.get("pay")
        assert record is not None and record.error

    run(url, scenario, deterministic=(Declined,))


def test_a_block_without_complete_is_released_with_an_error(url: str) -> None:
    async def scenario(idem: AsyncIdempotency) -> None:
        with pytest.raises(UsageError, match="without complete"):
            async with idem.run("k", None):
                pass
        assert await idem.get("k") is None

    run(url, scenario)


def test_claims_need_no_worker_thread_and_answer_as_claim_does(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On memory and SQLite a claim is queued for the backend (``submit_claim``),
    not run in one of the loop's few worker threads: 64 tasks claim at once,
    sharing the writer's commits, and every outcome is what ``claim`` gives."""

    def no_thread(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a claim took a worker thread")

    async def scenario(idem: AsyncIdempotency) -> None:
        with monkeypatch.context() as patched:
            patched.setattr(asyncio, "to_thread", no_thread)
            firsts = await asyncio.gather(*(idem.attempt(f"k{i}", {"i": i}) for i in range(64)))
            assert [a.replayed for a in firsts] == [False] * 64
            assert {a.token for a in firsts} == {1}
            with pytest.raises(RequestInProgress):
                await idem.attempt("k0", {"i": 0})
            with pytest.raises(IdempotencyKeyReused):
                await idem.attempt("k1", {"i": "another payload"})
        await idem.complete(firsts[2], {"done": 2})  # (a worker thread, as before)
        with monkeypatch.context() as patched:
            patched.setattr(asyncio, "to_thread", no_thread)
            again = await idem.attempt("k2", {"i": 2})
        assert (again.replayed, again.result) == (True, {"done": 2})

    run(url, scenario)


def test_effects_commit_with_the_result_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "idem.db"

    async def scenario(idem: AsyncIdempotency) -> None:
        def ledger(tx: Any) -> None:
            tx.sql.execute("CREATE TABLE IF NOT EXISTS ledger (amount INTEGER)")
            tx.sql.execute("INSERT INTO ledger VALUES (10)")

        def broken(tx: Any) -> None:
            tx.sql.execute("INSERT INTO ledger VALUES (99)")
            raise RuntimeError("the effects failed")

        for _ in range(2):
            async with idem.run("pay", {"amount": 10}) as attempt:
                if not attempt.replayed:
                    await idem.complete(attempt, "ok", effects=ledger)
        with pytest.raises(RuntimeError):
            async with idem.run("other", None) as attempt:
                await idem.complete(attempt, "ok", effects=broken)
        assert await idem.get("other") is None  # neither the row nor the result

    run(str(path), scenario)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT amount FROM ledger").fetchall() == [(10,)]


def test_cancellation_releases_the_key(url: str) -> None:
    async def scenario(idem: AsyncIdempotency) -> None:
        started = asyncio.Event()

        async def forever(attempt: Attempt) -> None:
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(idem.call("k", None, forever))
        await asyncio.wait_for(started.wait(), WAIT_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await idem.get("k") is None
        assert await idem.call("k", None, lambda attempt: "ran again") == "ran again"

    run(url, scenario)


def test_phases_resume_after_a_dead_worker_and_fence_it() -> None:
    now = [1_000_000]

    async def scenario(idem: AsyncIdempotency) -> None:
        steps: list[str] = []

        def step(name: str) -> Callable[[], Awaitable[str]]:
            async def run_step() -> str:
                steps.append(name)
                return f"{name}-output"

            return run_step

        # The first worker reserves, then dies (never completes or releases).
        zombie = await idem.attempt("order", {"n": 1})
        assert await idem.phase(zombie, "reserve", step("reserve")) == "reserve-output"
        now[0] += 1_000  # its lease (500 ms) runs out

        retry = await idem.attempt("order", {"n": 1})
        assert retry.token == zombie.token + 1 and retry.resumed
        assert await idem.phase(retry, "reserve", step("reserve")) == "reserve-output"
        assert await idem.phase(retry, "capture", step("capture")) == "capture-output"
        assert steps == ["reserve", "capture"]  # reserve ran once across both workers
        assert retry.derived_key("capture") == "order:capture"
        await idem.complete(retry, "shipped")

        with pytest.raises(StaleToken):
            await idem.complete(zombie, "late")
        replay = await idem.attempt("order", {"n": 1})
        assert replay.replayed and replay.result == "shipped"

    run("memory://", scenario, clock=lambda: now[0], lease_ms=500)


def test_async_and_sync_facades_share_records(tmp_path: Path) -> None:
    url = str(tmp_path / "idem.db")

    async def scenario(idem: AsyncIdempotency) -> None:
        await idem.call("k", {"a": 1}, lambda attempt: {"stored": "by async"})

    run(url, scenario)
    with Idempotency.open(url, sync="off") as sync_idem:
        replayed: Any = sync_idem.call("k", {"a": 1}, lambda attempt: "not run")
        assert replayed == {"stored": "by async"}


def test_a_closed_store_refuses_calls() -> None:
    async def main() -> None:
        idem = await AsyncIdempotency.open("memory://")
        await idem.close()
        await idem.close()  # idempotent
        with pytest.raises(UsageError, match="closed"):
            await idem.call("k", None, lambda attempt: 1)

    asyncio.run(main())


# --- @idempotent --------------------------------------------------------------------------


class Receipt(msgspec.Struct):
    order_id: str
    amount: int


def test_decorated_function_runs_once_per_key(url: str) -> None:
    charges: list[int] = []
    with Idempotency.open(url, sync="off") as idem:

        @idempotent(idem, key=lambda order_id, amount: f"charge-{order_id}", returns=Receipt)
        def charge(order_id: str, amount: int) -> Receipt:
            """Charge an order."""
            charges.append(amount)
            return Receipt(order_id, amount)

        assert charge.__name__ == "charge" and charge.__doc__ == "Charge an order."
        first = charge("o-1", 10)
        again = charge("o-1", amount=10)  # the same call, spelled with a keyword
        assert charges == [10]
        assert first == again == Receipt("o-1", 10)  # the replay converted back by returns=
        with pytest.raises(IdempotencyKeyReused):
            charge("o-1", 11)
        assert charges == [10]


def test_decorated_async_function_with_a_sync_store(url: str) -> None:
    calls: list[str] = []
    with Idempotency.open(url, sync="off") as idem:

        @idempotent(idem, key=lambda user: f"welcome-{user}", payload=lambda user: user)
        async def welcome(user: str) -> str:
            calls.append(user)
            return f"hello {user}"

        async def main() -> list[str]:
            return [await welcome("ada"), await welcome("ada"), await welcome("bob")]

        assert asyncio.run(main()) == ["hello ada", "hello ada", "hello bob"]
        assert calls == ["ada", "bob"]


def test_decorated_sync_function_with_an_async_store(tmp_path: Path) -> None:
    calls: list[int] = []

    async def open_store() -> AsyncIdempotency:
        return await AsyncIdempotency.open(str(tmp_path / "idem.db"), sync="off")

    aidem = asyncio.run(open_store())

    @idempotent(aidem, key=lambda n: f"n-{n}")
    def square(n: int) -> int:
        calls.append(n)
        return n * n

    assert [square(3), square(3)] == [9, 9] and calls == [3]
    asyncio.run(aidem.close())


@pytest.mark.parametrize("returned", [None, "", 7])
def test_a_key_function_without_a_key_is_a_clear_error(returned: Any) -> None:
    with Idempotency.open("memory://") as idem:

        @idempotent(idem, key=lambda order_id: returned)
        def charge(order_id: str) -> None:
            raise AssertionError("must not run without a key")

        with pytest.raises(UsageError, match=r"key function of @idempotent\(.*charge\)"):
            charge("o-1")


def test_the_decorator_needs_a_key_function() -> None:
    with Idempotency.open("memory://") as idem, pytest.raises(UsageError, match="key="):
        idempotent(idem, key="o-1")  # type: ignore[arg-type]


def test_decorated_errors_follow_the_policy() -> None:
    calls = 0
    with Idempotency.open("memory://", deterministic=(Declined,)) as idem:

        @idempotent(idem, key=lambda card: card)
        def pay(card: str) -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("timeout")
            raise Declined(f"{card} declined")

        with pytest.raises(ConnectionError):
            pay("card-1")
        for _ in range(2):
            with pytest.raises(Declined, match="card-1 declined"):
                pay("card-1")
        assert calls == 2


def test_threads_calling_one_key_with_wait_get_one_result(tmp_path: Path) -> None:
    runs: list[int] = []
    gate = threading.Barrier(8)
    results: list[int] = []
    with Idempotency.open(str(tmp_path / "idem.db"), sync="off") as idem:

        @idempotent(idem, key=lambda n: f"job-{n}", wait_s=WAIT_S)
        def job(n: int) -> int:
            runs.append(n)
            return len(runs)

        def worker() -> None:
            gate.wait()
            results.append(job(1))

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
    assert runs == [1]
    assert results == [1] * 8
