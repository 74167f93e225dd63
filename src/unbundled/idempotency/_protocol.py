"""Idempotency records and the backend protocol every backend implements.

A key's record moves ``in_progress`` (one worker holds a lease, with a fencing
token that grows with every attempt) -> ``completed`` (the stored result is
returned to every retry until the record expires). A transient failure
deletes the in-progress record so that a retry runs again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import msgspec

State = Literal["in_progress", "completed"]


class IdempotencyRecord(msgspec.Struct, frozen=True):
    """What a backend stores per key.

    ``token`` is the fencing token of the attempt that holds (or completed)
    the key: every take-over after an expired lease increments it, and only
    the holder of the current token may record phases, complete or release.
    ``phases`` are recovery points: name -> the output recorded when that
    phase of the handler finished, so a retry after a crash resumes there.
    """

    key: str
    fingerprint: str
    state: State
    token: int
    lease_until_ms: int
    expires_ms: int
    created_ms: int
    updated_ms: int
    result: bytes | None = None
    error: bool = False  # the stored result is a deterministic error
    phases: dict[str, bytes] = msgspec.field(default_factory=dict)


class Claim(NamedTuple):
    """The answer of :meth:`IdempotencyBackend.claim`, in one round trip.

    ``outcome`` is ``"claimed"`` (the caller now holds the key with
    ``record.token``; ``record.phases`` are the recovery points of earlier
    attempts), ``"completed"`` (``record.result`` is the stored answer),
    ``"in_progress"`` (another worker holds a live lease), or ``"mismatch"``
    (the key was used with another fingerprint: ``record`` is that use).
    """

    outcome: Literal["claimed", "completed", "in_progress", "mismatch"]
    record: IdempotencyRecord


class EffectsTxn(Protocol):
    """What ``effects`` may do inside the transaction that stores the result."""

    @property
    def sql(self) -> Any:
        """The DB-API connection inside the transaction (SQLite, PostgreSQL);
        ``NotSupported`` where there is none."""

    def append_events(self, writes: Sequence[Any]) -> list[Any]:
        """Append event-store writes (``StreamWrite``) in this transaction;
        returns their ``AppendResult``\\ s. ``NotSupported`` where the backend
        holds no event store."""


Effects = Callable[[EffectsTxn], None]


@runtime_checkable
class SubmitsClaims(Protocol):
    """A backend whose claims an event loop awaits without a worker thread:
    the claim is queued (for the writer that shares its commits) and ``done``
    receives the ``Claim`` -- or the error -- as ``claim`` would return it. An
    error known before anything is queued (closed, read-only) raises at once."""

    def submit_claim(
        self, key: str, fingerprint: str, lease_ms: int, retention_ms: int, done: Any
    ) -> None:
        """Queue ``claim(key, fingerprint, lease_ms, retention_ms)``; answer ``done``."""


@runtime_checkable
class IdempotencyBackend(Protocol):
    """Storage for idempotency keys. Every method is one round trip (one
    transaction, one Lua script) and safe to call from any thread."""

    def claim(self, key: str, fingerprint: str, lease_ms: int, retention_ms: int) -> Claim:
        """Create the record as ``in_progress`` with token 1, or take over an
        expired lease (token + 1, phases kept), or report what is there
        (completed, in progress, or a fingerprint mismatch). An expired
        record (past ``expires_ms``) counts as absent."""

    def complete(
        self,
        key: str,
        token: int,
        result: bytes,
        error: bool,
        retention_ms: int,
        effects: Effects | None = None,
    ) -> IdempotencyRecord:
        """Store the result if ``token`` still holds the key, running
        ``effects`` in the same transaction: the effects and the result commit
        together or not at all. Raises ``StaleToken`` (and stores nothing, runs
        no effects) if another attempt took over; ``NotSupported`` for effects
        on a backend that cannot join them to the result."""

    def record_phase(self, key: str, token: int, phase: str, output: bytes) -> None:
        """Record a recovery point, fenced like :meth:`complete`."""

    def release(self, key: str, token: int) -> None:
        """Delete the in-progress record (a transient failure: let a retry run
        again). Fenced; a no-op if the key is not held with ``token``. If the
        attempt recorded phases, keep the record and give up only its lease
        (``_core.after_release``): the retry takes over and resumes there."""

    def get(self, key: str) -> IdempotencyRecord | None:
        """The record, or None (also for an expired one)."""

    def list_records(self, state: State | None, after: str, limit: int) -> list[IdempotencyRecord]:
        """Records with keys greater than ``after``, sorted, optionally of one state."""

    def purge_expired(self) -> int:
        """Delete records past their expiry; return how many."""

    def wait_for_key(self, key: str, timeout_s: float) -> IdempotencyRecord | None:
        """Block until the key is no longer ``in_progress`` with a live lease
        (completed, released, or its lease expired) or the timeout passes;
        return the record then. Never busy-spins."""
