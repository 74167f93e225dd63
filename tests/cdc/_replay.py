"""A test-side apply loop: pgoutput messages as the slot returns them -> `Change`s.

The smallest correct consumer of the decoder's API, for the tests (the real streaming
loop is the CDC source's): transactions numbered from Begin, streamed transactions
spooled as `RowChange`s and placed at Stream Commit, aborted (sub)transactions dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unbundled.cdc._change import Change
from unbundled.cdc._pgchanges import Relations, RowChange, Transaction, row_changes
from unbundled.cdc._pgoutput import (
    Begin,
    Commit,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
)


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass
class Replay:
    db: str
    protocol: int = 1
    relations: Relations = field(default_factory=Relations)
    changes: list[Change] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    stream_aborts: list[StreamAbort] = field(default_factory=list)
    _tx: Transaction | None = None
    _stream_xid: int | None = None
    _spool: dict[int, list[tuple[int | None, RowChange]]] = field(default_factory=dict)

    def feed(self, rows: list[tuple[str, int, bytes]]) -> list[Change]:
        decoder = Decoder(self.protocol)
        for lsn, _xid, data in rows:
            message = decoder.decode(data)
            self.messages.append(message)
            self._apply(message, parse_lsn(lsn))
        assert self._tx is None and not decoder.in_stream, "the slot ended mid-transaction"
        return self.changes

    def _apply(self, message: Message, lsn: int) -> None:
        match message:
            case Begin(final_lsn, commit_ts, xid):
                self._tx = Transaction(self.db, final_lsn, commit_ts, xid)
            case Commit(_, commit_lsn, _, _):
                assert self._tx is not None and self._tx.commit_lsn == commit_lsn
                self._tx = None
            case Relation():
                self.relations.apply(message)
            case Type():
                self.relations.apply_type(message)
            case StreamStart(xid, _):
                self._stream_xid = xid
            case StreamStop():
                self._stream_xid = None
            case StreamCommit(xid, _, commit_lsn, _, commit_ts):
                tx = Transaction(self.db, commit_lsn, commit_ts, xid)
                self.changes.extend(tx.place(row) for _, row in self._spool.pop(xid, []))
            case StreamAbort(xid, subxid):
                self.stream_aborts.append(message)
                self._abort(xid, subxid)
            case Insert() | Update() | Delete() | Truncate() | LogicalMessage():
                self._row(message, lsn)

    def _row(self, message: Insert | Update | Delete | Truncate | LogicalMessage, lsn: int) -> None:
        rows = row_changes(message, self.relations, lsn=lsn)
        if self._stream_xid is not None:
            self._spool.setdefault(self._stream_xid, []).extend((message.xid, r) for r in rows)
        elif self._tx is not None:
            self.changes.extend(self._tx.place(row) for row in rows)
        else:  # a non-transactional logical message: its own position
            assert isinstance(message, LogicalMessage) and not message.transactional
            tx = Transaction(self.db, message.lsn, 0, None)
            self.changes.extend(tx.place(row) for row in rows)

    def _abort(self, xid: int, subxid: int) -> None:
        if subxid == xid:
            self._spool.pop(xid, None)
            return
        # A subtransaction's changes run from its first one to the end of the spool
        # (its own subtransactions come after it): drop from there, as PostgreSQL's
        # apply worker does.
        spooled = self._spool.get(xid, [])
        first = next((i for i, (sub, _) in enumerate(spooled) if sub == subxid), len(spooled))
        del spooled[first:]
