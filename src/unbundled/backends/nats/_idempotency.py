"""Idempotency keys on the NATS backend's KV bucket.

A key's record (``idempotency._core.encode_record``, JSON) is the latest
message of the subject ``$KV.<bucket>.unbundled-idempotency.<encoded key>``:
two tokens after the bucket, where the key-value store's keys are always one
(``encode_key`` escapes every ``.``), so the two never meet in one bucket.

Every transition is the key-value store's: *read the latest message, decide
with the shared rules of* ``idempotency._core`` *(the memory backend's),
publish with* ``Nats-Expected-Last-Subject-Sequence`` *= the sequence read*.
The stream leader stores the message only if no other change of the key came
in between, so two workers racing for a key cannot both claim it, and a
completion by a stale token is refused (``StaleToken``) as everywhere.

Time: leases and expiry are read off this process's clock (``now_ms``), as on
SQLite and PostgreSQL; app servers on several hosts need clocks that agree to
well within a lease. An expired record is deleted by ``purge_expired`` (a
NATS delete marker; nothing of it is read back, as the record counts as absent).

Effects (``complete(effects=...)``, ``db.transaction()``) cannot join the
record: a message in JetStream shares no transaction with anything else, so
they raise ``NotSupported`` (after the token is checked), as on Redis.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from nats.js import errors as js_errors

from ...errors import CorruptionError, LimitExceeded, NotSupported, Unavailable
from ...idempotency import _core
from ...idempotency._protocol import Claim, Effects, IdempotencyRecord, State
from ._kv import (
    CONFLICT_RETRIES_MAX,
    EXPECTED_LAST_HEADER,
    WRONG_LAST_CODES,
    decode_key,
    encode_key,
    headers_size,
)

T = TypeVar("T")

NAMESPACE = "unbundled-idempotency"
# wait_for_key polls, as on Redis: a lease running out is not an event the
# server can publish. First after 5 ms, doubling up to 50 ms.
_POLL_FIRST_S = 0.005
_POLL_MAX_S = 0.05
_HEADERS_BYTES = headers_size({EXPECTED_LAST_HEADER: "9" * 20})

EFFECTS_NOT_SUPPORTED = (
    "the nats backend cannot run effects in the transaction that stores the result: a "
    "message in JetStream shares no transaction with writes anywhere else. Complete "
    "without effects, and make each effect idempotent downstream: derive its event ids or "
    "idempotency keys from the request key (attempt.derived_key(name)), so that a retry "
    "after a crash between the effect and the stored result is deduplicated where the "
    "effect lands (docs/how-to/idempotency-redis.md says the same of Redis)"
)


class NatsIdempotency:
    """The :class:`~unbundled.idempotency._protocol.IdempotencyBackend` methods
    of :class:`unbundled.backends.nats.NatsBackend`."""

    bucket: str
    url: str
    _stream: str
    _js: Any  # nats.js.JetStreamContext, untyped
    _run: Callable[[Callable[[], Awaitable[Any]], str], Any]
    _payload_bytes_max: Callable[[], int]
    _last_message: Callable[[str], Awaitable[Any]]
    clock: Callable[[], int]

    def _idem_subject(self, key: str) -> str:
        return f"$KV.{self.bucket}.{NAMESPACE}.{encode_key(key)}"

    async def _idem_latest(self, key: str) -> tuple[IdempotencyRecord | None, int]:
        """The key's record and the stream sequence of its message (``None, 0``
        if there is none, or its last message is a delete)."""
        msg = await self._last_message(self._idem_subject(key))
        if msg is None:
            return None, 0
        data: bytes = msg.data or b""
        if not data:  # our purge's delete marker
            return None, int(msg.seq)
        try:
            record = _core.decode_record(data)
        except msgspec.DecodeError as exc:
            raise CorruptionError(
                f"idempotency key {key!r} in NATS bucket {self.bucket!r} holds a message "
                f"that is not an idempotency record (stream sequence {msg.seq}): {exc}",
                key=key,
                bucket=self.bucket,
            ) from exc
        if record.key != key:
            raise CorruptionError(
                f"idempotency key {key!r} in NATS bucket {self.bucket!r} holds the record "
                f"of key {record.key!r} (stream sequence {msg.seq})",
                key=key,
                bucket=self.bucket,
            )
        return record, int(msg.seq)

    async def _idem_publish(self, key: str, record: IdempotencyRecord | None, last: int) -> bool:
        """Store ``record`` (None: a delete) if the key's latest message is still
        at ``last``; False if another change came first."""
        body = b"" if record is None else _core.encode_record(record)
        limit = self._payload_bytes_max() - _HEADERS_BYTES
        if len(body) > limit:
            raise LimitExceeded(
                f"the record of idempotency key {key!r} is {len(body)} bytes with its result "
                f"and phases; this NATS server takes messages of at most {limit} bytes (its "
                "max_payload, 1 MiB by default): store a smaller result, or raise max_payload",
                key=key,
                size=len(body),
                limit=limit,
            )
        try:
            await self._js.publish(
                self._idem_subject(key), body, headers={EXPECTED_LAST_HEADER: str(last)}
            )
        except js_errors.APIError as exc:
            if exc.err_code in WRONG_LAST_CODES:
                return False
            raise
        return True

    def _idem_change(
        self,
        key: str,
        decide: Callable[[IdempotencyRecord | None, int], tuple[bool, IdempotencyRecord | None, T]],
        what: str,
    ) -> T:
        """Read, ``decide(record, now)`` -> (store?, record to store or None for
        a delete, answer), publish conditionally; start over on a lost race."""

        async def attempt() -> T:
            for _ in range(CONFLICT_RETRIES_MAX):
                record, last = await self._idem_latest(key)
                store, new, answer = decide(record, self.clock())
                if not store or await self._idem_publish(key, new, last):
                    return answer
            raise Unavailable(
                f"idempotency key {key!r} in NATS bucket {self.bucket!r} changed under every "
                f"one of {CONFLICT_RETRIES_MAX} attempts to change it; nothing was changed",
                key=key,
                url=self.url,
            )

        result: T = self._run(attempt, f"{what} of idempotency key {key!r}")
        return result

    def claim(self, key: str, fingerprint: str, lease_ms: int, retention_ms: int) -> Claim:
        def decide(
            record: IdempotencyRecord | None, now: int
        ) -> tuple[bool, IdempotencyRecord | None, Claim]:
            claim, new = _core.decide_claim(record, key, fingerprint, now, lease_ms, retention_ms)
            return new is not None, new, claim

        return self._idem_change(key, decide, "a claim")

    def complete(
        self,
        key: str,
        token: int,
        result: bytes,
        error: bool,
        retention_ms: int,
        effects: Effects | None = None,
    ) -> IdempotencyRecord:
        def decide(
            record: IdempotencyRecord | None, now: int
        ) -> tuple[bool, IdempotencyRecord | None, IdempotencyRecord]:
            done = _core.decide_complete(record, key, token, result, error, now, retention_ms)
            if effects is not None:  # the token was good: say why the effects cannot run
                raise NotSupported(EFFECTS_NOT_SUPPORTED, key=key)
            return True, done, done

        return self._idem_change(key, decide, "a completion")

    def record_phase(self, key: str, token: int, phase: str, output: bytes) -> None:
        def decide(
            record: IdempotencyRecord | None, now: int
        ) -> tuple[bool, IdempotencyRecord | None, None]:
            return True, _core.decide_phase(record, key, token, phase, output, now), None

        self._idem_change(key, decide, "a phase")

    def release(self, key: str, token: int) -> None:
        def decide(
            record: IdempotencyRecord | None, now: int
        ) -> tuple[bool, IdempotencyRecord | None, None]:
            if not _core.decide_release(record, token, now):
                return False, None, None
            assert record is not None
            return True, _core.after_release(record, now), None

        self._idem_change(key, decide, "a release")

    def get(self, key: str) -> IdempotencyRecord | None:
        async def read() -> IdempotencyRecord | None:
            return (await self._idem_latest(key))[0]

        record: IdempotencyRecord | None = self._run(read, f"a read of idempotency key {key!r}")
        return _core.live(record, self.clock())

    def _idem_keys(self) -> list[str]:
        """Every key with a message, sorted (stream info per subject: one request)."""
        prefix = f"$KV.{self.bucket}.{NAMESPACE}."

        async def subjects() -> dict[str, int]:
            info = await self._js.stream_info(self._stream, subjects_filter=f"{prefix}>")
            return dict(info.state.subjects or {})

        found: dict[str, int] = self._run(subjects, "listing idempotency keys")
        keys = []
        for subject in found:
            try:
                keys.append(decode_key(subject.removeprefix(prefix)))
            except ValueError as exc:
                raise CorruptionError(
                    f"NATS bucket {self.bucket!r} holds subject {subject!r}, which is not "
                    f"an idempotency key unbundled wrote: {exc}",
                    bucket=self.bucket,
                ) from exc
        return sorted(keys)

    def list_records(self, state: State | None, after: str, limit: int) -> list[IdempotencyRecord]:
        """Every key's latest message, one read each, in key order."""
        found: list[IdempotencyRecord] = []
        for key in self._idem_keys():
            if key <= after:
                continue
            record = self.get(key)
            if record is not None and (state is None or record.state == state):
                found.append(record)
                if len(found) >= limit:
                    break
        return found

    def purge_expired(self) -> int:
        """Replace each expired record with a delete marker; how many. A record
        changed meanwhile (claimed again) is left alone."""
        purged = 0
        for key in self._idem_keys():

            def decide(
                record: IdempotencyRecord | None, now: int
            ) -> tuple[bool, IdempotencyRecord | None, bool]:
                expired = record is not None and _core.live(record, now) is None
                return expired, None, expired

            purged += self._idem_change(key, decide, "a purge")
        return purged

    def wait_for_key(self, key: str, timeout_s: float) -> IdempotencyRecord | None:
        deadline = time.monotonic() + timeout_s
        pause = _POLL_FIRST_S

        async def read() -> IdempotencyRecord | None:
            return (await self._idem_latest(key))[0]

        while True:
            record: IdempotencyRecord | None = self._run(read, f"a wait on key {key!r}")
            now = self.clock()
            if _core.settled(record, now):
                return _core.live(record, now)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return record
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX_S)
