"""A small test-side encoder of pgoutput messages: the inverse of the decoder.

Written from PostgreSQL's message-format documentation, independently of the decoder,
so a round trip checks both against the same reading of the format.
"""

from __future__ import annotations

import struct

from unbundled.cdc._change import UNAVAILABLE
from unbundled.cdc._pgoutput import (
    Begin,
    Binary,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TupleData,
    Type,
    Update,
)


def _cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


def _tuple(values: TupleData) -> bytes:
    out = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNAVAILABLE:
            out += b"u"
        elif isinstance(value, Binary):
            out += b"b" + struct.pack("!i", len(value.data)) + value.data
        else:
            assert isinstance(value, str)
            raw = value.encode()
            out += b"t" + struct.pack("!i", len(raw)) + raw
    return out


def _xid(xid: int | None) -> bytes:
    return b"" if xid is None else struct.pack("!I", xid)


def encode(message: Message) -> bytes:
    """The bytes pgoutput sends for `message` (an xid field set means 'in a stream')."""
    match message:
        case Begin(lsn, ts, xid):
            return b"B" + struct.pack("!QqI", lsn, ts, xid)
        case Commit(flags, lsn, end, ts):
            return b"C" + struct.pack("!BQQq", flags, lsn, end, ts)
        case Origin(lsn, name):
            return b"O" + struct.pack("!Q", lsn) + _cstring(name)
        case Relation(rid, namespace, name, identity, columns, xid):
            out = b"R" + _xid(xid) + struct.pack("!I", rid) + _cstring(namespace)
            out += _cstring(name) + identity.encode() + struct.pack("!h", len(columns))
            for column in columns:
                out += struct.pack("!B", 1 if column.key else 0) + _cstring(column.name)
                out += struct.pack("!Ii", column.type_oid, column.type_modifier)
            return out
        case Type(oid, namespace, name, xid):
            return b"Y" + _xid(xid) + struct.pack("!I", oid) + _cstring(namespace) + _cstring(name)
        case Insert(rid, new, xid):
            return b"I" + _xid(xid) + struct.pack("!I", rid) + b"N" + _tuple(new)
        case Update(rid, new, old, old_kind, xid):
            out = b"U" + _xid(xid) + struct.pack("!I", rid)
            if old is not None:
                assert old_kind is not None
                out += old_kind.encode() + _tuple(old)
            return out + b"N" + _tuple(new)
        case Delete(rid, old, old_kind, xid):
            return b"D" + _xid(xid) + struct.pack("!I", rid) + old_kind.encode() + _tuple(old)
        case Truncate(rids, cascade, restart, xid):
            options = (1 if cascade else 0) | (2 if restart else 0)
            out = b"T" + _xid(xid) + struct.pack("!IB", len(rids), options)
            return out + b"".join(struct.pack("!I", rid) for rid in rids)
        case LogicalMessage(transactional, lsn, prefix, content, xid):
            out = b"M" + _xid(xid) + struct.pack("!BQ", 1 if transactional else 0, lsn)
            return out + _cstring(prefix) + struct.pack("!i", len(content)) + content
        case StreamStart(xid, first):
            return b"S" + struct.pack("!IB", xid, 1 if first else 0)
        case StreamStop():
            return b"E"
        case StreamCommit(xid, flags, lsn, end, ts):
            return b"c" + struct.pack("!IBQQq", xid, flags, lsn, end, ts)
        case StreamAbort(xid, subxid, abort_lsn, abort_ts):
            out = b"A" + struct.pack("!II", xid, subxid)
            if abort_lsn is not None:
                assert abort_ts is not None
                out += struct.pack("!Qq", abort_lsn, abort_ts)
            return out
    raise AssertionError(f"no encoding for {message!r}")
