"""Pure decisions for idempotency keys: validation, fingerprints, and every
state transition. The memory, SQLite and PostgreSQL backends apply these
functions to the record they read inside one transaction; the Redis backend
runs the same rules as a Lua script, held to them by the contract suite.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec

from .. import limits
from ..errors import StaleToken, UsageError
from ._protocol import Claim, IdempotencyRecord

_KEY = re.compile(r"[A-Za-z0-9._:@/+=~-]+")
_encode_sorted = msgspec.json.Encoder(order="sorted").encode


def check_key(key: object) -> str:
    """Keys are 1 to ``idempotency_key_chars_max`` printable characters:
    letters, digits and ``._:@/+=~-`` (UUIDs, ULIDs and base64url all fit)."""
    if (
        not isinstance(key, str)
        or not 1 <= len(key) <= limits.idempotency_key_chars_max
        or not _KEY.fullmatch(key)
    ):
        raise UsageError(
            f"idempotency key {key!r} must be 1 to {limits.idempotency_key_chars_max} "
            "characters from letters, digits and ._:@/+=~-",
            key=key,
        )
    return key


def check_phase(phase: object) -> str:
    if not isinstance(phase, str) or not 1 <= len(phase) <= 100:
        raise UsageError(f"phase name {phase!r} must be a str of 1 to 100 characters")
    return phase


def fingerprint(payload: Any) -> str:
    """SHA-256 of the payload's canonical form: bytes as they are, anything
    else as JSON with sorted keys (so ``{"a":1,"b":2}`` and ``{"b":2,"a":1}``
    match). ``None`` hashes to a fixed value: fingerprinting off."""
    if isinstance(payload, bytes | bytearray | memoryview):
        raw = bytes(payload)
    else:
        try:
            raw = _encode_sorted(payload)
        except (TypeError, msgspec.EncodeError) as exc:
            raise UsageError(
                f"cannot fingerprint a payload of type {type(payload).__name__}: {exc}"
            ) from None
    return hashlib.sha256(raw).hexdigest()[:32]


def live(record: IdempotencyRecord | None, now: int) -> IdempotencyRecord | None:
    """The record if it has not expired."""
    return record if record is not None and record.expires_ms > now else None


def decide_claim(
    record: IdempotencyRecord | None,
    key: str,
    fp: str,
    now: int,
    lease_ms: int,
    retention_ms: int,
) -> tuple[Claim, IdempotencyRecord | None]:
    """What a claim answers, and the record to store (None: leave it as is)."""
    current = live(record, now)
    if current is None:
        new = IdempotencyRecord(
            key, fp, "in_progress", 1, now + lease_ms, now + retention_ms, now, now
        )
        return Claim("claimed", new), new
    if current.fingerprint != fp:
        return Claim("mismatch", current), None
    if current.state == "completed":
        return Claim("completed", current), None
    if current.lease_until_ms > now:
        return Claim("in_progress", current), None
    # The holder's lease ran out (it died, or is too slow): take over, fenced.
    taken = msgspec.structs.replace(
        current,
        token=current.token + 1,
        lease_until_ms=now + lease_ms,
        expires_ms=max(current.expires_ms, now + retention_ms),
        updated_ms=now,
    )
    return Claim("claimed", taken), taken


def _held(record: IdempotencyRecord | None, key: str, token: int, now: int) -> IdempotencyRecord:
    current = live(record, now)
    if current is None or current.state != "in_progress" or current.token != token:
        holder = "nobody" if current is None else f"{current.state} with token {current.token}"
        raise StaleToken(
            f"idempotency key {key!r} is not held with token {token} any more (now {holder}): "
            "another attempt took over after this one's lease expired",
            key=key,
            token=token,
        )
    return current


def decide_complete(
    record: IdempotencyRecord | None,
    key: str,
    token: int,
    result: bytes,
    error: bool,
    now: int,
    retention_ms: int,
) -> IdempotencyRecord:
    current = _held(record, key, token, now)
    return msgspec.structs.replace(
        current,
        state="completed",
        result=result,
        error=error,
        lease_until_ms=0,
        expires_ms=now + retention_ms,
        updated_ms=now,
    )


def decide_phase(
    record: IdempotencyRecord | None, key: str, token: int, phase: str, output: bytes, now: int
) -> IdempotencyRecord:
    current = _held(record, key, token, now)
    return msgspec.structs.replace(
        current, phases={**current.phases, phase: output}, updated_ms=now
    )


def decide_release(record: IdempotencyRecord | None, token: int, now: int) -> bool:
    """True if the record should be deleted (held in progress with ``token``)."""
    current = live(record, now)
    return current is not None and current.state == "in_progress" and current.token == token


def after_release(record: IdempotencyRecord, now: int) -> IdempotencyRecord | None:
    """What a release (decided by :func:`decide_release`) leaves: nothing, or,
    if the attempt recorded phases, the record with its lease given up. Then
    the next claim takes over (token + 1) and resumes after those phases:
    a transient error in phase 3 must not run phases 1 and 2 again."""
    if not record.phases:
        return None
    return msgspec.structs.replace(record, lease_until_ms=now, updated_ms=now)


def settled(record: IdempotencyRecord | None, now: int) -> bool:
    """Whether a waiter can stop waiting: the key is not held by a live lease."""
    current = live(record, now)
    return current is None or current.state == "completed" or current.lease_until_ms <= now


_record_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(IdempotencyRecord)


def encode_record(record: IdempotencyRecord) -> bytes:
    return _record_encoder.encode(record)


def decode_record(raw: bytes) -> IdempotencyRecord:
    return _record_decoder.decode(raw)
