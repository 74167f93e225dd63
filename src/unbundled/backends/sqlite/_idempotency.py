"""Idempotency keys in the SQLite backend.

Every state change is one request to the group-commit writer (one round trip
for the caller, one transaction shared with other callers). A claim of a key
that is already completed, or used with another payload, is answered from a
read without touching the writer. ``complete`` with effects is a unit of
work (``_unit``): the effects run in the transaction that stores the result,
their event appends join it, and any SQL runs on the same connection.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ..._ground import Waiter
from ..._ground.waiters import SyncWaiter, complete_all
from ...errors import Closed
from ...idempotency import _core
from ...idempotency._protocol import Claim, Effects, IdempotencyRecord, State
from ...transaction import _unit
from ._integrity import corrupt, row_crc
from ._log_stage import Stage
from ._writer import Request, Writer

_COLUMNS = "key, state, expires_ms, record, crc"
_SELECT = f"SELECT {_COLUMNS} FROM idempotency WHERE key = ?"
_UPSERT = (
    "INSERT INTO idempotency VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
    "state = excluded.state, expires_ms = excluded.expires_ms, record = excluded.record, "
    "crc = excluded.crc"
)
_WAIT_SLICE_S = 0.05


def _verify(path: str, row: tuple[Any, ...]) -> IdempotencyRecord:
    """The record of one row, after its crc and its agreement with the row's
    own columns (which the purge and the listing filter on) are checked."""
    key, state, expires_ms, raw, crc = row
    if crc != row_crc("idempotency", key, state, expires_ms, raw):
        raise corrupt(path, f"the idempotency record of key {key!r} failed its checksum", key=key)
    try:
        record = _core.decode_record(raw)
    except msgspec.DecodeError as exc:  # a checksum collision, or a bug: never trust it
        raise corrupt(path, f"the idempotency record of key {key!r} is unreadable") from exc
    if (record.key, record.state, record.expires_ms) != (key, state, expires_ms):
        raise corrupt(path, f"the idempotency record of key {key!r} disagrees with its row")
    return record


def _lookup(path: str, rows: list[tuple[Any, ...]], key: str) -> IdempotencyRecord | None:
    if not rows:
        return None
    record = _verify(path, rows[0])
    if record.key != key:  # a damaged key in the b-tree led the lookup astray
        raise corrupt(path, f"the lookup of idempotency key {key!r} found key {record.key!r}")
    return record


def _load(conn: sqlite3.Connection, path: str, key: str) -> IdempotencyRecord | None:
    return _lookup(path, conn.execute(_SELECT, (key,)).fetchall(), key)


def _store(conn: sqlite3.Connection, record: IdempotencyRecord) -> None:
    raw = _core.encode_record(record)
    crc = row_crc("idempotency", record.key, record.state, record.expires_ms, raw)
    conn.execute(_UPSERT, (record.key, record.state, record.expires_ms, raw, crc))


class SqliteIdempotency:
    """The idempotency methods of :class:`unbundled.backends.SqliteBackend`."""

    path: str
    clock: Callable[[], int]
    _closed: bool
    read_only: bool
    _writer: Writer
    submit_unit: Callable[[_unit.Unit, Waiter], None]
    _call: Callable[[Callable[[sqlite3.Connection, Stage], Any]], Any]
    _read: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
    change_token: Callable[[], int]
    wait_for_change: Callable[[int, float], int]

    def _peek(self, key: str) -> IdempotencyRecord | None:
        return _lookup(self.path, self._read(_SELECT, (key,)), key)

    def claim(self, key: str, fingerprint: str, lease_ms: int, retention_ms: int) -> Claim:
        # A repeated key (completed, or a mismatch) needs no write: answer it
        # from a read. Anything else is decided again inside the writer.
        seen = _core.live(self._peek(key), self.clock())
        if seen is not None and (seen.fingerprint != fingerprint or seen.state == "completed"):
            claim, _ = _core.decide_claim(
                seen, key, fingerprint, self.clock(), lease_ms, retention_ms
            )
            return claim

        result: Claim = self._call(self._decide_claim(key, fingerprint, lease_ms, retention_ms))
        return result

    def submit_claim(
        self, key: str, fingerprint: str, lease_ms: int, retention_ms: int, done: Waiter
    ) -> None:
        """``claim`` for an event loop: one writer request, answered through
        ``done`` (no read first: the writer answers a repeated key alike)."""
        if self._closed:
            raise Closed(f"the database at {self.path} is closed")
        if self.read_only:  # a completed key is still answered, from a read
            complete_all([(done, self.claim(key, fingerprint, lease_ms, retention_ms))])
            return
        decide = self._decide_claim(key, fingerprint, lease_ms, retention_ms)
        self._writer.submit(Request(None, decide, done))

    def _decide_claim(
        self, key: str, fingerprint: str, lease_ms: int, retention_ms: int
    ) -> Callable[[sqlite3.Connection, Stage], Claim]:
        def decide(conn: sqlite3.Connection, stage: Stage) -> Claim:
            claim, new = _core.decide_claim(
                _load(conn, self.path, key), key, fingerprint, self.clock(), lease_ms, retention_ms
            )
            if new is not None:
                _store(conn, new)
            return claim

        return decide

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
            waiter = SyncWaiter()
            unit = _unit.effects_unit(key, token, result, error, retention_ms, effects)
            self.submit_unit(unit, waiter)
            committed: _unit.Committed = waiter.wait()
            return committed.idempotency[-1]

        def finish(conn: sqlite3.Connection, stage: Stage) -> IdempotencyRecord:
            done = _core.decide_complete(
                _load(conn, self.path, key), key, token, result, error, self.clock(), retention_ms
            )
            _store(conn, done)
            return done

        record: IdempotencyRecord = self._call(finish)
        return record

    def record_phase(self, key: str, token: int, phase: str, output: bytes) -> None:
        def record(conn: sqlite3.Connection, stage: Stage) -> None:
            _store(
                conn,
                _core.decide_phase(
                    _load(conn, self.path, key), key, token, phase, output, self.clock()
                ),
            )

        self._call(record)

    def release(self, key: str, token: int) -> None:
        def release(conn: sqlite3.Connection, stage: Stage) -> None:
            record, now = _load(conn, self.path, key), self.clock()
            if _core.decide_release(record, token, now):
                assert record is not None
                kept = _core.after_release(record, now)
                if kept is None:
                    conn.execute("DELETE FROM idempotency WHERE key = ?", (key,))
                else:
                    _store(conn, kept)

        self._call(release)

    def get(self, key: str) -> IdempotencyRecord | None:
        return _core.live(self._peek(key), self.clock())

    def list_records(self, state: State | None, after: str, limit: int) -> list[IdempotencyRecord]:
        # Filtered here, after each row is verified: in SQL, a damaged state
        # or expiry column would hide a live record without a trace.
        now = self.clock()
        out: list[IdempotencyRecord] = []
        while len(out) < limit:
            # No lower bound on the first page: a key that a damaged page made
            # NULL (or not text) sorts first, and must be seen to be caught.
            where, params = ("WHERE key > ?", [after]) if after else ("", [])
            rows = self._read(
                f"SELECT {_COLUMNS} FROM idempotency {where} ORDER BY key LIMIT ?",
                [*params, limit],
            )
            for row in rows:
                record = _verify(self.path, row)
                if record.expires_ms > now and state in (None, record.state):
                    out.append(record)
            if len(rows) < limit:
                break
            after = rows[-1][0]
        return out[:limit]

    def purge_expired(self) -> int:
        now = self.clock()

        def purge(conn: sqlite3.Connection, stage: Stage) -> int:
            return conn.execute("DELETE FROM idempotency WHERE expires_ms <= ?", (now,)).rowcount

        count: int = self._call(purge)
        return count

    def wait_for_key(self, key: str, timeout_s: float) -> IdempotencyRecord | None:
        deadline = time.monotonic() + timeout_s
        while True:
            token = self.change_token()
            record = self._peek(key)
            now = self.clock()
            if _core.settled(record, now):
                return _core.live(record, now)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return record
            # Wakes on any commit (this process at once, others within 50 ms);
            # lease expiry is not a commit, so never sleep past a slice.
            self.wait_for_change(token, min(remaining, _WAIT_SLICE_S))
