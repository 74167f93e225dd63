"""Pure decisions of the event store: validation, expected versions and
idempotent appends. Every backend calls :func:`plan_append` with the state it
read, so they all decide alike and the memory backend stays the specification.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from .. import limits
from ..errors import (
    DuplicateEventId,
    LimitExceeded,
    StreamDeleted,
    StreamNotFound,
    UsageError,
    WrongExpectedVersion,
)
from ._protocol import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    NewEvent,
    RecordedEvent,
    StreamState,
    StreamWrite,
)

_STREAM_NAME = re.compile(r"[^\s$][^\s]*")
# The canonical form check_event_id produces; backends compare ids as strings.
_EVENT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_EXPECTED_NAMES = {ANY: "ANY", NO_STREAM: "NO_STREAM", STREAM_EXISTS: "STREAM_EXISTS"}


def expected_name(expected: int) -> str:
    return _EXPECTED_NAMES.get(expected, str(expected))


def check_stream_name(stream: object) -> str:
    """Any non-empty name without white space; ``$``-prefixed names are reserved."""
    if (
        not isinstance(stream, str)
        or len(stream.encode()) > limits.stream_name_bytes_max
        or not _STREAM_NAME.fullmatch(stream)
    ):
        raise UsageError(
            f"stream name {stream!r} must be 1 to {limits.stream_name_bytes_max} bytes, "
            "without white space, not starting with '$'",
            stream=stream,
        )
    return stream


def check_expected_version(expected: object) -> int:
    if type(expected) is not int or (
        expected not in _EXPECTED_NAMES and not 0 <= expected <= limits.position_max
    ):
        raise UsageError(
            f"expected_version must be ANY, NO_STREAM, STREAM_EXISTS or a version "
            f"0..{limits.position_max}, got {expected!r}",
            expected_version=expected,
        )
    return expected


def check_event_id(event_id: object) -> str:
    """Event ids are UUIDs, stored in canonical lower-case form."""
    try:
        return str(uuid.UUID(str(event_id)))
    except ValueError:
        raise UsageError(f"event id {event_id!r} is not a UUID", event_id=event_id) from None


def check_write(write: StreamWrite) -> None:
    check_stream_name(write.stream)
    check_expected_version(write.expected_version)
    if not write.events:
        raise UsageError(
            f"an append to {write.stream!r} needs at least one event", stream=write.stream
        )
    if len(write.events) > limits.append_events_max:
        raise LimitExceeded(
            f"{len(write.events)} events in one append exceed {limits.append_events_max}",
            stream=write.stream,
        )
    for event in write.events:
        if type(event.id) is not str or not _EVENT_ID.fullmatch(event.id):
            raise UsageError(
                f"event id {event.id!r} is not a UUID in canonical (lower-case) form",
                stream=write.stream,
                event_id=event.id,
            )
        if not event.type or len(event.type.encode()) > limits.event_type_bytes_max:
            raise UsageError(
                f"event type {event.type!r} must be 1 to {limits.event_type_bytes_max} bytes",
                stream=write.stream,
            )
        size = len(event.data) + len(event.metadata)
        if size > limits.event_bytes_max:
            raise LimitExceeded(
                f"event {event.id} of {size} bytes exceeds {limits.event_bytes_max}",
                stream=write.stream,
                event_id=event.id,
            )


def check_readable(stream: str, state: StreamState | None) -> None:
    if state is not None and state.tombstoned:
        raise StreamDeleted(f"stream {stream!r} was deleted for good", stream=stream)
    if state is None or state.deleted or state.version == NO_STREAM:
        raise StreamNotFound(f"stream {stream!r} does not exist", stream=stream)


def check_expected(stream: str, expected: int, state: StreamState | None) -> int:
    """Raise unless ``expected`` matches; return the current version (``NO_STREAM`` if none).

    A soft-deleted stream counts as not existing for ``NO_STREAM`` and
    ``STREAM_EXISTS``, but keeps its version numbers: appending continues them.
    """
    if state is not None and state.tombstoned:
        raise StreamDeleted(f"stream {stream!r} was deleted for good", stream=stream)
    version = state.version if state is not None else NO_STREAM
    live = state is not None and not state.deleted and version != NO_STREAM
    ok = (
        expected == ANY
        or (expected == NO_STREAM and not live)
        or (expected == STREAM_EXISTS and live)
        or (expected >= 0 and live and expected == version)
    )
    if not ok:
        actual = version if live else NO_STREAM
        raise WrongExpectedVersion(
            f"append to {stream!r} expected version {expected_name(expected)}, "
            f"but the stream is at {expected_name(actual)}",
            stream=stream,
            expected=expected,
            actual=actual,
        )
    return version


class Plan(NamedTuple):
    """What an append does: ``duplicate`` results to return as they are, or
    ``first_versions`` per write (the version of its first new event)."""

    duplicate: list[AppendResult] | None
    first_versions: list[int]


def plan_append(
    writes: Sequence[StreamWrite],
    states: Mapping[str, StreamState],
    existing: Mapping[str, RecordedEvent],
) -> Plan:
    """Decide an atomic multi-stream append.

    ``states`` holds the current state of each written stream (absent: never
    existed); ``existing`` the stored events among the append's event ids.
    If every id exists and matches, the append is a retry and returns the
    original results; if some do, it is a conflict; otherwise check each
    expected version. A stream may appear once per call.
    """
    seen: set[str] = set()
    ids: set[str] = set()
    for write in writes:
        if write.stream in seen:
            raise UsageError(
                f"stream {write.stream!r} appears twice in one append", stream=write.stream
            )
        seen.add(write.stream)
        for event in write.events:
            if event.id in ids:
                raise UsageError(
                    f"event id {event.id} appears twice in one append", event_id=event.id
                )
            ids.add(event.id)
    if existing:
        return Plan(_as_retry(writes, existing), [])
    firsts = []
    for write in writes:
        version = check_expected(write.stream, write.expected_version, states.get(write.stream))
        firsts.append(version + 1)
    return Plan(None, firsts)


def _as_retry(
    writes: Sequence[StreamWrite], existing: Mapping[str, RecordedEvent]
) -> list[AppendResult]:
    results = []
    for write in writes:
        stored = []
        for event in write.events:
            found = existing.get(event.id)
            if found is None or not _same(write.stream, event, found):
                where = f"in stream {found.stream!r}" if found is not None else "elsewhere"
                raise DuplicateEventId(
                    f"event id {event.id} is already stored {where} with other content; "
                    "a retry must repeat the same events",
                    event_id=event.id,
                    stream=write.stream,
                )
            stored.append(found)
        versions = [e.version for e in stored]
        if versions != list(range(versions[0], versions[0] + len(versions))):
            raise DuplicateEventId(
                f"events {[e.id for e in write.events]} were stored, but not as one append",
                stream=write.stream,
            )
        results.append(
            AppendResult(write.stream, versions[0], versions[-1], tuple(e.position for e in stored))
        )
    return results


def _same(stream: str, event: NewEvent, found: RecordedEvent) -> bool:
    return (
        found.stream == stream
        and found.type == event.type
        and found.data == event.data
        and found.metadata == event.metadata
        and found.schema_version == event.schema_version
    )


def check_document(collection: str, key: str, value: object) -> bytes:
    """A projection's document write: strings for names, bytes for the value."""
    if type(value) is not bytes:
        raise UsageError(
            f"document {collection}/{key} must be bytes, got {type(value).__name__}",
            collection=collection,
            key=key,
        )
    return value
