"""The unit of work, sans I/O: what one transaction across the parts holds,
and the decisions every backend makes the same way.

A :class:`Unit` is built on the caller's side (validated as each write is
added) and handed to the backend whole, which applies it in one transaction:
all of it, or nothing. The parts are applied, and their conflicts checked,
in one fixed order on every backend -- records and offsets, then events,
then idempotency results, then key-value changes, then SQL -- so the first
conflict is the same error, with the same details, everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

from .._ground import Waiter
from ..consistency.kv import _core as _kv_core
from ..consistency.kv._protocol import Expect
from ..errors import CompareFailed, NotSupported, UsageError, WrongExpectedVersion
from ..eventstore._protocol import ANY, NO_STREAM, STREAM_EXISTS, AppendResult, StreamWrite
from ..idempotency import _core as _idem_core
from ..idempotency._protocol import IdempotencyRecord
from ..log._protocol import AppendItem, OffsetCommit, Position, WriteBatch

#: The parts a transaction can hold, as backends declare them in ``unit_parts``.
RECORDS = "records"
OFFSETS = "offsets"
EVENTS = "events"
IDEMPOTENCY = "idempotency"
KV = "kv"
SQL = "sql"
#: Every part, in the order a backend applies (and checks) them.
PARTS = (RECORDS, OFFSETS, EVENTS, IDEMPOTENCY, KV, SQL)
_NAMES = {
    RECORDS: "log records",
    OFFSETS: "consumer offsets",
    EVENTS: "event appends",
    IDEMPOTENCY: "idempotency results",
    KV: "key-value writes",
    SQL: "raw SQL",
}


class KvOp(NamedTuple):
    """One key-value change: ``write`` (value), ``cas`` (value, expected) or ``delete``."""

    kind: Literal["write", "cas", "delete"]
    key: str
    value: bytes | None = None
    expected: Expect | None = None


class IdemOp(NamedTuple):
    """Complete an attempt (``result``, ``error``) or record one of its phases."""

    kind: Literal["complete", "phase"]
    key: str
    token: int
    output: bytes
    error: bool = False
    retention_ms: int = 0
    phase: str = ""


SqlCall = Callable[[Any], object]


class Unit:
    """Everything one transaction writes, in the order it was added."""

    __slots__ = (
        "appends",
        "commits",
        "effects",
        "events",
        "idempotency",
        "kv",
        "partitions",
        "sql",
    )

    def __init__(self) -> None:
        self.appends: dict[str, list[AppendItem]] = {}
        self.partitions: dict[str, int] = {}
        self.commits: list[OffsetCommit] = []
        self.events: list[StreamWrite] = []
        self.idempotency: list[IdemOp] = []
        self.kv: list[KvOp] = []
        self.sql: list[SqlCall] = []
        # Idempotency's ``complete(..., effects=)``: functions run inside the
        # transaction once its attempts are known to hold their keys; the
        # events they append join this unit (see :class:`Effects`).
        self.effects: list[Callable[[Any], None]] = []

    def __bool__(self) -> bool:
        return bool(
            self.appends
            or self.commits
            or self.events
            or self.idempotency
            or self.kv
            or self.sql
            or self.effects
        )

    def parts(self) -> list[str]:
        """The parts this unit writes, in :data:`PARTS` order."""
        held = []
        if self.appends:
            held.append(RECORDS)
        if self.commits:
            held.append(OFFSETS)
        if self.events or self.effects:
            held.append(EVENTS)
        if self.idempotency:
            held.append(IDEMPOTENCY)
        if self.kv:
            held.append(KV)
        if self.sql:
            held.append(SQL)
        return held

    def batch(self) -> WriteBatch | None:
        """The log's share (records and offset commits), or None."""
        if not self.appends and not self.commits:
            return None
        return WriteBatch(self.appends, tuple(self.commits), None, self.partitions)

    def add_events(self, write: StreamWrite) -> None:
        """Add a stream write. A stream written earlier in this unit is
        extended: its expected version then has to follow from the earlier
        write's (or be ``ANY``), so it is checked here, the same everywhere."""
        for index, earlier in enumerate(self.events):
            if earlier.stream != write.stream:
                continue
            _check_follows(earlier, write)
            merged = StreamWrite(
                earlier.stream, earlier.expected_version, (*earlier.events, *write.events)
            )
            self.events[index] = merged
            return
        self.events.append(write)


def _check_follows(earlier: StreamWrite, later: StreamWrite) -> None:
    expected = later.expected_version
    if expected in (ANY, STREAM_EXISTS):
        return
    before = earlier.expected_version
    if before in (ANY, STREAM_EXISTS):
        raise UsageError(
            f"stream {later.stream!r} is written twice in this transaction and the first "
            f"write expects {_expectation(before)}: its version after that is known only at "
            "commit, so the second must expect ANY (or give the first an exact version)",
            stream=later.stream,
        )
    version = (-1 if before == NO_STREAM else before) + len(earlier.events)
    if expected != version:
        raise WrongExpectedVersion(
            f"stream {later.stream!r} will be at version {version} after this "
            f"transaction's earlier write, not {expected}",
            stream=later.stream,
            expected=expected,
            actual=version,
        )


def _expectation(expected: int) -> str:
    return {ANY: "ANY", STREAM_EXISTS: "STREAM_EXISTS"}.get(expected, str(expected))


def check_part(part: str, backend: object, url: str) -> None:
    """``NotSupported`` if ``backend`` cannot commit ``part`` atomically with
    the other parts of a transaction (it never makes a second commit)."""
    served: frozenset[str] = getattr(backend, "unit_parts", frozenset())
    if part not in served:
        names = [_NAMES[p] for p in PARTS if p in served]
        listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)
        what = (
            f"that backend commits only {listed} in one transaction"
            if names
            else "that backend has no transactions across the parts (each write commits alone)"
        )
        raise NotSupported(
            f"{_NAMES[part]} cannot join a transaction on {url}: {what}",
            part=part,
            url=url,
        )


def check_parts(unit: Unit, backend: object, url: str) -> None:
    """:func:`check_part` for every part ``unit`` holds."""
    for part in unit.parts():
        check_part(part, backend, url)


class Committed(NamedTuple):
    """What a committed transaction wrote, each list in the order added.

    ``positions``: the log records'; ``events``: one ``AppendResult`` per
    stream written (two writes to one stream are one); ``idempotency``: the
    stored record per completion or phase; ``kv``: per change, the key's new
    version (a delete: True if the key was live); ``sql``: what each SQL
    function returned.
    """

    positions: list[Position]
    events: list[AppendResult]
    idempotency: list[IdempotencyRecord]
    kv: list[int | bool]
    sql: list[object]


EMPTY = Committed([], [], [], [], [])


# --- decisions every backend makes the same way --------------------------------


def apply_kv(slot: _kv_core.Slot | None, op: KvOp) -> tuple[_kv_core.Slot | None, int | bool]:
    """The key's slot after ``op`` and the op's result; ``CompareFailed``
    (details: key, expected, version) for a compare-and-set that does not
    match. A delete of an absent key changes nothing (the slot is kept)."""
    if op.kind == "delete":
        if slot is None or slot[0] is None:
            return slot, False
        return (None, _kv_core.next_version(slot)), True
    if op.kind == "cas":
        assert op.expected is not None
        if not _kv_core.matches(slot, op.expected):
            value, version = slot if slot is not None else (None, 0)
            shown = (
                f"version {op.expected.version}"
                if op.expected.version is not None
                else f"value {op.expected.value!r:.60}"
            )
            raise CompareFailed(
                f"compare-and-set on key {op.key!r} expected {shown}; the key is "
                + (f"at version {version}" if value is not None else "absent"),
                key=op.key,
                expected=op.expected.version
                if op.expected.version is not None
                else op.expected.value,
                version=version if value is not None else 0,
            )
    version = _kv_core.next_version(slot)
    return (op.value, version), version


def apply_idempotency(record: IdempotencyRecord | None, op: IdemOp, now: int) -> IdempotencyRecord:
    """The record after ``op`` (``StaleToken`` if the attempt no longer holds it)."""
    if op.kind == "complete":
        return _idem_core.decide_complete(
            record, op.key, op.token, op.output, op.error, now, op.retention_ms
        )
    return _idem_core.decide_phase(record, op.key, op.token, op.phase, op.output, now)


class Effects:
    """What an idempotency ``effects`` function gets (``EffectsTxn``), the
    same on every backend: ``append_events`` adds stream writes to the
    unit (applied with its other events: a conflict raises at commit, and
    the list returned is filled with the ``AppendResult``\\ s once the unit
    has committed); ``sql`` is the transaction's connection, or
    ``NotSupported`` on a backend without SQL."""

    def __init__(self, unit: Unit, conn: Any, where: str) -> None:
        self._unit = unit
        self._conn = conn
        self._where = where
        self._outs: list[tuple[list[AppendResult], list[tuple[str, int, int]]]] = []

    @property
    def sql(self) -> Any:
        """The DB-API connection inside the transaction (SQLite, PostgreSQL);
        never commit or roll back on it."""
        if self._conn is None:
            raise NotSupported(
                f"{self._where} has no SQL; effects may append events", url=self._where
            )
        return self._conn

    def append_events(self, writes: Sequence[StreamWrite]) -> list[AppendResult]:
        """Append ``StreamWrite``\\ s with the result (see the class docstring).
        Each write's result covers its own events, also when an earlier
        write of the transaction went to the same stream."""
        spans = []
        for write in writes:
            if not isinstance(write, StreamWrite):
                raise UsageError(
                    f"effects append StreamWrite values, got {type(write).__name__}",
                )
            before = next((len(w.events) for w in self._unit.events if w.stream == write.stream), 0)
            self._unit.add_events(write)
            spans.append((write.stream, before, len(write.events)))
        out: list[AppendResult] = []
        self._outs.append((out, spans))
        return out

    def fill(self, committed: Committed) -> None:
        """Fill the lists :meth:`append_events` returned, after the commit."""
        by_stream = {result.stream: result for result in committed.events}
        for out, spans in self._outs:
            for stream, start, count in spans:
                whole = by_stream[stream]
                first = whole.first_version + start
                out.append(
                    AppendResult(
                        stream, first, first + count - 1, whole.positions[start : start + count]
                    )
                )


def run_effects(unit: Unit, conn: Any, where: str) -> list[Effects]:
    """Run ``unit``'s effects functions (inside the backend's transaction,
    after its attempts were checked to hold their keys); their event appends
    join ``unit``. An exception propagates: the transaction is abandoned."""
    views = []
    for effects in unit.effects:
        view = Effects(unit, conn, where)
        effects(view)
        views.append(view)
    return views


def effects_unit(
    key: str,
    token: int,
    result: bytes,
    error: bool,
    retention_ms: int,
    effects: Callable[[Any], None],
) -> Unit:
    """The unit of ``complete(key, ..., effects=effects)``: how every
    backend with transactions runs effects (one implementation: the unit's)."""
    unit = Unit()
    unit.idempotency.append(IdemOp("complete", key, token, result, error, retention_ms))
    unit.effects.append(effects)
    return unit


@runtime_checkable
class UnitBackend(Protocol):
    """The transaction capability: a backend that commits a :class:`Unit` atomically."""

    #: The parts (of :data:`PARTS`) it can include in one transaction.
    unit_parts: frozenset[str]

    def submit_unit(self, unit: Unit, done: Waiter) -> None:
        """Apply ``unit`` in one transaction and call ``done`` with its
        :class:`Committed` once durable, or with the first error (then
        nothing of it was written)."""
