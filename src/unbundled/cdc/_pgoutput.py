"""A pure, I/O-free decoder of the messages PostgreSQL's `pgoutput` plugin sends.

One call decodes one message: the payload of one XLogData frame from the walsender,
or the `data` column of one row of `pg_logical_slot_{get,peek}_binary_changes`. The
format is PostgreSQL's "Logical Replication Message Formats" (protocol versions 1
and 2; PostgreSQL 16's parallel-apply abort fields are read when asked for).

Inside a streamed transaction (between Stream Start and Stream Stop, protocol 2)
Relation, Type, Insert, Update, Delete, Truncate and Message carry the xid of the
(sub)transaction first; `Decoder` tracks that state, `decode` takes it as a flag.

Damaged or truncated bytes raise `CorruptionError` naming the message type and the
offset; never IndexError, struct.error or UnicodeDecodeError. Text values are
decoded as UTF-8: the replication connection is expected to use that client
encoding (a value that is not UTF-8 is reported as corruption, not guessed at).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Literal, cast

from unbundled.cdc._change import UNAVAILABLE, _Unavailable
from unbundled.errors import CorruptionError, NotSupported, UsageError

# Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
PG_EPOCH_UNIX_US: Final = 946_684_800_000_000

ReplicaIdentity = Literal["d", "n", "f", "i"]  # default, nothing, full, index
_IDENTITIES: Final = frozenset("dnfi")


@dataclass(frozen=True, slots=True)
class Binary:
    """A column value sent in binary format ('b': only with the `binary` option)."""

    data: bytes


# One column of a tuple: text (str), binary, SQL NULL (None), or an unchanged
# TOASTed value the message does not carry (UNAVAILABLE, never None).
Value = str | Binary | None | _Unavailable
TupleData = tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int  # the commit LSN the transaction will have
    commit_ts: int  # microseconds since 2000-01-01 UTC (see unix_us)
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int  # on the origin server
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    name: str
    type_oid: int
    type_modifier: int  # atttypmod: -1 when the type has none
    key: bool  # part of the replica identity (every column under REPLICA IDENTITY FULL)


@dataclass(frozen=True, slots=True)
class Relation:
    relation_id: int
    namespace: str
    name: str
    replica_identity: ReplicaIdentity
    columns: tuple[RelationColumn, ...]
    xid: int | None = None  # set inside a streamed transaction


@dataclass(frozen=True, slots=True)
class Type:
    """A non-built-in data type a following Relation uses (enums, domains, arrays...)."""

    type_oid: int
    namespace: str
    name: str
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Insert:
    relation_id: int
    new: TupleData
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Update:
    """`old` is set with `old_kind` 'K' (the old key: other columns null) or 'O' (the
    whole old row, REPLICA IDENTITY FULL); both None when the key did not change."""

    relation_id: int
    new: TupleData
    old: TupleData | None = None
    old_kind: Literal["K", "O"] | None = None
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    relation_id: int
    old: TupleData
    old_kind: Literal["K", "O"]
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_ids: tuple[int, ...]
    cascade: bool
    restart_identity: bool
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A message written with pg_logical_emit_message."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    pass


@dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """`subxid` equals `xid` when the whole transaction aborted, else only that
    subtransaction's changes are void. `abort_lsn`/`abort_ts` only with parallel
    streaming (PostgreSQL 16+, protocol 4)."""

    xid: int
    subxid: int
    abort_lsn: int | None = None
    abort_ts: int | None = None


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)

_NAMES: Final = {
    b"B"[0]: "Begin",
    b"C"[0]: "Commit",
    b"O"[0]: "Origin",
    b"R"[0]: "Relation",
    b"Y"[0]: "Type",
    b"I"[0]: "Insert",
    b"U"[0]: "Update",
    b"D"[0]: "Delete",
    b"T"[0]: "Truncate",
    b"M"[0]: "Message",
    b"S"[0]: "Stream Start",
    b"E"[0]: "Stream Stop",
    b"c"[0]: "Stream Commit",
    b"A"[0]: "Stream Abort",
}
_STREAM_CONTROL: Final = frozenset(b"SEcA")
_STREAMABLE: Final = frozenset(b"RYIUDTM")  # carry an xid inside a stream
# Two-phase commit messages (protocol 3, `two_phase` option): we never ask for them.
_TWO_PHASE: Final = {
    b"b"[0]: "Begin Prepare",
    b"P"[0]: "Prepare",
    b"K"[0]: "Commit Prepared",
    b"r"[0]: "Rollback Prepared",
    b"p"[0]: "Stream Prepare",
}

_U8 = struct.Struct("!B")
_I16 = struct.Struct("!h")
_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")
_U64 = struct.Struct("!Q")
_I64 = struct.Struct("!q")
_TEXT, _BINARY, _NULL, _TOAST = b"t"[0], b"b"[0], b"n"[0], b"u"[0]


def unix_us(pg_ts: int) -> int:
    """A pgoutput timestamp (µs since 2000-01-01 UTC) as µs since the Unix epoch."""
    return pg_ts + PG_EPOCH_UNIX_US


class _Reader:
    """Reads one message front to back; every short read is a CorruptionError."""

    __slots__ = ("data", "kind", "pos")

    def __init__(self, data: bytes, kind: str) -> None:
        self.data = data
        self.kind = kind
        self.pos = 1  # after the type byte

    def fail(self, why: str, at: int | None = None) -> CorruptionError:
        offset = self.pos if at is None else at
        return CorruptionError(
            f"pgoutput {self.kind} message damaged at offset {offset}: {why}",
            message_type=self.kind,
            offset=offset,
        )

    def _take(self, fmt: struct.Struct, what: str) -> int:
        if self.pos + fmt.size > len(self.data):
            raise self.fail(f"truncated: {what} needs {fmt.size} bytes")
        (value,) = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return int(value)

    def u8(self, what: str) -> int:
        return self._take(_U8, what)

    def i16(self, what: str) -> int:
        return self._take(_I16, what)

    def u32(self, what: str) -> int:
        return self._take(_U32, what)

    def i32(self, what: str) -> int:
        return self._take(_I32, what)

    def u64(self, what: str) -> int:
        return self._take(_U64, what)

    def i64(self, what: str) -> int:
        return self._take(_I64, what)

    def raw(self, size: int, what: str) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise self.fail(f"truncated: {what} of {size} bytes")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value

    def utf8(self, raw: bytes, what: str, at: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} is not UTF-8 ({e.reason})", at) from e

    def cstring(self, what: str) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise self.fail(f"truncated: {what} has no terminating NUL")
        start = self.pos
        self.pos = end + 1
        return self.utf8(self.data[start:end], what, start)

    def flags(self, what: str, allowed: int) -> int:
        # Bits no protocol version we speak defines mean the bytes are not pgoutput's.
        at = self.pos
        value = self.u8(what)
        if value & ~allowed:
            raise self.fail(f"{what} {value:#04x} has undefined bits", at)
        return value

    def done(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} unexpected bytes after the message")

    def tuple_data(self) -> TupleData:
        """The columns of one tuple: the fast reader, and on any doubt the checked one
        (which names what is wrong, or agrees: the fast one gives up on odd input too)."""
        try:
            values, end = _fast_tuple(self.data, self.pos)
        except (IndexError, struct.error, UnicodeDecodeError, _GiveUp):
            return self.tuple_data_checked()
        self.pos = end
        return values

    def tuple_data_checked(self) -> TupleData:
        """`tuple_data` one checked read at a time: the reference, and the error path."""
        count = self.i16("the column count")
        if count < 0:
            raise self.fail(f"negative column count {count}", self.pos - 2)
        values: list[Value] = []
        for _ in range(count):
            at = self.pos
            kind = self.u8("a column kind")
            if kind == _TEXT:
                size = self.i32("a value length")
                values.append(self.utf8(self.raw(size, "a text value"), "a text value", at))
            elif kind == _NULL:
                values.append(None)
            elif kind == _TOAST:
                values.append(UNAVAILABLE)
            elif kind == _BINARY:
                size = self.i32("a value length")
                values.append(Binary(self.raw(size, "a binary value")))
            else:
                raise self.fail(f"unknown column kind {kind:#04x}", at)
        return tuple(values)

    def old_kind(self, allowed: bytes) -> Literal["K", "O", "N"]:
        at = self.pos
        marker = self.u8("a tuple marker")
        if marker not in allowed:
            expected = "/".join(chr(b) for b in allowed)
            raise self.fail(f"tuple marker {marker:#04x}, expected {expected}", at)
        return "K" if marker == b"K"[0] else "O" if marker == b"O"[0] else "N"


class _GiveUp(Exception):
    """The fast tuple reader met something it leaves to the checked one."""


_I16_AT = _I16.unpack_from
_I32_AT = _I32.unpack_from
_U32_AT = _U32.unpack_from
_INSERT, _NEW = b"I"[0], b"N"[0]


def _fast_tuple(data: bytes, pos: int) -> tuple[TupleData, int]:
    """A tuple's values and the offset after them, with no per-field method calls: the
    hot path of every insert, update and delete. Short or damaged input raises
    IndexError, struct.error, UnicodeDecodeError or _GiveUp, never a wrong value."""
    (count,) = _I16_AT(data, pos)
    if count < 0:
        raise _GiveUp
    pos += 2
    size_all = len(data)
    values: list[Value] = []
    append = values.append
    for _ in range(count):
        kind = data[pos]
        if kind == _TEXT:
            (size,) = _I32_AT(data, pos + 1)
            start = pos + 5
            pos = start + size
            if size < 0 or pos > size_all:
                raise _GiveUp
            append(data[start:pos].decode("utf-8"))
        elif kind == _NULL:
            append(None)
            pos += 1
        elif kind == _TOAST:
            append(UNAVAILABLE)
            pos += 1
        else:
            raise _GiveUp  # binary values (never asked for) and unknown kinds: checked path
    return tuple(values), pos


def decode(data: bytes, *, in_stream: bool = False, abort_info: bool = False) -> Message:
    """Decode one pgoutput message.

    `in_stream`: the message sits between Stream Start and Stream Stop, so the
    messages that carry an xid there have one. `abort_info`: Stream Abort carries the
    abort LSN and time (streaming = parallel). A message type of protocol 3's two-phase
    commit raises NotSupported; any other unknown type, a short or over-long message
    raises CorruptionError.
    """
    data = bytes(data)
    if not data:
        raise CorruptionError(
            "pgoutput message damaged at offset 0: empty", message_type="?", offset=0
        )
    tag = data[0]
    if tag == _INSERT and not in_stream:
        # The hot path: an insert outside a stream, read without the checked reader. Any
        # doubt (short, damaged, binary) falls through to it, which decides as before.
        try:
            (relation_id,) = _U32_AT(data, 1)
            if data[5] == _NEW:
                values, end = _fast_tuple(data, 6)
                if end == len(data):
                    return Insert(relation_id, values)
        except (IndexError, struct.error, UnicodeDecodeError, _GiveUp):
            pass
    if tag in _TWO_PHASE:
        raise NotSupported(
            f"pgoutput {_TWO_PHASE[tag]} (two-phase commit) is not supported: "
            "create the slot without two_phase",
            message_type=_TWO_PHASE[tag],
        )
    name = _NAMES.get(tag)
    if name is None:
        raise CorruptionError(
            f"pgoutput message damaged at offset 0: unknown message type {tag:#04x}",
            message_type=repr(chr(tag)),
            offset=0,
        )
    r = _Reader(data, name)
    xid = r.u32("the xid") if in_stream and tag in _STREAMABLE else None
    message = _decode_body(r, tag, xid, abort_info)
    r.done()
    return message


def _decode_body(r: _Reader, tag: int, xid: int | None, abort_info: bool) -> Message:
    if tag == b"B"[0]:
        return Begin(r.u64("the final LSN"), r.i64("the commit time"), r.u32("the xid"))
    if tag == b"C"[0]:
        return Commit(
            r.u8("the flags"), r.u64("the commit LSN"), r.u64("the end LSN"), r.i64("the time")
        )
    if tag == b"I"[0]:
        relation_id = r.u32("the relation id")
        r.old_kind(b"N")
        return Insert(relation_id, r.tuple_data(), xid)
    if tag == b"U"[0]:
        return _update(r, xid)
    if tag == b"D"[0]:
        relation_id = r.u32("the relation id")
        kind = r.old_kind(b"KO")
        assert kind != "N"
        return Delete(relation_id, r.tuple_data(), kind, xid)
    if tag == b"R"[0]:
        return _relation(r, xid)
    if tag == b"O"[0]:
        return Origin(r.u64("the origin's commit LSN"), r.cstring("the origin name"))
    if tag == b"Y"[0]:
        return Type(r.u32("the type oid"), r.cstring("the namespace"), r.cstring("the name"), xid)
    if tag == b"T"[0]:
        return _truncate(r, xid)
    if tag == b"M"[0]:
        flags = r.flags("the flags", 1)
        lsn = r.u64("the LSN")
        prefix = r.cstring("the prefix")
        content = r.raw(r.i32("the content length"), "the content")
        return LogicalMessage(bool(flags & 1), lsn, prefix, content, xid)
    return _stream_control(r, tag, abort_info)


def _stream_control(r: _Reader, tag: int, abort_info: bool) -> Message:
    if tag == b"S"[0]:
        xid = r.u32("the xid")
        at = r.pos
        first = r.u8("the first-segment flag")
        if first > 1:
            raise r.fail(f"first-segment flag {first}, expected 0 or 1", at)
        return StreamStart(xid, first == 1)
    if tag == b"E"[0]:
        return StreamStop()
    if tag == b"c"[0]:
        return StreamCommit(
            r.u32("the xid"),
            r.u8("the flags"),
            r.u64("the commit LSN"),
            r.u64("the end LSN"),
            r.i64("the commit time"),
        )
    assert tag == b"A"[0]
    xid, subxid = r.u32("the xid"), r.u32("the subtransaction xid")
    if abort_info:
        return StreamAbort(xid, subxid, r.u64("the abort LSN"), r.i64("the abort time"))
    return StreamAbort(xid, subxid)


def _update(r: _Reader, xid: int | None) -> Update:
    relation_id = r.u32("the relation id")
    kind = r.old_kind(b"KON")
    if kind == "N":
        return Update(relation_id, r.tuple_data(), xid=xid)
    old = r.tuple_data()
    r.old_kind(b"N")
    return Update(relation_id, r.tuple_data(), old, kind, xid)


def _relation(r: _Reader, xid: int | None) -> Relation:
    relation_id = r.u32("the relation id")
    namespace = r.cstring("the namespace")
    name = r.cstring("the relation name")
    at = r.pos
    identity = chr(r.u8("the replica identity"))
    if identity not in _IDENTITIES:
        raise r.fail(f"replica identity {identity!r}, expected one of d/n/f/i", at)
    count = r.i16("the column count")
    if count < 0:
        raise r.fail(f"negative column count {count}", r.pos - 2)
    columns = []
    for _ in range(count):
        flags = r.flags("the column flags", 1)
        columns.append(
            RelationColumn(
                name=r.cstring("a column name"),
                type_oid=r.u32("a column type"),
                type_modifier=r.i32("a type modifier"),
                key=bool(flags & 1),
            )
        )
    return Relation(
        relation_id, namespace, name, cast(ReplicaIdentity, identity), tuple(columns), xid
    )


def _truncate(r: _Reader, xid: int | None) -> Truncate:
    count = r.u32("the relation count")
    options = r.flags("the options", 3)
    if count * 4 > len(r.data) - r.pos:
        raise r.fail(f"truncated: {count} relation ids announced")
    ids = tuple(r.u32("a relation id") for _ in range(count))
    return Truncate(ids, bool(options & 1), bool(options & 2), xid)


class Decoder:
    """Decodes a stream of messages in order, tracking the streamed-transaction state.

    `protocol_version` is the `proto_version` the slot was started with (1 or 2; 3 and 4
    decode as 2). A stream message under protocol 1, a Stream Start inside a stream,
    a Stream Stop outside one, or a Begin/Commit inside one is a CorruptionError: the
    stream is not what the server sends, so nothing after it can be trusted.
    """

    __slots__ = ("_abort_info", "_in_stream", "_version")

    def __init__(self, protocol_version: int = 1, *, abort_info: bool = False) -> None:
        if protocol_version not in (1, 2, 3, 4):
            raise UsageError(
                f"protocol_version {protocol_version!r}: expected 1 to 4",
                protocol_version=protocol_version,
            )
        self._version = protocol_version
        self._abort_info = abort_info
        self._in_stream = False

    @property
    def in_stream(self) -> bool:
        return self._in_stream

    def decode(self, data: bytes) -> Message:
        tag = data[0] if data else 0
        if tag in _STREAM_CONTROL and self._version < 2:
            raise CorruptionError(
                f"pgoutput {_NAMES[tag]} message at offset 0 under protocol version 1",
                message_type=_NAMES[tag],
                offset=0,
            )
        message = decode(data, in_stream=self._in_stream, abort_info=self._abort_info)
        self._track(message)
        return message

    def _track(self, message: Message) -> None:
        kind = type(message).__name__
        if isinstance(message, StreamStart):
            if self._in_stream:
                raise CorruptionError(
                    "pgoutput Stream Start message at offset 0 inside a stream",
                    message_type=kind,
                    offset=0,
                )
            self._in_stream = True
        elif isinstance(message, StreamStop):
            if not self._in_stream:
                raise CorruptionError(
                    "pgoutput Stream Stop message at offset 0 outside a stream",
                    message_type=kind,
                    offset=0,
                )
            self._in_stream = False
        elif self._in_stream and isinstance(message, Begin | Commit | StreamCommit | StreamAbort):
            raise CorruptionError(
                f"pgoutput {kind} message at offset 0 inside a stream block",
                message_type=kind,
                offset=0,
            )
