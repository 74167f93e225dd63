"""Group-commit completions: every caller gets its own result, the baton
chain never stalls, and asyncio futures resolve on their own loops."""

from __future__ import annotations

import asyncio
import threading

import pytest

from unbundled._waiters import AsyncWaiter, SyncWaiter, complete_all
from unbundled.errors import ConflictError


def test_each_sync_waiter_gets_its_own_result_through_the_chain() -> None:
    waiters = [SyncWaiter() for _ in range(50)]
    got: dict[int, object] = {}

    def wait(i: int) -> None:
        try:
            got[i] = waiters[i].wait()
        except ConflictError as exc:
            got[i] = exc

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    results: list[object] = [ConflictError("no", i=i) if i % 7 == 0 else i for i in range(50)]
    complete_all(zip(waiters, results, strict=True))
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive(), "a waiter was never woken: the chain stalled"
    for i in range(50):
        if i % 7 == 0:
            error = got[i]
            assert isinstance(error, ConflictError) and error.details == {"i": i}
        else:
            assert got[i] == i


def test_a_waiter_that_stopped_waiting_still_passes_the_baton() -> None:
    """The interrupted-waiter path: its rescue thread takes its turn."""
    head, middle, tail = SyncWaiter(), SyncWaiter(), SyncWaiter()
    rescue = threading.Thread(target=head._rescue)
    rescue.start()  # what wait() starts when Ctrl-C interrupts it
    done: list[object] = []
    waiters = [threading.Thread(target=lambda w=w: done.append(w.wait())) for w in (middle, tail)]
    for thread in waiters:
        thread.start()
    complete_all([(head, "h"), (middle, "m"), (tail, "t")])
    for thread in [rescue, *waiters]:
        thread.join(10)
        assert not thread.is_alive()
    assert sorted(map(str, done)) == ["m", "t"]


def test_async_waiters_resolve_on_their_loop_in_one_batch() -> None:
    async def main() -> list[object]:
        waiters = [AsyncWaiter() for _ in range(5)]
        values: list[object] = [1, 2, ValueError("x"), 4, 5]
        threading.Thread(
            target=complete_all, args=(list(zip(waiters, values, strict=True)),)
        ).start()
        return list(await asyncio.gather(*(w.future for w in waiters), return_exceptions=True))

    out = asyncio.run(main())
    assert out[:2] == [1, 2] and out[3:] == [4, 5]
    assert isinstance(out[2], ValueError)


def test_completing_for_a_closed_loop_is_harmless() -> None:
    async def make() -> AsyncWaiter:
        return AsyncWaiter()

    waiter = asyncio.run(make())  # its loop is closed when run() returns
    complete_all([(waiter, 1)])
    with pytest.raises(asyncio.InvalidStateError):
        waiter.future.result()
