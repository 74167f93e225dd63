"""How ``unbundled events`` prints events: one line each, as text or JSON.

The ``--json`` shape is the same for a stored event read as it is
(:func:`event_json`, used by ``read``) and for one decoded by a subscription
(:func:`stored_json`, used by ``subscribe``): the event's data and metadata
as JSON values.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Sequence
from typing import Any

import msgspec

from ..eventstore import RecordedEvent, StoredEvent
from ._common import stdout_bytes

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


def _json_or_text(out: dict[str, Any], name: str, raw: bytes) -> None:
    """Stored JSON as a JSON value; other bytes as base64 flagged by ``<name>_encoding``."""
    try:
        out[name] = _decode(raw)
    except msgspec.DecodeError:
        out[name] = base64.b64encode(raw).decode("ascii")
        out[f"{name}_encoding"] = "base64"


def event_json(event: RecordedEvent) -> dict[str, Any]:
    """The ``--json`` form of a stored event."""
    out: dict[str, Any] = {
        "position": event.position,
        "stream": event.stream,
        "version": event.version,
        "type": event.type,
        "schema_version": event.schema_version,
        "id": event.id,
    }
    _json_or_text(out, "data", event.data)
    _json_or_text(out, "metadata", event.metadata)
    out["recorded_ms"] = event.recorded_ms
    return out


def stored_json(event: StoredEvent) -> dict[str, Any]:
    """The ``--json`` form of a decoded event: the same shape as :func:`event_json`."""
    return {
        "position": event.position,
        "stream": event.stream,
        "version": event.version,
        "type": event.type,
        "schema_version": event.schema_version,
        "id": event.id,
        "data": msgspec.to_builtins(event.event),
        "metadata": msgspec.to_builtins(event.metadata),
        "recorded_ms": event.recorded_ms,
    }


def stored_line(event: StoredEvent, as_json: bool) -> bytes:
    if as_json:
        return _encode(stored_json(event)) + b"\n"
    data = _encode(event.event).decode()
    return f"{event.position:>6}  {event.stream}@{event.version}  {event.type}  {data}\n".encode()


def event_line(event: RecordedEvent, as_json: bool) -> bytes:
    """One output line: the JSON object, or ``position stream@version type data``."""
    if as_json:
        return _encode(event_json(event)) + b"\n"
    data = event.data.decode("utf-8", "replace").replace("\n", " ")
    return f"{event.position:>6}  {event.stream}@{event.version}  {event.type}  {data}\n".encode()


class Output:
    """Event lines to stdout, flushed per page; remembers how far it got."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out: Any = stdout_bytes()
        self.count = 0

    def emit(self, events: Sequence[RecordedEvent]) -> None:
        if not events:
            return
        self.out.write(b"".join(event_line(e, self.as_json) for e in events))
        self.out.flush()
        self.count += len(events)

    def emit_stored(self, events: Sequence[StoredEvent]) -> None:
        self.out.write(b"".join(stored_line(e, self.as_json) for e in events))
        self.out.flush()
        self.count += len(events)

    def silence(self) -> None:
        """The reader went away (``| head``): keep Python from failing again
        when it flushes stdout at exit."""
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.out.fileno())


__all__ = ["Output", "event_json", "event_line", "stored_json", "stored_line"]
