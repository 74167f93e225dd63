"""The asyncio twin of :mod:`unbundled.idempotency.api`: ``AsyncIdempotency``.

Same semantics as :class:`~unbundled.idempotency.Idempotency`, as coroutines.
Every backend call is blocking (a SQLite transaction, a server round trip),
so it runs in a worker thread: the event loop never waits on storage.
Settings, validation, fingerprints and result encoding come from
:class:`~unbundled.idempotency.api.IdempotencyBase`, so both facades store and
replay exactly the same records and can share one backend.

>>> import asyncio
>>> from unbundled.idempotency import AsyncIdempotency
>>> calls = []
>>> async def charge(attempt):
...     calls.append(1)
...     return {"charged": 10}
>>> async def main():
...     async with await AsyncIdempotency.open("memory://") as idem:
...         first = await idem.call("order-7", {"amount": 10}, charge)
...         again = await idem.call("order-7", {"amount": 10}, charge)  # stored, not run
...         return first, again
>>> asyncio.run(main())
({'charged': 10}, {'charged': 10})
>>> len(calls)
1
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar, overload

import msgspec

from .. import _registry
from .._ground import SyncLevel
from .._ground.waiters import AsyncWaiter
from .._registry import IDEMPOTENCY
from ..errors import StaleToken, UsageError
from . import _core
from ._protocol import Claim, Effects, IdempotencyRecord, State, SubmitsClaims
from .api import _SETTINGS, Attempt, IdempotencyBase

R = TypeVar("R")
T = TypeVar("T")


async def _call_maybe_async(fn: Callable[..., Any], *args: Any) -> Any:
    """Await an async callable; run a sync one in a worker thread (it may block,
    as Starlette runs sync endpoints); await whatever awaitable it returns."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        result = await result
    return result


class AsyncIdempotency(IdempotencyBase):
    """Idempotency keys for asyncio programs. See the module docstring and
    :class:`unbundled.idempotency.Idempotency` for the semantics."""

    @classmethod
    async def open(
        cls,
        url: str | os.PathLike[str] = "unbundled.db",
        *,
        sync: SyncLevel = "full",
        **options: Any,
    ) -> AsyncIdempotency:
        """Open the store at ``url``, as :meth:`Idempotency.open` does (a
        SQLite file, ``memory://``, ``postgresql://`` or ``redis://``); options
        named like the settings (``lease_ms``, ``retention_ms``, ``fingerprint``,
        ``deterministic``, ``encode``, ``decode``) configure the facade, the
        rest go to the backend. Opening may create or migrate a file, so it
        runs in a worker thread."""
        settings = {k: options.pop(k) for k in list(options) if k in _SETTINGS}
        opening = partial(_registry.open, url, serving=IDEMPOTENCY, sync=sync, **options)
        backend: Any = await asyncio.to_thread(opening)
        return cls(backend, **settings)

    async def _claim(self, key: str, fingerprint: str) -> Claim:
        """One claim. A backend that queues claims for its writer answers the
        loop directly; others are called in a worker thread, of which the loop
        has few (64 tasks claiming at once would wait for them in turn)."""
        backend, lease_ms, retention_ms = self.backend, self.lease_ms, self.retention_ms
        if not isinstance(backend, SubmitsClaims):
            return await self._run(backend.claim, key, fingerprint, lease_ms, retention_ms)
        self._check_open()
        waiter = AsyncWaiter()
        backend.submit_claim(key, fingerprint, lease_ms, retention_ms, waiter)
        claim: Claim = await waiter.future
        return claim

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        self._check_open()
        return await asyncio.to_thread(fn, *args)

    async def _run_shielded(self, fn: Callable[..., T], *args: Any) -> T:
        """A state change that must not be abandoned half way by a cancelled
        task: the caller may stop waiting, the thread finishes regardless, and
        shielding keeps its outcome (or error) attached to the future."""
        self._check_open()
        return await asyncio.shield(asyncio.to_thread(fn, *args))

    async def __aenter__(self) -> AsyncIdempotency:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the backend. Idempotent."""
        if not self._closed:
            self._closed = True
            if self._shared:  # a Database's part: closing the database closes it
                return
            close = getattr(self.backend, "close", None)
            if close is not None:
                await asyncio.to_thread(close)

    # --- the work -------------------------------------------------------------

    async def attempt(
        self, key: str, payload: Any = None, *, wait_s: float | None = None
    ) -> Attempt:
        """Claim ``key`` (or find its stored result): one backend round trip.
        Prefer :meth:`run`, which also releases the key when the work fails;
        an attempt taken here must end in :meth:`complete`, :meth:`fail` or
        :meth:`release` (else it holds the key until its lease runs out).
        Raises ``IdempotencyKeyReused`` and ``RequestInProgress`` like
        :meth:`unbundled.idempotency.Idempotency.call`."""
        self._check_open()
        _core.check_key(key)
        wait_s = self._check_wait(wait_s)
        fp = self.fingerprint(payload)
        while True:
            claim = await self._claim(key, fp)
            if claim.outcome == "claimed":
                return Attempt(self, claim.record, replayed=False)
            if claim.outcome == "completed":
                return Attempt(self, claim.record, replayed=True)
            if claim.outcome == "mismatch":
                raise self._mismatch(key)
            if wait_s is None or wait_s <= 0:
                raise self._busy(key, claim.record)
            # Waiting occupies a worker thread (the backends' waits block):
            # fine for a few waiters; a server answers 409 instead of waiting.
            started = time.monotonic()
            await self._run(self.backend.wait_for_key, key, wait_s)
            wait_s -= time.monotonic() - started

    @contextlib.asynccontextmanager
    async def run(
        self, key: str, payload: Any = None, *, wait_s: float | None = None
    ) -> AsyncIterator[Attempt]:
        """``async with idem.run(key, payload) as attempt:`` — if
        ``attempt.replayed``, use ``attempt.result``; else do the work and
        ``await idem.complete(attempt, result, effects=...)``. An exception in
        the block (cancellation included) releases the key, unless it is one
        of the ``deterministic`` errors, which is stored and replayed."""
        attempt = await self.attempt(key, payload, wait_s=wait_s)
        if attempt.replayed:
            yield attempt
            return
        try:
            yield attempt
        except self.deterministic as exc:
            if not attempt.completed:
                await self.fail(attempt, exc)
            raise
        except BaseException:
            if not attempt.completed:
                await self.release(attempt)
            raise
        if not attempt.completed:
            await self.release(attempt)
            raise UsageError(
                f"the block for idempotency key {key!r} ended without complete(): released"
            )

    # An async handler's awaitable is awaited: overloads, so that its result
    # type (not the coroutine) is what the caller gets.
    @overload
    async def call(
        self,
        key: str,
        payload: Any,
        handler: Callable[[Attempt], Awaitable[R]],
        *,
        wait_s: float | None = None,
    ) -> R: ...

    @overload
    async def call(
        self,
        key: str,
        payload: Any,
        handler: Callable[[Attempt], R],
        *,
        wait_s: float | None = None,
    ) -> R: ...

    async def call(
        self,
        key: str,
        payload: Any,
        handler: Callable[[Attempt], Any],
        *,
        wait_s: float | None = None,
    ) -> Any:
        """Run ``handler(attempt)`` once per key; a retry gets the stored result
        (or the stored deterministic error, raised again). ``handler`` may be
        an async function (awaited on this loop) or a plain one (run in a
        worker thread). Raises ``IdempotencyKeyReused`` for the same key with
        another payload and ``RequestInProgress`` while the first is running
        (unless ``wait_s``)."""
        async with self.run(key, payload, wait_s=wait_s) as attempt:
            if attempt.replayed:
                if attempt.error is not None:
                    raise attempt.error
                return attempt.result
            result = await _call_maybe_async(handler, attempt)
            if not attempt.completed:
                await self.complete(attempt, result)
            return result

    @overload
    async def phase(self, attempt: Attempt, name: str, step: Callable[[], Awaitable[R]]) -> R: ...

    @overload
    async def phase(self, attempt: Attempt, name: str, step: Callable[[], R]) -> R: ...

    async def phase(self, attempt: Attempt, name: str, step: Callable[[], Any]) -> Any:
        """A recovery point (see :meth:`unbundled.idempotency.Idempotency.phase`):
        run ``step`` (async, or plain in a worker thread) unless an earlier
        attempt recorded it, then record its output."""
        attempt._check_held()
        _core.check_phase(name)
        if name in attempt.record.phases:
            return self._decode(attempt.record.phases[name])
        output = await _call_maybe_async(step)
        raw = self._encode_result(output)
        await self._run_shielded(self.backend.record_phase, attempt.key, attempt.token, name, raw)
        attempt.record = msgspec.structs.replace(
            attempt.record, phases={**attempt.record.phases, name: raw}
        )
        return output

    async def complete(
        self, attempt: Attempt, result: Any, *, effects: Effects | None = None
    ) -> None:
        """Store the result; ``effects`` (a plain function: it runs in the
        backend's transaction, in the worker thread) commit with it or not at
        all. Raises ``StaleToken`` if another attempt took over the key."""
        attempt._check_held()
        raw = self._encode_result(result)
        await self._run_shielded(
            self.backend.complete,
            attempt.key,
            attempt.token,
            raw,
            False,
            self.retention_ms,
            effects,
        )
        attempt.completed = True
        attempt.result = result

    async def fail(self, attempt: Attempt, error: BaseException) -> None:
        """Store a deterministic error: retries get it again, without running."""
        attempt._check_held()
        raw = self._encode_error(error)
        await self._run_shielded(
            self.backend.complete, attempt.key, attempt.token, raw, True, self.retention_ms
        )
        attempt.completed = True
        attempt.error = error

    async def release(self, attempt: Attempt) -> None:
        """Give the key up without a result (a transient failure): the next
        retry runs the work again, resuming after the phases this attempt
        recorded. A no-op for a replayed or finished attempt, and when another
        attempt took the key over."""
        if attempt.completed:
            return
        if attempt.outlived_retention():  # its record may be someone else's now
            attempt.completed = True
            return
        with contextlib.suppress(StaleToken):  # someone else holds it now: nothing to undo
            await self._run_shielded(self.backend.release, attempt.key, attempt.token)
        attempt.completed = True

    # --- inspection -----------------------------------------------------------

    async def get(self, key: str) -> IdempotencyRecord | None:
        """Async twin of :meth:`unbundled.Idempotency.get` (the read runs in a worker thread)."""
        return await self._run(self.backend.get, _core.check_key(key))

    async def records(
        self, *, state: State | None = None, after: str = "", limit: int = 1000
    ) -> list[IdempotencyRecord]:
        """Async twin of :meth:`unbundled.Idempotency.records`."""
        if state not in (None, "in_progress", "completed"):
            raise UsageError(f"state must be 'in_progress' or 'completed', got {state!r}")
        return await self._run(
            self.backend.list_records, state, after, self._check_list_limit(limit)
        )

    async def purge_expired(self) -> int:
        """Async twin of :meth:`unbundled.Idempotency.purge_expired`."""
        return await self._run(self.backend.purge_expired)
