"""Reading a connector's topics back: the table state the change events add up to.

Used by the CDC checker and by derived views that rebuild from the log: apply every
change event of a table's topic in log order (one key lives in one partition, so its
events are in source order there), up to an optional source position.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CorruptionError
from ._change import UNAVAILABLE_TEXT, SourcePosition

if TYPE_CHECKING:
    from ..log import Log, Record


@dataclass(frozen=True, slots=True)
class Event:
    """One change event as stored: its log place, source position and envelope."""

    topic: str
    partition: int
    offset: int
    position: SourcePosition
    key: Any
    value: dict[str, Any]

    @property
    def op(self) -> str:
        return str(self.value.get("op", "m"))


def decode(record: Record) -> Event | None:
    """A stored record as a change event (None for a tombstone). Raises CorruptionError."""
    if record.value is None:
        return None
    try:
        value = json.loads(record.value)
        commit, index = json.loads(value["source"]["sequence"])
        key = None if record.key is None else json.loads(record.key)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptionError(
            f"{record.topic}[{record.partition}]@{record.offset} is not a change event: {exc}"
        ) from exc
    return Event(
        record.topic,
        record.partition,
        record.offset,
        SourcePosition(int(commit), int(index)),
        key,
        value,
    )


def events(log: Log, topic: str, *, batch: int = 1000) -> Iterator[Event]:
    """Every change event of ``topic``, partition by partition, in offset order."""
    for partition, end in sorted(log.end_offsets(topic).items()):
        offset = 0
        while offset < end:
            records = log.read(topic, partition, offset, records_max=batch)
            if not records:
                break
            for record in records:
                event = decode(record)
                if event is not None:
                    yield event
            offset = records[-1].offset + 1


def key_text(key: Any) -> str:
    """A key as a stable dict key (its JSON with sorted fields)."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def table_state(
    log: Log, topic: str, *, through: SourcePosition | None = None
) -> dict[str, dict[str, Any]]:
    """key -> row that the topic's events add up to (only those at or before ``through``)."""
    rows: dict[str, dict[str, Any]] = {}
    for event in events(log, topic):
        if through is not None and event.position > through:
            continue
        apply_event(rows, event)
    return rows


@dataclass(frozen=True, slots=True)
class RowOp:
    """One effect of a change event on a keyed view: put a row, delete a key, or clear.

    ``row`` may hold `UNAVAILABLE_TEXT` for columns the source did not send: a view keeps
    the value it holds for them (`merge`), never the placeholder.
    """

    op: str  # "put", "delete" or "clear"
    key: str  # key_text of the row's key ("" for clear)
    row: dict[str, Any] | None = None


def row_ops(event: Event) -> list[RowOp]:
    """What ``event`` does to a keyed table: c/u/r put, d delete, t clear, m nothing.

    An update that moves a row to another key deletes the old key first. Raises
    CorruptionError for a c/u/r without an after image.
    """
    op = event.op
    if op == "t":
        return [RowOp("clear", "")]
    if op == "d":
        return [RowOp("delete", key_text(event.key))]
    if op not in ("c", "u", "r"):
        return []  # logical messages change no table
    after = event.value.get("after")
    if not isinstance(after, dict):
        raise CorruptionError(f"{event.topic}@{event.offset}: op {op!r} without an after image")
    ops = []
    before = event.value.get("before")
    if op == "u" and isinstance(before, dict) and isinstance(event.key, dict):
        old = key_text(_key_of(before, event.key))
        if old != key_text(event.key):  # a key change: the old key's row is gone
            ops.append(RowOp("delete", old))
    ops.append(RowOp("put", key_text(event.key), after))
    return ops


def merge(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with each UNAVAILABLE_TEXT column replaced by the value in ``old`` (dropped
    if ``old`` has none): an unchanged TOASTed value is never written as the placeholder."""
    if UNAVAILABLE_TEXT not in new.values():
        return new
    out = {}
    for name, value in new.items():
        if value == UNAVAILABLE_TEXT:
            if old is not None and name in old:
                out[name] = old[name]
        else:
            out[name] = value
    return out


def apply_ops(rows: dict[str, dict[str, Any]], ops: list[RowOp]) -> None:
    """Apply row operations to an in-memory table (key_text -> row)."""
    for item in ops:
        if item.op == "clear":
            rows.clear()  # partitions > 1 make a truncate's place approximate: use one
        elif item.op == "delete":
            rows.pop(item.key, None)
        else:
            assert item.row is not None
            rows[item.key] = merge(rows.get(item.key), item.row)


def apply_event(rows: dict[str, dict[str, Any]], event: Event) -> None:
    """Apply one change event to an in-memory table (key_text -> row)."""
    apply_ops(rows, row_ops(event))


def _key_of(row: dict[str, Any], key: dict[str, Any]) -> dict[str, Any]:
    return {name: row.get(name) for name in key}
