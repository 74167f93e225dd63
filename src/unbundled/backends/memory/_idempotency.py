"""Idempotency keys in the memory backend: the executable specification."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..._ground import Waiter
from ..._ground.waiters import complete_all
from ...errors import Closed
from ...idempotency import _core
from ...idempotency._protocol import Claim, Effects, IdempotencyRecord, State
from ...transaction import _unit


class MemoryIdempotency:
    """Idempotency records in a dict, under the backend's lock."""

    clock: Callable[[], int]
    _lock: threading.RLock
    _changed: threading.Condition
    _closed: bool
    _bump: Callable[[], None]
    _commit_unit: Callable[[_unit.Unit], _unit.Committed]

    def _init_idempotency(self) -> None:
        self._idem: dict[str, IdempotencyRecord] = {}

    def _check_idem_open(self) -> None:
        if self._closed:
            raise Closed("the idempotency store is closed")

    def claim(self, key: str, fingerprint: str, lease_ms: int, retention_ms: int) -> Claim:
        with self._lock:
            self._check_idem_open()
            claim, new = _core.decide_claim(
                self._idem.get(key), key, fingerprint, self.clock(), lease_ms, retention_ms
            )
            if new is not None:
                self._idem[key] = new
                self._bump()
            return claim

    def submit_claim(
        self, key: str, fingerprint: str, lease_ms: int, retention_ms: int, done: Waiter
    ) -> None:
        """``claim`` answered through ``done`` at once (nothing here waits; an
        error raises here, in the caller, as ``claim``'s would)."""
        complete_all([(done, self.claim(key, fingerprint, lease_ms, retention_ms))])

    def complete(
        self,
        key: str,
        token: int,
        result: bytes,
        error: bool,
        retention_ms: int,
        effects: Effects | None = None,
    ) -> IdempotencyRecord:
        if effects is not None:  # the unit of work's path, as every backend's
            with self._lock:
                self._check_idem_open()
                unit = _unit.effects_unit(key, token, result, error, retention_ms, effects)
                return self._commit_unit(unit).idempotency[-1]
        with self._lock:
            self._check_idem_open()
            done = _core.decide_complete(
                self._idem.get(key), key, token, result, error, self.clock(), retention_ms
            )
            self._idem[key] = done
            self._bump()
            return done

    def record_phase(self, key: str, token: int, phase: str, output: bytes) -> None:
        with self._lock:
            self._check_idem_open()
            self._idem[key] = _core.decide_phase(
                self._idem.get(key), key, token, phase, output, self.clock()
            )

    def release(self, key: str, token: int) -> None:
        with self._lock:
            self._check_idem_open()
            record, now = self._idem.get(key), self.clock()
            if _core.decide_release(record, token, now):
                assert record is not None
                kept = _core.after_release(record, now)
                if kept is None:
                    del self._idem[key]
                else:
                    self._idem[key] = kept
                self._bump()

    def get(self, key: str) -> IdempotencyRecord | None:
        with self._lock:
            self._check_idem_open()
            return _core.live(self._idem.get(key), self.clock())

    def list_records(self, state: State | None, after: str, limit: int) -> list[IdempotencyRecord]:
        with self._lock:
            self._check_idem_open()
            now = self.clock()
            keys = sorted(
                k
                for k, r in self._idem.items()
                if k > after and r.expires_ms > now and (state is None or r.state == state)
            )
            return [self._idem[k] for k in keys[:limit]]

    def purge_expired(self) -> int:
        with self._lock:
            self._check_idem_open()
            now = self.clock()
            gone = [k for k, r in self._idem.items() if r.expires_ms <= now]
            for k in gone:
                del self._idem[k]
            return len(gone)

    def wait_for_key(self, key: str, timeout_s: float) -> IdempotencyRecord | None:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                self._check_idem_open()
                record = self._idem.get(key)
                if _core.settled(record, self.clock()):
                    return _core.live(record, self.clock())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return record
                # Lease expiry is not an event: wake at least every 50 ms.
                self._changed.wait(min(remaining, 0.05))
