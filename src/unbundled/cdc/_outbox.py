"""Outbox tables, routed by aggregate type (Debezium's outbox event router).

A service that keeps its own tables cannot append to the log in its transaction, but it
can insert the event it wants to publish into an *outbox table* in the same transaction
as the state change. Capturing that table gives the publication the database's own
atomicity: the event is published if and only if the change committed.

An outbox table has Debezium's columns: ``id`` (the event's id), ``aggregatetype``,
``aggregateid``, ``type`` (the event's type) and ``payload``. An inserted row (op "c",
or "r" from a snapshot) becomes one record of topic ``outbox.event.<aggregatetype>``,
keyed by ``aggregateid`` (so one aggregate's events stay in order in one partition),
whose value is ``payload`` as it is (text as UTF-8, a bytea as its bytes, anything else
as JSON), with headers ``id`` and ``type`` and the change's position. Updates, deletes
and truncates of outbox rows are not events (services usually delete the row right
after inserting it) and are dropped. A row that cannot be routed (no ``aggregatetype``,
or one holding characters a topic may not) is written unchanged to the table's own
change topic instead: it is neither lost nor allowed to stop the connector.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Final, Literal

from ..errors import UsageError
from ..log import Message
from ._change import Change, json_value

TOPIC_PREFIX: Final = "outbox.event."
_TOPIC_SAFE = re.compile(r"[A-Za-z0-9._-]{1,200}")
_TABLE = re.compile(r"[^.\s]+(\.[^.\s]+)?")

#: A change the router turns into no record.
DROP: Final = "drop"
#: A change written as an ordinary change event of its table.
AS_CHANGE: Final = "change"


class Outbox:
    """Which tables are outboxes, and the record each of their changes becomes."""

    def __init__(self, tables: Sequence[str]) -> None:
        self._tables: set[tuple[str | None, str]] = set()
        for name in tables:
            if not isinstance(name, str) or not _TABLE.fullmatch(name):
                raise UsageError(f"outbox table {name!r} must be TABLE or SCHEMA.TABLE")
            schema, _, table = name.rpartition(".")
            self._tables.add((schema or None, table))

    def __bool__(self) -> bool:
        return bool(self._tables)

    def holds(self, change: Change) -> bool:
        """Whether ``change`` is a change of an outbox table."""
        return self.holds_table(change.schema, change.table)

    def holds_table(self, schema: str, table: str) -> bool:
        """Whether ``schema.table`` is an outbox table."""
        return (schema, table) in self._tables or (None, table) in self._tables

    def route(self, change: Change) -> tuple[str, Message] | Literal["drop", "change"]:
        """The topic and record an outbox row's insert becomes; DROP for its updates and
        deletes; AS_CHANGE for a row that cannot be routed (and for other tables)."""
        if not self.holds(change):
            return AS_CHANGE
        if change.op not in ("c", "r"):
            return DROP
        row = change.after or {}
        kind = row.get("aggregatetype")
        if not isinstance(kind, str) or not _TOPIC_SAFE.fullmatch(kind):
            return AS_CHANGE
        headers = [("cdc.position", str(change.position).encode())]
        for name in ("id", "type"):
            if row.get(name) is not None:
                headers.append((name, _text(row[name]).encode()))
        key = row.get("aggregateid")
        return TOPIC_PREFIX + kind, Message(
            _payload(row.get("payload")),
            key=None if key is None else _text(key).encode(),
            headers=tuple(headers),
            timestamp=change.ts_ms,
        )


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(json_value(value), separators=(",", ":"))


def _payload(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return json.dumps(json_value(value), separators=(",", ":")).encode()
