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
from ._change import SourcePosition

if TYPE_CHECKING:
    from ..log import Log


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


def events(log: Log, topic: str, *, batch: int = 1000) -> Iterator[Event]:
    """Every change event of ``topic``, partition by partition, in offset order."""
    for partition, end in sorted(log.end_offsets(topic).items()):
        offset = 0
        while offset < end:
            records = log.read(topic, partition, offset, records_max=batch)
            if not records:
                break
            for record in records:
                if record.value is None:
                    continue
                try:
                    value = json.loads(record.value)
                    commit, index = json.loads(value["source"]["sequence"])
                    key = None if record.key is None else json.loads(record.key)
                except (ValueError, KeyError, TypeError) as exc:
                    raise CorruptionError(
                        f"{topic}[{partition}]@{record.offset} is not a change event: {exc}"
                    ) from exc
                yield Event(
                    topic,
                    partition,
                    record.offset,
                    SourcePosition(int(commit), int(index)),
                    key,
                    value,
                )
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
        op = event.op
        if op == "t":
            rows.clear()  # partitions > 1 make a truncate's place approximate: use one
        elif op == "d":
            rows.pop(key_text(event.key), None)
        elif op in ("c", "u", "r"):
            after = event.value.get("after")
            if after is None:
                raise CorruptionError(f"{topic}@{event.offset}: op {op!r} without an after image")
            before = event.value.get("before")
            if op == "u" and before is not None and event.key is not None:
                # a key change: the old key's row is gone
                rows.pop(key_text(_key_of(before, event.key)), None)
            rows[key_text(event.key)] = after
    return rows


def _key_of(row: dict[str, Any], key: dict[str, Any]) -> dict[str, Any]:
    return {name: row.get(name) for name in key}
