"""One captured row change, whatever its source, and its Debezium-compatible envelope.

Every source (PostgreSQL's pgoutput stream, SQLite's change table, a snapshot of either)
produces `Change` values; the sink writes each as one log record whose key and value are
what Debezium's JSON converter (schemas disabled) writes, so a consumer written for
Debezium reads ours unchanged.

Position: a change is placed by (commit position, index within its transaction). On
PostgreSQL the commit position is the transaction's commit LSN; rows of one multi-row
INSERT or COPY share a WAL LSN but never an index, so a restart tells them apart
(debezium#7531). On SQLite it is the change table's id of the transaction's first row.
Snapshot rows are ordered before every streamed change they could overlap (see the
sources).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal

import msgspec

Op = Literal["c", "u", "d", "r", "t", "m"]
OPS: Final = ("c", "u", "d", "r", "t", "m")

# Debezium's placeholder for a TOASTed column whose value the change does not carry
# (unchanged and not in the replica identity). Kept as the same string on the wire so
# Debezium consumers recognise it; in Python it is the `UNAVAILABLE` singleton, so a
# consumer can never mistake it for a value (it is not None and not a str).
#: The placeholder text of an unavailable value in a stored change event.
UNAVAILABLE_TEXT: Final = "__debezium_unavailable_value"


class _Unavailable:
    """The value of a column the source did not send (unchanged TOAST)."""

    _instance: _Unavailable | None = None

    def __new__(cls) -> _Unavailable:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNAVAILABLE"

    def __reduce__(self) -> str:
        return "UNAVAILABLE"


#: The value of a column the source did not send (unchanged TOAST): not None, not a str.
UNAVAILABLE: Final = _Unavailable()


@dataclass(frozen=True, slots=True, order=True)
class SourcePosition:
    """Where a change sits in its source's commit order: compare to order them.

    `commit` is the transaction's commit LSN (PostgreSQL) or change id (SQLite); `index`
    the change's place inside that transaction (0-based). Snapshot rows use the position
    the snapshot was taken at with their own increasing index.
    """

    commit: int
    index: int

    def __str__(self) -> str:
        return f"{self.commit}:{self.index}"

    @classmethod
    def parse(cls, text: str) -> SourcePosition:
        """The position ``commit:index`` (as `str` writes it)."""
        commit, _, index = text.partition(":")
        return cls(int(commit), int(index))


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change of one row (or a truncate, or a logical message).

    before/after map column name to value (JSON-ready: see `json_value`); either may be
    None as Debezium's envelope has it (no `before` for an insert unless the source sends
    it, no `after` for a delete). `key` is the primary key's columns (None for a table
    without one, a truncate or a message). `relation_version` counts the schema versions
    of the table this change was decoded with (it grows at each column add, drop or
    retype the source reports).
    """

    op: Op
    connector: str  # "postgresql" or "sqlite"
    db: str
    schema: str
    table: str
    position: SourcePosition
    ts_ms: int  # the source's commit time
    key: dict[str, Any] | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    lsn: int | None = None  # the change's own WAL position (PostgreSQL)
    tx_id: int | None = None
    snapshot: Literal["false", "true", "first", "last", "incremental"] = "false"
    relation_version: int = 1
    total_order: int = 0  # 1-based order within the transaction (Debezium's)
    data_collection_order: int = 0  # 1-based order within the transaction and table
    message: dict[str, Any] | None = field(default=None)  # op "m": prefix, content

    def topic(self, prefix: str) -> str:
        """Debezium's topic name: `prefix.schema.table` (SQLite: `prefix.main.table`); a
        logical message's (op "m", no table) is `prefix.message`."""
        if self.op == "m" and not self.table:
            return f"{prefix}.message"
        return f"{prefix}.{self.schema}.{self.table}"

    def envelope(self, name: str, captured_ms: int) -> dict[str, Any]:
        """The record's value: Debezium's change-event envelope, schemas disabled."""
        source: dict[str, Any] = {
            "version": "unbundled",
            "connector": self.connector,
            "name": name,
            "ts_ms": self.ts_ms,
            "snapshot": self.snapshot,
            "db": self.db,
            # json.dumps([str(commit), str(index)]) (its default separators), without the call.
            "sequence": f'["{self.position.commit}", "{self.position.index}"]',
            "schema": self.schema,
            "table": self.table,
            "txId": self.tx_id,
            "lsn": self.lsn,
            "relation_version": self.relation_version,
        }
        body: dict[str, Any] = {
            "before": _json_row(self.before),
            "after": _json_row(self.after),
            "source": source,
            "op": self.op,
            "ts_ms": captured_ms,
            "transaction": None,
        }
        if self.tx_id is not None and self.op != "r":
            body["transaction"] = {
                "id": f"{self.tx_id}:{self.position.commit}",
                "total_order": self.total_order,
                "data_collection_order": self.data_collection_order,
            }
        if self.message is not None:
            body["message"] = self.message
        return body

    def envelope_json(self, name: str, captured_ms: int) -> bytes:
        """``encode(self.envelope(name, captured_ms))``, byte for byte, built as msgspec
        structs (encoded in field order) instead of dicts: the sink's per-change cost."""
        position = self.position
        transaction = None
        if self.tx_id is not None and self.op != "r":
            transaction = _Transaction(
                f"{self.tx_id}:{position.commit}", self.total_order, self.data_collection_order
            )
        source = _Source(
            "unbundled",
            self.connector,
            name,
            self.ts_ms,
            self.snapshot,
            self.db,
            f'["{position.commit}", "{position.index}"]',
            self.schema,
            self.table,
            self.tx_id,
            self.lsn,
            self.relation_version,
        )
        body = _Envelope(
            _json_row(self.before),
            _json_row(self.after),
            source,
            self.op,
            captured_ms,
            transaction,
            msgspec.UNSET if self.message is None else self.message,
        )
        try:
            return _encoder.encode(body)
        except (TypeError, msgspec.EncodeError):
            return slow_encode(self.envelope(name, captured_ms))  # json.dumps decides

    def key_json(self) -> dict[str, Any] | None:
        """The record's key as Debezium writes it: the primary key's columns."""
        return _json_row(self.key)


# Values json_value returns unchanged (bool is an int): checked by exact type, so most
# columns skip the call (a subclass, e.g. an IntEnum, still goes through json_value).
_PLAIN: Final = frozenset({str, int, bool, type(None)})


def _json_row(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    plain = _PLAIN
    return {
        name: value if type(value) in plain else json_value(value) for name, value in row.items()
    }


def json_value(value: Any) -> Any:
    """A column value as Debezium's JSON converter writes it (full precision kept).

    Decimal -> string (decimal.handling.mode=string; NaN and infinities as their names);
    float NaN/inf -> "NaN"/"Infinity"/"-Infinity" (JSON has no such numbers); bytes ->
    base64 (Debezium's binary.handling.mode=base64); UNAVAILABLE -> its placeholder.
    Sources give other types already JSON-ready (str, int, bool, None, lists, dicts).
    """
    if value is UNAVAILABLE:
        return UNAVAILABLE_TEXT
    if isinstance(value, Decimal):
        if value.is_nan():
            return "NaN"
        if value.is_infinite():
            return "Infinity" if value > 0 else "-Infinity"
        # Plain digits as PostgreSQL prints them: str() would write 1E-7 for 0.0000001.
        return format(value, "f")
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            return "NaN"
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, list):
        return [json_value(item) for item in value]
    return value


_encoder: Final = msgspec.json.Encoder()


class _Source(msgspec.Struct):
    """The envelope's `source` block; fields in Debezium's order (see `Change.envelope`)."""

    version: str
    connector: str
    name: str
    ts_ms: int
    snapshot: str
    db: str
    sequence: str
    schema: str
    table: str
    txId: int | None  # noqa: N815 - Debezium's field name
    lsn: int | None
    relation_version: int


class _Transaction(msgspec.Struct):
    id: str
    total_order: int
    data_collection_order: int


class _Envelope(msgspec.Struct, omit_defaults=True):
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    source: _Source
    op: str
    ts_ms: int
    transaction: _Transaction | None
    message: Any = msgspec.UNSET  # only a logical message's envelope has the key


def encode(obj: Any) -> bytes:
    """Compact JSON bytes, keys in insertion order (the envelope's field order).

    msgspec writes what json.dumps(separators=(",", ":"), ensure_ascii=False) writes, several
    times faster, except floats in exponent form (1e16, not 1e+16: the same number). What
    it refuses (an object JSON has no form for) goes through json.dumps, whose error the
    caller gets as before.
    """
    try:
        return _encoder.encode(obj)
    except (TypeError, msgspec.EncodeError):
        return slow_encode(obj)


def slow_encode(obj: Any) -> bytes:
    """The reference `encode`: the standard library's JSON (NaN refused)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
