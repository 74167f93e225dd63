"""Idempotency keys in the Redis backend: each operation one ``EVALSHA``.

The scripts (``_scripts``) decide with the server's clock and answer what
they saw; this module turns the answers into ``_protocol`` values, raising
exactly what the shared rules of ``_core`` raise (``StaleToken`` comes from
``_core`` itself, applied to the record and the instant the script saw).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, cast

from ...errors import CorruptionError, NotSupported
from ...idempotency import _core
from ...idempotency._protocol import Claim, Effects, IdempotencyRecord, State

# wait_for_key polls: first after 5 ms, doubling up to 50 ms. Lease expiry is
# not an event Redis can publish, so polling is needed even with keyspace
# notifications; at 50 ms a waiter costs the server 20 small scripts a second.
_POLL_FIRST_S = 0.005
_POLL_MAX_S = 0.05
_FETCH_CHUNK = 200
_STATES = {b"in_progress": "in_progress", b"completed": "completed"}

EFFECTS_NOT_SUPPORTED = (
    "the redis backend cannot run effects in the transaction that stores the result: a "
    "record in Redis cannot share a transaction with writes to another store. Complete "
    "without effects, and make each effect idempotent downstream: derive its event ids or "
    "idempotency keys from the request key (attempt.derived_key(name)), so that a retry "
    "after a crash between the effect and the stored result is deduplicated where the "
    "effect lands (docs/how-to/idempotency-redis.md)"
)


def decode_reply(key: str, reply: bytes) -> tuple[bytes, int, IdempotencyRecord | None]:
    """``(status, server now in ms, record or None)`` from a script's answer
    (its format: ``_scripts``' docstring)."""
    head, _, body = reply.partition(b"\n")
    parts = head.split(b" ")
    try:
        status, now = parts[0], int(parts[1])
        if len(parts) == 2:
            return status, now, None
        f_len, r_len = int(parts[9]), int(parts[10])
        pos = f_len + max(r_len, 0)
        phases: dict[str, bytes] = {}
        lengths = [int(n) for n in parts[11:]]
        for name_len, out_len in zip(lengths[::2], lengths[1::2], strict=True):
            name = body[pos : pos + name_len].decode()
            pos += name_len
            phases[name] = body[pos : pos + out_len]
            pos += out_len
        if pos != len(body):
            raise ValueError(f"{len(body) - pos} bytes left over")
        record = IdempotencyRecord(
            key,
            body[:f_len].decode(),
            cast(State, _STATES[parts[2]]),
            int(parts[3]),
            int(parts[4]),
            int(parts[5]),
            int(parts[6]),
            int(parts[7]),
            body[f_len : f_len + r_len] if r_len >= 0 else None,
            parts[8] == b"1",
            phases,
        )
    except (IndexError, KeyError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptionError(
            f"the Redis hash of idempotency key {key!r} is not an idempotency record "
            f"(script answer {head[:200]!r}): {exc!r}",
            key=key,
        ) from exc
    return status, now, record


class RedisIdempotency:
    """The :class:`~unbundled.idempotency._protocol.IdempotencyBackend` methods
    of :class:`unbundled.backends.redis.RedisBackend`."""

    prefix: str
    _eval: Callable[[str, str, Sequence[Any]], bytes]
    _eval_many: Callable[[str, Sequence[str]], list[bytes]]
    _scan_keys: Callable[[], list[bytes]]
    _check_open: Callable[[], None]

    def _stale(self, key: str, token: int, now: int, record: IdempotencyRecord | None) -> NoReturn:
        """Raise the ``StaleToken`` that ``_core`` raises for what the script saw."""
        _core.decide_phase(record, key, token, "-", b"", now)
        raise CorruptionError(
            f"the Redis script refused token {token} of key {key!r} that the shared rules "
            "accept: the script and idempotency._core disagree",
            key=key,
        )

    def claim(self, key: str, fingerprint: str, lease_ms: int, retention_ms: int) -> Claim:
        reply = self._eval("claim", key, (fingerprint, lease_ms, retention_ms))
        status, _now, record = decode_reply(key, reply)
        if record is None:
            raise CorruptionError(f"the claim script of key {key!r} answered no record", key=key)
        return Claim(cast(Any, status.decode()), record)

    def complete(
        self,
        key: str,
        token: int,
        result: bytes,
        error: bool,
        retention_ms: int,
        effects: Effects | None = None,
    ) -> IdempotencyRecord:
        if effects is not None:
            # As everywhere, a stale token is refused first (StaleToken); a
            # holder learns that effects cannot join the result here.
            _status, now, record = decode_reply(key, self._eval("get", key, ()))
            _core.decide_complete(record, key, token, result, error, now, retention_ms)
            raise NotSupported(EFFECTS_NOT_SUPPORTED, key=key)
        reply = self._eval("complete", key, (token, result, 1 if error else 0, retention_ms))
        status, now, record = decode_reply(key, reply)
        if status != b"ok" or record is None:
            self._stale(key, token, now, record)
        return record

    def record_phase(self, key: str, token: int, phase: str, output: bytes) -> None:
        status, now, record = decode_reply(key, self._eval("phase", key, (token, phase, output)))
        if status != b"ok":
            self._stale(key, token, now, record)

    def release(self, key: str, token: int) -> None:
        self._eval("release", key, (token,))

    def get(self, key: str) -> IdempotencyRecord | None:
        return decode_reply(key, self._eval("get", key, ()))[2]

    def list_records(self, state: State | None, after: str, limit: int) -> list[IdempotencyRecord]:
        """SCAN over the prefix (every record, O(records) per call), sorted here."""
        start = len(self.prefix.encode())
        keys = sorted(k for k in (raw[start:].decode() for raw in self._scan_keys()) if k > after)
        found: list[IdempotencyRecord] = []
        for i in range(0, len(keys), _FETCH_CHUNK):
            chunk = keys[i : i + _FETCH_CHUNK]
            for key, reply in zip(chunk, self._eval_many("get", chunk), strict=True):
                record = decode_reply(key, reply)[2]
                if record is not None and (state is None or record.state == state):
                    found.append(record)
                    if len(found) >= limit:
                        return found
        return found

    def purge_expired(self) -> int:
        """Delete the expired records Redis still keeps (it deletes each one by
        itself ``EXPIRY_GRACE_MS`` after it expires); how many. SCAN over the
        prefix, then one pipelined round trip per chunk of keys."""
        start = len(self.prefix.encode())
        keys = [raw[start:].decode() for raw in self._scan_keys()]
        purged = 0
        for i in range(0, len(keys), _FETCH_CHUNK):
            replies = self._eval_many("purge", keys[i : i + _FETCH_CHUNK])
            purged += sum(1 for reply in replies if reply.startswith(b"purged "))
        return purged

    def wait_for_key(self, key: str, timeout_s: float) -> IdempotencyRecord | None:
        deadline = time.monotonic() + timeout_s
        pause = _POLL_FIRST_S
        while True:
            _status, now, record = decode_reply(key, self._eval("get", key, ()))
            if _core.settled(record, now):
                return record
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return record
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX_S)
