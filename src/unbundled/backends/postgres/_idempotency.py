"""Idempotency keys on PostgreSQL: one statement per transition.

* ``claim`` is one statement (a CTE): it reads the key's row, inserts a new
  record (or, ``ON CONFLICT``, takes over an expired lease or replaces an
  expired record) only when the rules of ``idempotency._core.decide_claim``
  say so, and returns the written row, or else the row it read. A repeated
  key (completed, or another payload) inserts nothing: one read, no lock.
  The insert's unique index makes concurrent claims of one key queue on the
  row: exactly one of them writes. The statement's snapshot may predate a
  claim that committed while the insert waited; then the row read says
  "claim" though nothing was written, and the statement runs again (only
  under contention on that key).
* ``complete``, ``record_phase`` and ``release`` are one fenced statement
  each (``WHERE key = ... AND token = ... AND state = 'in_progress'``); when
  no row matches, a read lets ``_core`` say why (``StaleToken``).
* ``complete`` with effects is a unit of work (``_unit``): ``BEGIN``, the fenced update, then the
  effects on the same connection, then the event write (the counter lock,
  see ``_stage.Staging``) and ``COMMIT`` in one pipeline.
* Time: the database server's clock (``now()``), so application servers
  with skewed clocks agree on leases and expiry. A backend given an explicit
  ``clock`` (tests, simulations) uses that clock instead, for every decision.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import msgspec
import psycopg

from ..._ground import now_ms
from ...errors import StaleToken, Unavailable
from ...idempotency import _core
from ...idempotency._protocol import Claim, Effects, IdempotencyRecord, State
from ...transaction import _unit
from ._notify import KEYS_PAYLOAD, Notifier
from ._schema import Conn
from ._stage import Statements

_COLUMNS = (
    "key",
    "fingerprint",
    "state",
    "token",
    "lease_until_ms",
    "expires_ms",
    "created_ms",
    "updated_ms",
    "result",
    "error",
    "phases",
)
# A claim re-runs when its snapshot missed a concurrent claim; each re-run
# sees that claim, so more than a couple means the key churns abnormally.
_CLAIM_ATTEMPTS = 8
# wait_for_key re-reads at least this often: lease expiry sends no
# notification, and a test's explicit clock moves without one.
_WAIT_SLICE_S = 1.0
_WAIT_SLICE_EXPLICIT_CLOCK_S = 0.05
_IDLE = psycopg.pq.TransactionStatus.IDLE
_decode_phases = msgspec.json.Decoder(dict[str, bytes]).decode


def _columns(prefix: str) -> str:
    return ", ".join(f"{prefix}{c}::text" if c == "phases" else f"{prefix}{c}" for c in _COLUMNS)


def _record(row: Sequence[Any]) -> IdempotencyRecord | None:
    if row[0] is None:
        return None
    key, fp, state, token, lease, expires, created, updated, result, error, phases = row
    return IdempotencyRecord(
        key,
        fp,
        state,
        token,
        lease,
        expires,
        created,
        updated,
        bytes(result) if result is not None else None,
        error,
        _decode_phases(phases),
    )


class _Sql:
    """The statements of one schema. ``%(now)s`` is the explicit clock's
    time, or NULL for the server's."""

    def __init__(self, schema: str) -> None:
        t = f'"{schema}".idempotency'
        n = (
            "WITH n AS (SELECT coalesce(%(now)s::int8, "
            "floor(extract(epoch FROM now()) * 1000)::int8) AS ms)"
        )
        fence = (
            "t.key = %(key)s AND t.token = %(token)s AND t.state = 'in_progress' "
            "AND t.expires_ms > n.ms"
        )
        x = "t.expires_ms <= excluded.created_ms"  # the stored record has expired
        self.claim = f"""{n},
old AS (SELECT {_columns("")} FROM {t} WHERE key = %(key)s),
up AS (
    INSERT INTO {t} AS t
    SELECT %(key)s, %(fp)s, 'in_progress', 1, n.ms + %(lease)s, n.ms + %(retention)s,
           n.ms, n.ms, NULL, false, '{{}}'::jsonb
    FROM n
    WHERE NOT EXISTS (
        SELECT FROM old WHERE old.expires_ms > n.ms
        AND (old.fingerprint <> %(fp)s OR old.state = 'completed' OR old.lease_until_ms > n.ms))
    ON CONFLICT (key) DO UPDATE SET
        fingerprint = CASE WHEN {x} THEN excluded.fingerprint ELSE t.fingerprint END,
        state = 'in_progress',
        token = CASE WHEN {x} THEN 1 ELSE t.token + 1 END,
        lease_until_ms = excluded.lease_until_ms,
        expires_ms = CASE WHEN {x} THEN excluded.expires_ms
                          ELSE greatest(t.expires_ms, excluded.expires_ms) END,
        created_ms = CASE WHEN {x} THEN excluded.created_ms ELSE t.created_ms END,
        updated_ms = excluded.updated_ms,
        result = CASE WHEN {x} THEN NULL ELSE t.result END,
        error = CASE WHEN {x} THEN false ELSE t.error END,
        phases = CASE WHEN {x} THEN '{{}}'::jsonb ELSE t.phases END
    WHERE {x} OR (t.fingerprint = excluded.fingerprint AND t.state = 'in_progress'
                  AND t.lease_until_ms <= excluded.created_ms)
    RETURNING {_columns("t.")}
)
SELECT true, up.*, n.ms FROM up, n
UNION ALL
SELECT false, old.*, n.ms FROM n LEFT JOIN old ON true WHERE NOT EXISTS (SELECT FROM up)"""
        notify = f"pg_notify(%(channel)s, '{KEYS_PAYLOAD}')"
        self.complete = f"""{n}, u AS (
    UPDATE {t} AS t SET state = 'completed', result = %(result)s, error = %(error)s,
        lease_until_ms = 0, expires_ms = n.ms + %(retention)s, updated_ms = n.ms
    FROM n WHERE {fence}
    RETURNING {_columns("t.")}
)
SELECT u.*, {notify} FROM u"""
        self.phase = f"""{n}
UPDATE {t} AS t SET phases = t.phases || jsonb_build_object(%(phase)s::text, %(output)s::text),
    updated_ms = n.ms
FROM n WHERE {fence}"""
        # Without phases the record goes; with phases only its lease does
        # (_core.after_release): the retry takes over and resumes there.
        self.release = f"""{n},
d AS (DELETE FROM {t} AS t USING n WHERE {fence} AND t.phases = '{{}}'::jsonb RETURNING 1),
u AS (UPDATE {t} AS t SET lease_until_ms = n.ms, updated_ms = n.ms
      FROM n WHERE {fence} AND t.phases <> '{{}}'::jsonb RETURNING 1)
SELECT {notify} FROM (SELECT FROM d UNION ALL SELECT FROM u) AS released"""
        self.get = f"{n} SELECT {_columns('t.')}, n.ms FROM n LEFT JOIN {t} AS t ON t.key = %(key)s"
        self.list = (
            f"{n} SELECT {_columns('t.')} FROM {t} AS t, n WHERE t.key > %(after)s "
            "AND t.expires_ms > n.ms AND (%(state)s::text IS NULL OR t.state = %(state)s) "
            "ORDER BY t.key LIMIT %(limit)s"
        )
        self.purge = f"{n} DELETE FROM {t} AS t USING n WHERE t.expires_ms <= n.ms"


class PostgresIdempotency:
    """The idempotency methods of :class:`unbundled.backends.PostgresBackend`."""

    schema: str
    channel: str
    clock: Callable[[], int]
    _where: str
    _notifier: Notifier
    _run: Callable[[Callable[[Conn], Any]], Any]
    commit_unit_now: Callable[[_unit.Unit], _unit.Committed]

    @cached_property
    def _isql(self) -> _Sql:
        return _Sql(self.schema)

    @cached_property
    def _events_sql(self) -> Statements:
        return Statements(self.schema)

    def _idem_now(self) -> int | None:
        """None: the server's clock decides (see the module docstring)."""
        return None if self.clock is now_ms else self.clock()

    def _idem_row(self, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        def one(conn: Conn) -> tuple[Any, ...] | None:
            return conn.execute(sql, params).fetchone()

        row: tuple[Any, ...] | None = self._run(one)
        return row

    def _read_key(self, key: str, conn: Conn | None = None) -> tuple[IdempotencyRecord | None, int]:
        """The stored record (maybe expired) and the time it was read at."""
        params = {"key": key, "now": self._idem_now()}
        if conn is not None:
            row = conn.execute(self._isql.get, params).fetchone()
        else:
            row = self._idem_row(self._isql.get, params)
        assert row is not None
        return _record(row[:-1]), int(row[-1])

    def claim(self, key: str, fingerprint: str, lease_ms: int, retention_ms: int) -> Claim:
        params = {"key": key, "fp": fingerprint, "lease": lease_ms, "retention": retention_ms}
        for _ in range(_CLAIM_ATTEMPTS):
            params["now"] = self._idem_now()
            row = self._idem_row(self._isql.claim, params)
            assert row is not None
            record = _record(row[1:-1])
            if row[0]:
                assert record is not None
                return Claim("claimed", record)
            claim, new = _core.decide_claim(
                record, key, fingerprint, int(row[-1]), lease_ms, retention_ms
            )
            if new is None:
                return claim
            # The row read predates a claim that committed while our insert
            # waited for it: nothing was written. Run again, seeing it.
        raise Unavailable(
            f"{self._where}: idempotency key {key!r} changed under {_CLAIM_ATTEMPTS} "
            "claims in a row; retry",
            key=key,
        )

    def _stale(
        self,
        key: str,
        token: int,
        decide: Callable[[IdempotencyRecord | None, int], object],
        conn: Conn | None = None,
    ) -> StaleToken:
        """The error for a fenced statement that matched no row, with
        ``_core``'s message for what the key holds now."""
        record, now = self._read_key(key, conn)
        try:
            decide(record, now)
        except StaleToken as exc:
            return exc
        # Held with our token after all: it moved between the two statements.
        return StaleToken(
            f"idempotency key {key!r} was not held with token {token} when written",
            key=key,
            token=token,
        )

    def complete(
        self,
        key: str,
        token: int,
        result: bytes,
        error: bool,
        retention_ms: int,
        effects: Effects | None = None,
    ) -> IdempotencyRecord:
        params = {
            "key": key,
            "token": token,
            "result": result,
            "error": error,
            "retention": retention_ms,
            "channel": self.channel,
        }

        def decide(record: IdempotencyRecord | None, now: int) -> object:
            return _core.decide_complete(record, key, token, result, error, now, retention_ms)

        if effects is None:
            params["now"] = self._idem_now()
            row = self._idem_row(self._isql.complete, params)
            if row is None:
                raise self._stale(key, token, decide)
            self._notifier.bump_keys()
            done = _record(row[:-1])
            assert done is not None
            return done
        # The unit of work's path, as every backend's (backends/postgres/_unit.py).
        unit = _unit.effects_unit(key, token, result, error, retention_ms, effects)
        committed = self.commit_unit_now(unit)
        return committed.idempotency[-1]

    def record_phase(self, key: str, token: int, phase: str, output: bytes) -> None:
        params = {
            "key": key,
            "token": token,
            "phase": phase,
            # msgspec's JSON form of bytes, so the stored phases decode as dict[str, bytes].
            "output": msgspec.json.encode(output)[1:-1].decode(),
            "now": self._idem_now(),
        }

        def run(conn: Conn) -> int:
            return conn.execute(self._isql.phase, params).rowcount

        if self._run(run) == 0:

            def decide(record: IdempotencyRecord | None, now: int) -> object:
                return _core.decide_phase(record, key, token, phase, output, now)

            raise self._stale(key, token, decide)

    def release(self, key: str, token: int) -> None:
        params = {"key": key, "token": token, "now": self._idem_now(), "channel": self.channel}
        if self._idem_row(self._isql.release, params) is not None:
            self._notifier.bump_keys()

    def get(self, key: str) -> IdempotencyRecord | None:
        record, now = self._read_key(key)
        return _core.live(record, now)

    def list_records(self, state: State | None, after: str, limit: int) -> list[IdempotencyRecord]:
        params = {"after": after, "state": state, "limit": limit, "now": self._idem_now()}

        def read(conn: Conn) -> list[tuple[Any, ...]]:
            return conn.execute(self._isql.list, params).fetchall()

        rows: list[tuple[Any, ...]] = self._run(read)
        return [r for r in map(_record, rows) if r is not None]

    def purge_expired(self) -> int:
        params = {"now": self._idem_now()}

        def purge(conn: Conn) -> int:
            return conn.execute(self._isql.purge, params).rowcount

        count: int = self._run(purge)
        return count

    def wait_for_key(self, key: str, timeout_s: float) -> IdempotencyRecord | None:
        deadline = time.monotonic() + timeout_s
        explicit = self.clock is not now_ms
        while True:
            # The token first: a completion after our read moves it.
            token = self._notifier.keys_token()
            record, now = self._read_key(key)
            if _core.settled(record, now):
                return _core.live(record, now)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return record
            assert record is not None
            if explicit:
                wait = _WAIT_SLICE_EXPLICIT_CLOCK_S
            else:  # wake when the lease runs out at the latest: that sends no notification
                wait = min(_WAIT_SLICE_S, (record.lease_until_ms - now) / 1000 + 0.001)
            self._notifier.wait_keys(token, min(remaining, wait))
