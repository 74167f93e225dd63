"""Decoded pgoutput messages -> `Change` values: the relation cache and the row builder.

`Relations` remembers what the Relation (and Type) messages said about each table and
counts its schema versions. `to_changes` turns one Insert, Update, Delete, Truncate or
logical Message into `Change` values, numbering them inside their transaction through
a `Transaction` the caller opens at Begin (which carries the final commit LSN). A
streamed transaction's commit LSN comes last (Stream Commit): decode its messages
with `row_changes` as they arrive (the relation cache may change before the commit),
spool the `RowChange`s, and `Transaction.place` them at Stream Commit.

Keys: pgoutput flags the replica identity's columns. Under REPLICA IDENTITY DEFAULT (or
USING INDEX) those are the primary key (or the index), so they make the key. Under FULL
every column is flagged, so the primary key must come from the catalog: pass it with
`Relations.set_primary_key` (a table without one, or under FULL without one given, has
key None: never a whole row posing as a key).

An update that changes the key is one "u" change whose `before` holds the old key
(Debezium splits it into a delete, a tombstone and a create: the sink may do that).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from unbundled.cdc._change import UNAVAILABLE, Change, Op, SourcePosition
from unbundled.cdc._pgoutput import (
    PG_EPOCH_UNIX_US,
    Binary,
    Delete,
    Insert,
    LogicalMessage,
    Relation,
    ReplicaIdentity,
    Truncate,
    TupleData,
    Type,
    Update,
)
from unbundled.cdc._pgtypes import Converter, converter
from unbundled.errors import CorruptionError, NotSupported


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    key: bool  # in the replica identity, as the Relation message flagged it


@dataclass(frozen=True, slots=True)
class RelationInfo:
    """One table as the latest Relation message described it.

    `version` starts at 1 and grows by one each time a Relation message for the same id
    differs from the one before (a column added, dropped, renamed or retyped, the
    replica identity or the table's name changed); an identical resend (pgoutput sends
    one at the start of each session) keeps it.
    """

    relation_id: int
    schema: str
    table: str
    replica_identity: ReplicaIdentity
    columns: tuple[Column, ...]
    version: int
    primary_key: tuple[str, ...] | None  # the key's column names, None for no key

    def shape(self) -> tuple[Any, ...]:
        return (self.schema, self.table, self.replica_identity, self.columns)


class Relations:
    """The relation cache: relation id -> `RelationInfo`, plus the user types' names."""

    __slots__ = ("_by_id", "_plans", "_primary_keys", "_type_names")

    def __init__(self) -> None:
        self._by_id: dict[int, RelationInfo] = {}
        self._primary_keys: dict[tuple[str, str], tuple[str, ...]] = {}
        self._type_names: dict[int, str] = {}
        # relation id -> how to read its tuples (`plan`); dropped whenever a Relation,
        # Type or primary key arrives, as any of them may change a column's reading.
        self._plans: dict[int, RowPlan] = {}

    def plan(self, info: RelationInfo) -> RowPlan:
        """Per column of `info`: its name, converter (None: the text is the value) and
        whether it is in the replica identity; chosen once per relation, not per value."""
        plan = self._plans.get(info.relation_id)
        if plan is None or plan.info is not info:
            names = self._type_names
            columns = tuple((c.name, converter(c.type_oid, names), c.key) for c in info.columns)
            plan = self._plans[info.relation_id] = RowPlan(info, columns)
        return plan

    def set_primary_key(self, schema: str, table: str, columns: Sequence[str]) -> None:
        """Name the table's primary key (from the catalog): it overrides the replica
        identity's flags as the change key. Applies to messages decoded from now on."""
        self._primary_keys[(schema, table)] = tuple(columns)
        self._plans.clear()
        for relation_id, info in list(self._by_id.items()):
            if (info.schema, info.table) == (schema, table):
                self._by_id[relation_id] = _with_key(info, self._key_of(info))

    def apply(self, message: Relation) -> RelationInfo:
        """Record a Relation message; returns the (possibly new) version of the table."""
        columns = tuple(Column(c.name, c.type_oid, c.type_modifier, c.key) for c in message.columns)
        previous = self._by_id.get(message.relation_id)
        info = RelationInfo(
            message.relation_id,
            message.namespace,
            message.name,
            message.replica_identity,
            columns,
            1,
            None,
        )
        if previous is not None:
            same = previous.shape() == info.shape()
            info = _with_version(info, previous.version if same else previous.version + 1)
        info = _with_key(info, self._key_of(info))
        self._by_id[message.relation_id] = info
        self._plans.clear()
        return info

    def apply_type(self, message: Type) -> None:
        self._type_names[message.type_oid] = message.name
        self._plans.clear()

    @property
    def type_names(self) -> dict[int, str]:
        return self._type_names

    def __contains__(self, relation_id: int) -> bool:
        return relation_id in self._by_id

    def __getitem__(self, relation_id: int) -> RelationInfo:
        info = self._by_id.get(relation_id)
        if info is None:
            raise CorruptionError(
                f"pgoutput change for relation id {relation_id} before its Relation message",
                relation_id=relation_id,
            )
        return info

    def _key_of(self, info: RelationInfo) -> tuple[str, ...] | None:
        names = {column.name for column in info.columns}
        given = self._primary_keys.get((info.schema, info.table))
        if given is not None:
            return given if all(name in names for name in given) else None
        if info.replica_identity == "f":
            return None  # every column is flagged: the flags do not name the key
        flagged = tuple(column.name for column in info.columns if column.key)
        return flagged or None


@dataclass(frozen=True, slots=True)
class RowPlan:
    """How to read the tuples of one relation version (see `Relations.plan`)."""

    info: RelationInfo
    columns: tuple[tuple[str, Converter | None, bool], ...]


def _with_version(info: RelationInfo, version: int) -> RelationInfo:
    return RelationInfo(
        info.relation_id,
        info.schema,
        info.table,
        info.replica_identity,
        info.columns,
        version,
        info.primary_key,
    )


def _with_key(info: RelationInfo, key: tuple[str, ...] | None) -> RelationInfo:
    return RelationInfo(
        info.relation_id,
        info.schema,
        info.table,
        info.replica_identity,
        info.columns,
        info.version,
        key,
    )


@dataclass(frozen=True, slots=True)
class RowChange:
    """A change decoded against the relation cache as it stood when its message came,
    not yet placed in its transaction: what a streamed transaction spools until its
    Stream Commit gives it a commit LSN (a later Relation message must not re-read it).
    """

    op: Op
    schema: str
    table: str
    relation_version: int
    lsn: int | None
    key: dict[str, Any] | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    message: dict[str, Any] | None = None


@dataclass(slots=True)
class Transaction:
    """What the caller knows of one committed transaction, and its change counters.

    `commit_lsn` and `commit_ts` (µs since 2000-01-01, as pgoutput sends it) come from
    Begin (final_lsn, commit_ts) or Stream Commit; a non-transactional logical message
    is its own transaction at its own LSN with `xid` None. `place` numbers the changes
    0, 1, 2... in the order given: rows sharing one WAL LSN (multi-row INSERT, COPY)
    still get distinct positions.
    """

    db: str
    commit_lsn: int
    commit_ts: int
    xid: int | None
    next_index: int = 0
    _per_table: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def ts_ms(self) -> int:
        return (self.commit_ts + PG_EPOCH_UNIX_US) // 1000

    def place(self, row: RowChange) -> Change:
        return self._place(
            row.op,
            row.schema,
            row.table,
            row.relation_version,
            row.lsn,
            row.key,
            row.before,
            row.after,
            row.message,
        )

    def _place(
        self,
        op: Op,
        schema: str,
        table: str,
        relation_version: int,
        lsn: int | None,
        key: dict[str, Any] | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        message: dict[str, Any] | None = None,
    ) -> Change:
        index = self.next_index
        self.next_index = index + 1
        per_table = self._per_table
        in_table = per_table.get((schema, table), 0) + 1
        per_table[(schema, table)] = in_table
        return Change(
            op=op,
            connector="postgresql",
            db=self.db,
            schema=schema,
            table=table,
            position=SourcePosition(self.commit_lsn, index),
            ts_ms=self.ts_ms,
            key=key,
            before=before,
            after=after,
            lsn=lsn,
            tx_id=self.xid,
            relation_version=relation_version,
            total_order=index + 1,
            data_collection_order=in_table,
            message=message,
        )


RowMessage = Insert | Update | Delete | Truncate | LogicalMessage


def to_changes(
    message: RowMessage, relations: Relations, tx: Transaction, *, lsn: int | None = None
) -> list[Change]:
    """The changes one message makes, placed after those `tx` has already numbered."""
    if type(message) is Insert:
        # The hot path: the Change straight from the row, without a RowChange between
        # (what row_changes then place would give, field for field).
        info = relations[message.relation_id]
        after = _row(relations.plan(info), message.new)
        key = _key(info, after)
        return [tx._place("c", info.schema, info.table, info.version, lsn, key, None, after)]
    return [tx.place(row) for row in row_changes(message, relations, lsn=lsn)]


_I16_AT = struct.Struct("!h").unpack_from
_I32_AT = struct.Struct("!i").unpack_from
_U32_AT = struct.Struct("!I").unpack_from
_NEW, _TEXT, _NULL, _TOAST = b"N"[0], b"t"[0], b"n"[0], b"u"[0]


def insert_changes(
    payload: bytes, relations: Relations, tx: Transaction, *, lsn: int | None = None
) -> list[Change] | None:
    """The change of one pgoutput Insert message (outside a stream), read from its bytes
    straight into the row: what ``to_changes(decode(payload), ...)`` returns, without
    the tuple and the Insert between. For the common case only (a known relation, its
    column count, text/NULL/TOAST values that convert): anything else returns None with
    nothing placed, and the caller takes that general path, which decides and raises as
    before. The hot path of a capture."""
    try:
        (relation_id,) = _U32_AT(payload, 1)
        info = relations._by_id.get(relation_id)
        if info is None or payload[5] != _NEW:
            return None
        columns = relations.plan(info).columns
        (count,) = _I16_AT(payload, 6)
        if count != len(columns):
            return None
        pos, size_all = 8, len(payload)
        row: dict[str, Any] = {}
        for name, convert, _ in columns:
            kind = payload[pos]
            if kind == _TEXT:
                (size,) = _I32_AT(payload, pos + 1)
                start = pos + 5
                pos = start + size
                if size < 0 or pos > size_all:
                    return None
                text = payload[start:pos].decode("utf-8")
                row[name] = text if convert is None else convert(text)
            elif kind == _NULL:
                row[name] = None
                pos += 1
            elif kind == _TOAST:
                row[name] = UNAVAILABLE
                pos += 1
            else:
                return None
        if pos != size_all:
            return None
    except Exception:  # any doubt: the general path gives the real answer (or error)
        return None
    key = _key(info, row)
    return [tx._place("c", info.schema, info.table, info.version, lsn, key, None, row)]


def row_changes(
    message: RowMessage, relations: Relations, *, lsn: int | None = None
) -> list[RowChange]:
    """Decode one message's values against the relation cache as it is now.

    `lsn` is the message's own WAL position (the XLogData start, or the SQL functions'
    `lsn` column). A truncate of n tables gives n changes; the others give one.
    """
    if isinstance(message, Truncate):
        return [_truncate(relations[rid], lsn) for rid in message.relation_ids]
    if isinstance(message, LogicalMessage):
        return [_message(message, lsn)]
    info = relations[message.relation_id]
    plan = relations.plan(info)
    if isinstance(message, Insert):
        after = _row(plan, message.new)
        return [_change("c", info, lsn, key=_key(info, after), after=after)]
    if isinstance(message, Delete):
        old = _row(plan, message.old, identity_only=message.old_kind == "K")
        return [_change("d", info, lsn, key=_key(info, old), before=old)]
    before: dict[str, Any] | None = None
    if message.old is not None:
        before = _row(plan, message.old, identity_only=message.old_kind == "K")
    after = _row(plan, message.new)
    if before is not None:
        for name, value in after.items():
            if value is UNAVAILABLE and before.get(name, UNAVAILABLE) is not UNAVAILABLE:
                after[name] = before[name]  # unchanged TOAST: the old row has it
    return [_change("u", info, lsn, key=_key(info, after), before=before, after=after)]


def _change(
    op: Op,
    info: RelationInfo,
    lsn: int | None,
    *,
    key: dict[str, Any] | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> RowChange:
    return RowChange(op, info.schema, info.table, info.version, lsn, key, before, after)


def _truncate(info: RelationInfo, lsn: int | None) -> RowChange:
    return _change("t", info, lsn, key=None)


def _message(message: LogicalMessage, lsn: int | None) -> RowChange:
    # Debezium's message block: the content is bytes, which its JSON writes as base64.
    content = base64.b64encode(message.content).decode("ascii")
    return RowChange(
        "m",
        "",
        "",
        1,
        message.lsn if lsn is None else lsn,
        message={"prefix": message.prefix, "content": content},
    )


def _row(plan: RowPlan, values: TupleData, *, identity_only: bool = False) -> dict[str, Any]:
    """A tuple as {column: value}; with `identity_only` (an old key, 'K') only the
    replica identity's columns: the others are sent as nulls that are not values."""
    columns = plan.columns
    if len(values) != len(columns):
        info = plan.info
        raise CorruptionError(
            f"pgoutput tuple of {len(values)} columns for {info.schema}.{info.table}, "
            f"whose Relation message has {len(columns)}",
            relation_id=info.relation_id,
        )
    row: dict[str, Any] = {}
    for (name, convert, key), value in zip(columns, values, strict=True):
        if identity_only and not key:
            continue
        if type(value) is str:
            row[name] = value if convert is None else convert(value)
        elif isinstance(value, Binary):
            info = plan.info
            raise NotSupported(
                f"binary-format value in {info.schema}.{info.table}.{name}: "
                "start the slot without binary 'true'",
                column=name,
            )
        else:
            row[name] = value  # None (SQL NULL) or UNAVAILABLE (unchanged TOAST)
    return row


def _key(info: RelationInfo, row: dict[str, Any]) -> dict[str, Any] | None:
    names = info.primary_key
    if names is None:
        return None
    try:
        return {name: row[name] for name in names}
    except KeyError:  # a key column the message did not carry
        return None
