"""Idempotency keys: a retried request takes effect once.

>>> from unbundled.idempotency import Idempotency
>>> idem = Idempotency.open("memory://")
>>> calls = []
>>> def charge(attempt):
...     calls.append(1)
...     return {"charged": 10}
>>> idem.call("order-7", {"amount": 10}, charge)
{'charged': 10}
>>> idem.call("order-7", {"amount": 10}, charge)  # a retry: stored result, no second charge
{'charged': 10}
>>> len(calls)
1
>>> idem.close()
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec

from .. import _registry, limits
from .._bounds import check_int, check_optional_seconds
from .._ground import SyncLevel
from .._registry import IDEMPOTENCY
from ..errors import (
    Closed,
    IdempotencyKeyReused,
    LimitExceeded,
    RequestInProgress,
    StaleToken,
    UsageError,
)
from . import _core
from ._protocol import Effects, IdempotencyBackend, IdempotencyRecord, State

R = TypeVar("R")

_encode = msgspec.json.encode


class ReplayedError(Exception):
    """A stored deterministic error whose class could not be rebuilt on replay."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class _StoredError(msgspec.Struct, frozen=True):
    kind: str
    message: str
    # The ``deterministic`` class it was caught as (``kind`` may be a subclass
    # of it): a replay rebuilds that one when it cannot rebuild ``kind``.
    declared: str = ""


def _class_name(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Attempt:
    """One attempt at the work behind a key (see :meth:`Idempotency.run`).

    ``replayed`` is True when the key was already completed: then ``result``
    (or ``error``) is the stored answer and nothing must run. Otherwise this
    attempt holds the key with ``token`` until :meth:`complete`.
    """

    def __init__(self, idem: IdempotencyBase, record: IdempotencyRecord, replayed: bool) -> None:
        self._idem = idem
        self._claimed_s = time.monotonic()
        self.key = record.key
        self.token = record.token
        self.replayed = replayed
        self.record = record
        self.completed = replayed
        self.result: Any = None
        self.error: BaseException | None = None
        if replayed:
            self.result, self.error = idem._replay(record)

    @property
    def resumed(self) -> bool:
        """True if an earlier attempt died after recording some phases."""
        return bool(self.record.phases) and not self.replayed

    def derived_key(self, name: str) -> str:
        """An idempotency key for a downstream call, stable across retries of
        this request (Stripe's practice): the same request always sends the
        same key downstream."""
        return _core.check_key(f"{self.key}:{name}")

    def outlived_retention(self) -> bool:
        """A zombie that outlived the record's retention could meet a later
        request's record under the same key, restarted at the same token (an
        expired record may have been purged): such an attempt must not touch
        the backend any more. Measured on this process's monotonic clock."""
        return (time.monotonic() - self._claimed_s) * 1000 >= self._idem.retention_ms

    def _check_held(self) -> None:
        if self.completed:
            raise UsageError(f"the attempt at {self.key!r} is already completed")
        if self.outlived_retention():
            raise StaleToken(
                f"the attempt at idempotency key {self.key!r} is older than the retention "
                f"period ({self._idem.retention_ms} ms): its record may be gone and reused",
                key=self.key,
                token=self.token,
            )


class IdempotencyBase:
    """Settings and result encoding shared by the sync and async facades."""

    _shared = False  # True for a part of a Database, which owns the backend

    def __init__(
        self,
        backend: IdempotencyBackend,
        *,
        lease_ms: int = limits.idempotency_lease_ms_default,
        retention_ms: int = limits.idempotency_retention_ms_default,
        fingerprint: bool = True,
        deterministic: tuple[type[BaseException], ...] = (),
        encode: Callable[[Any], bytes] = _encode,
        decode: Callable[[bytes], Any] = msgspec.json.decode,
    ) -> None:
        check_int("lease_ms", lease_ms, limits.lease_ms_min, limits.idempotency_lease_ms_max)
        check_int(
            "retention_ms", retention_ms, limits.lease_ms_min, limits.idempotency_retention_ms_max
        )
        if retention_ms < lease_ms:
            raise UsageError("retention_ms must be at least lease_ms")
        self.backend = backend
        self.lease_ms = lease_ms
        self.retention_ms = retention_ms
        self.fingerprinting = fingerprint
        self.deterministic = tuple(deterministic)
        self._encode = encode
        self._decode = decode
        self._closed = False

    @staticmethod
    def _check_wait(wait_s: float | None) -> float | None:
        return check_optional_seconds("wait_s", wait_s)

    @staticmethod
    def _check_list_limit(limit: int) -> int:
        # Backends read 0 and -1 differently: never let them see either.
        return check_int("limit", limit, 1, limits.read_records_max)

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("the idempotency store is closed")

    def fingerprint(self, payload: Any) -> str:
        """The fingerprint stored with a key for ``payload``: a SHA-256 prefix
        of its canonical form (bytes as they are; anything else as JSON with sorted
        keys, so dict order does not matter). A key claimed again with a payload of
        another fingerprint raises ``IdempotencyKeyReused``. With ``fingerprint=False``
        every payload gets the same one, so that check is off. Raises ``UsageError``
        for a payload that cannot be encoded as JSON. Pure: no I/O."""
        return _core.fingerprint(payload if self.fingerprinting else None)

    def _encode_result(self, result: Any) -> bytes:
        """The stored form of a result or phase output: ``UsageError`` naming
        its type if it cannot be encoded (before anything is stored)."""
        try:
            raw = self._encode(result)
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            kind = type(result).__name__
            raise UsageError(
                f"cannot store a result of type {kind}: {exc}; return JSON-encodable "
                "values (dict, list, str, int, float, bool, None, msgspec Structs, "
                "dataclasses) or open the store with encode= and decode=",
                type=kind,
            ) from None
        if len(raw) > limits.idempotency_result_bytes_max:
            raise LimitExceeded(
                f"a result of {len(raw)} bytes exceeds {limits.idempotency_result_bytes_max}"
            )
        return raw

    def _encode_error(self, error: BaseException) -> bytes:
        kind = _class_name(type(error))
        declared = next((_class_name(c) for c in self.deterministic if isinstance(error, c)), "")
        return _encode(_StoredError(kind, str(error), declared))

    def _replay(self, record: IdempotencyRecord) -> tuple[Any, BaseException | None]:
        assert record.result is not None
        if not record.error:
            return self._decode(record.result), None
        stored = msgspec.json.decode(record.result, type=_StoredError)
        for name in (stored.kind, stored.declared):
            for cls in self.deterministic:
                if _class_name(cls) == name:
                    try:
                        return None, cls(stored.message)
                    except TypeError:
                        break
        return None, ReplayedError(stored.kind, stored.message)

    def _mismatch(self, key: str) -> IdempotencyKeyReused:
        return IdempotencyKeyReused(
            f"idempotency key {key!r} was already used with a different request "
            "(its payload fingerprint differs): use a new key for a new request",
            key=key,
        )

    def _busy(self, key: str, record: IdempotencyRecord) -> RequestInProgress:
        return RequestInProgress(
            f"a request with idempotency key {key!r} is still in progress "
            f"(attempt {record.token}); retry later",
            key=key,
            token=record.token,
        )


class Idempotency(IdempotencyBase):
    """Idempotency keys over any backend. See the module docstring."""

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str] = "unbundled.db",
        *,
        sync: SyncLevel = "full",
        **options: Any,
    ) -> Idempotency:
        """Open the store at ``url``: a SQLite file (a path or
        ``sqlite:///path.db``; ``?mode=ro`` opens it read-only), ``memory://``,
        ``postgresql://user@host/db?schema=name`` or
        ``redis://host:port/db?prefix=name``; ``nats://`` does not serve
        idempotency keys (``NotSupported``). Options named like the settings
        (``lease_ms``, ``retention_ms``, ``fingerprint``, ``deterministic``,
        ``encode``, ``decode``) configure the facade, the rest go to the backend."""
        settings = {k: options.pop(k) for k in list(options) if k in _SETTINGS}
        backend: Any = _registry.open(url, serving=IDEMPOTENCY, sync=sync, **options)
        return cls(backend, **settings)

    def __enter__(self) -> Idempotency:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the backend (a SQLite backend finishes its queued writes first).
        Idempotent; afterwards every call raises ``Closed``."""
        if not self._closed:
            self._closed = True
            if self._shared:  # a Database's part: closing the database closes it
                return
            close = getattr(self.backend, "close", None)
            if close is not None:
                close()

    # --- the work -------------------------------------------------------------

    def attempt(self, key: str, payload: Any = None, *, wait_s: float | None = None) -> Attempt:
        """Claim ``key`` (or find its stored result): one backend round trip.
        Prefer :meth:`run`, which also releases the key when the work fails;
        an attempt taken here must end in :meth:`complete`, :meth:`fail`,
        a transaction's ``tx.complete`` or :meth:`release` (else it holds the
        key until its lease runs out). Raises ``IdempotencyKeyReused`` and
        ``RequestInProgress`` like :meth:`call`."""
        return self._attempt(key, payload, wait_s)

    def release(self, attempt: Attempt) -> None:
        """Give the key up without a result (a transient failure): the next
        retry runs the work again, resuming after the phases this attempt
        recorded. A no-op for a replayed or finished attempt, and when another
        attempt took the key over."""
        if not attempt.completed:
            self._release(attempt)

    def _attempt(self, key: str, payload: Any, wait_s: float | None) -> Attempt:
        self._check_open()
        _core.check_key(key)
        wait_s = self._check_wait(wait_s)
        fp = self.fingerprint(payload)
        while True:
            claim = self.backend.claim(key, fp, self.lease_ms, self.retention_ms)
            if claim.outcome == "claimed":
                return Attempt(self, claim.record, replayed=False)
            if claim.outcome == "completed":
                return Attempt(self, claim.record, replayed=True)
            if claim.outcome == "mismatch":
                raise self._mismatch(key)
            if wait_s is None or wait_s <= 0:
                raise self._busy(key, claim.record)
            # Wait for the first request's result (or its lease to run out).
            started = time.monotonic()
            self.backend.wait_for_key(key, wait_s)
            wait_s -= time.monotonic() - started

    @contextlib.contextmanager
    def run(
        self, key: str, payload: Any = None, *, wait_s: float | None = None
    ) -> Iterator[Attempt]:
        """``with idem.run(key, payload) as attempt:`` — if ``attempt.replayed``,
        use ``attempt.result``; else do the work and call
        ``self.complete(attempt, result, effects=...)``. An exception in the
        block releases the key (a retry runs again), unless it is one of the
        ``deterministic`` errors, which is stored and replayed."""
        attempt = self._attempt(key, payload, wait_s)
        if attempt.replayed:
            yield attempt
            return
        try:
            yield attempt
        except self.deterministic as exc:
            if not attempt.completed:
                self.fail(attempt, exc)
            raise
        except BaseException:
            if not attempt.completed:
                self._release(attempt)
            raise
        if not attempt.completed:
            self._release(attempt)
            raise UsageError(
                f"the block for idempotency key {key!r} ended without complete(): released"
            )

    def call(
        self,
        key: str,
        payload: Any,
        handler: Callable[[Attempt], R],
        *,
        wait_s: float | None = None,
    ) -> R:
        """Run ``handler(attempt)`` once per key: a retry gets the stored result
        (or the stored deterministic error, raised again). Raises
        ``IdempotencyKeyReused`` for the same key with another payload, and
        ``RequestInProgress`` while the first is running (unless ``wait_s``)."""
        with self.run(key, payload, wait_s=wait_s) as attempt:
            if attempt.replayed:
                if attempt.error is not None:
                    raise attempt.error
                result: R = attempt.result
                return result
            result = handler(attempt)
            if not attempt.completed:
                self.complete(attempt, result)
            return result

    def phase(self, attempt: Attempt, name: str, step: Callable[[], R]) -> R:
        """A recovery point: run ``step`` unless an earlier attempt recorded
        it, then record its output. After a crash, a retry skips the phases
        that finished and resumes at the first one that did not."""
        attempt._check_held()
        _core.check_phase(name)
        if name in attempt.record.phases:
            done: R = self._decode(attempt.record.phases[name])
            return done
        output = step()
        raw = self._encode_result(output)
        self.backend.record_phase(attempt.key, attempt.token, name, raw)
        attempt.record = msgspec.structs.replace(
            attempt.record, phases={**attempt.record.phases, name: raw}
        )
        return output

    def complete(self, attempt: Attempt, result: Any, *, effects: Effects | None = None) -> None:
        """Store the result; with ``effects``, run them in the same backend
        transaction, so a crash leaves either both or neither. Raises
        ``StaleToken`` if this attempt's lease expired and another took over
        (then nothing is stored and the effects do not run)."""
        attempt._check_held()
        self.backend.complete(
            attempt.key,
            attempt.token,
            self._encode_result(result),
            False,
            self.retention_ms,
            effects,
        )
        attempt.completed = True
        attempt.result = result

    def fail(self, attempt: Attempt, error: BaseException) -> None:
        """Store a deterministic error: retries get it again, without running."""
        attempt._check_held()
        self.backend.complete(
            attempt.key, attempt.token, self._encode_error(error), True, self.retention_ms
        )
        attempt.completed = True
        attempt.error = error

    def _release(self, attempt: Attempt) -> None:
        if not attempt.outlived_retention():
            with contextlib.suppress(StaleToken):  # someone else holds it now: nothing to undo
                self.backend.release(attempt.key, attempt.token)
        attempt.completed = True

    # --- inspection -----------------------------------------------------------

    def get(self, key: str) -> IdempotencyRecord | None:
        """The record of ``key`` (state, fencing token, lease, expiry, the stored
        result still encoded, recorded phases), or ``None`` if there is none or it
        expired. Only reads: claims nothing, waits for nothing. Raises ``UsageError``
        for a bad key."""
        self._check_open()
        return self.backend.get(_core.check_key(key))

    def records(
        self, *, state: State | None = None, after: str = "", limit: int = 1000
    ) -> list[IdempotencyRecord]:
        """The records with keys greater than ``after``, sorted by key, at most
        ``limit``, optionally only those in ``state`` (``"in_progress"`` or
        ``"completed"``); expired records are left out. Page by passing the last key
        as ``after``. Only reads. Raises ``UsageError`` for a bad ``state`` or a
        ``limit`` below 1."""
        self._check_open()
        if state not in (None, "in_progress", "completed"):
            raise UsageError(f"state must be 'in_progress' or 'completed', got {state!r}")
        return self.backend.list_records(state, after, self._check_list_limit(limit))

    def purge_expired(self) -> int:
        """Delete the records past their expiry and return how many. Expired
        records already count as absent (a claim starts afresh), so this only frees
        space; run it now and then, from any process. Idempotent: a second call
        right after finds nothing to delete."""
        self._check_open()
        return self.backend.purge_expired()


_SETTINGS = {"lease_ms", "retention_ms", "fingerprint", "deterministic", "encode", "decode"}
