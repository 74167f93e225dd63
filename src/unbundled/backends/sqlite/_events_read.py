"""The event store's read path on SQLite: every row is checked before it is believed.

An event row is verified by its CRC, after its columns proved to have the
types the CRC covers; a stream row by its crc. Events are never removed, so
what a read must return is known in advance: a stream's versions run without
gaps from its first readable version to its last, and global positions run
without gaps from 1 to the head recorded in ``heads`` with every commit. A
read that returns anything else met a damaged page, and raises.
"""

from __future__ import annotations

import operator
import sqlite3
import struct
from collections.abc import Sequence
from typing import Any

from ..._ground import crc32 as _crc32
from ...errors import CorruptionError
from ...eventstore._protocol import NO_STREAM, RecordedEvent, StreamState, category_of
from ._integrity import corrupt, int_check, row_crc

HEADER = struct.Struct("<qq")  # schema_version, recorded_ms: covered by the CRC too


def to_events(path: str, rows: list[tuple[Any, ...]]) -> list[RecordedEvent]:
    """Verify each row's checksum and build events (the hot loop of reads,
    inlined: a function call per event costs a tenth of the read). A column
    of the wrong type fails the CRC's own arithmetic, as ``TypeError``."""
    out: list[RecordedEvent] = []
    append = out.append
    crc32 = _crc32
    pack = HEADER.pack
    join = b"".join
    position: Any = None
    try:
        for (
            position,
            event_id,
            stream,
            version,
            kind,
            schema,
            data,
            metadata,
            recorded,
            crc,
        ) in rows:
            check = crc32(
                join(
                    (
                        pack(schema, recorded),
                        event_id.encode(),
                        stream.encode(),
                        kind.encode(),
                        metadata,
                        data,
                    )
                ),
                (position ^ version) & 0xFFFFFFFF,
            )
            if check != crc:
                raise CorruptionError(
                    f"{path}: event at position {position} ({stream}@{version}) failed its "
                    "checksum",
                    path=path,
                    position=position,
                    stream=stream,
                    version=version,
                )
            append(
                RecordedEvent(
                    event_id, stream, version, position, kind, schema, data, metadata, recorded
                )
            )
    except (TypeError, AttributeError, struct.error) as exc:
        raise corrupt(
            path,
            f"the event at position {position} has columns of the wrong type",
            position=position,
        ) from exc
    return out


def _missing(path: str, what: str, **details: Any) -> CorruptionError:
    return CorruptionError(
        f"{path}: {what}, but events are never removed: the file is damaged",
        path=path,
        **details,
    )


_versions = operator.attrgetter("version")
_positions = operator.attrgetter("position")
_streams = operator.attrgetter("stream")


def check_stream_read(
    path: str,
    stream: str,
    events: list[RecordedEvent],
    versions: range,
) -> None:
    """``events`` must be exactly the stream's ``versions``, in that order
    (a backwards read passes a descending range). Compared as whole lists:
    a loop in Python would cost a tenth of the read."""
    if list(map(_versions, events)) == list(versions) and all(
        name == stream for name in map(_streams, events)
    ):
        return
    got = [e.version for e in events[:5]]
    raise _missing(
        path,
        f"stream {stream!r} returned versions {got}{'...' if len(events) > 5 else ''} "
        f"where {versions.start}.. ({len(versions)} events) were expected",
        stream=stream,
    )


def check_all_read(
    path: str, events: list[RecordedEvent], after: int, limit: int, head: int, dense: bool
) -> None:
    """Positions of a ``$all`` read: increasing, after ``after``, at most
    ``head``; an unfiltered (``dense``) read returns every position in turn,
    up to the head or ``limit``."""
    positions = list(map(_positions, events))
    if dense:
        if positions == list(range(after + 1, min(head, after + limit) + 1)):
            return
        expected = next(
            (p for p, found in enumerate(positions, after + 1) if found != p),
            after + 1 + len(positions),
        )
        raise _missing(
            path,
            f"the read after position {after} did not find position {expected} "
            f"(the last position committed is {head})",
            position=expected,
        )
    if positions != sorted(set(positions)) or (
        positions and (positions[0] <= after or positions[-1] > head)
    ):
        raise corrupt(
            path,
            f"a filtered read after position {after} found positions out of order or past "
            f"the last position committed ({head})",
            position=after,
        )


def events_head(conn: sqlite3.Connection, path: str) -> int:
    """The last event's position, as the last commit recorded it."""
    row = conn.execute("SELECT position, checksum FROM heads WHERE name = 'events'").fetchone()
    if row is None or int_check("heads", (row[0],)) != row[1]:
        raise corrupt(path, "the record of the last event's position is damaged")
    head: int = row[0]
    return head


def last_position(conn: sqlite3.Connection, path: str) -> int:
    """The last event's position, which must be the head the last commit recorded."""
    head = events_head(conn, path)
    last = conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0]
    if last != head:
        raise corrupt(path, f"the last event is at position {last}, not {head} as committed")
    return head


def stream_row_crc(stream: str, start: int, deleted: bool, tombstoned: bool) -> int:
    """The ``crc`` of a ``streams`` row (its category derives from its name)."""
    return row_crc("streams", stream, category_of(stream), start, int(deleted), int(tombstoned))


def stream_state(
    conn: sqlite3.Connection, path: str, stream: str
) -> tuple[StreamState | None, int]:
    """The stream's state and its first readable version (after soft deletes),
    its ``streams`` row verified."""
    version, name, category, start, deleted, tombstoned, crc = conn.execute(
        "SELECT (SELECT max(version) FROM events WHERE stream = :s), stream, category, "
        "start_version, deleted, tombstoned, crc FROM (SELECT 1) LEFT JOIN streams ON stream = :s",
        {"s": stream},
    ).fetchone()
    if name is None:
        if version is not None:
            # Every stream with events has a row, written with its first event.
            raise corrupt(path, f"the row of stream {stream!r} is missing", stream=stream)
        return None, 0
    if crc != row_crc("streams", name, category, start, deleted, tombstoned) or not (
        deleted in (0, 1) and tombstoned in (0, 1)
    ):
        raise corrupt(path, f"the row of stream {stream!r} failed its checksum", stream=stream)
    if version is not None and (type(version) is not int or version < max(0, start - 1)):
        # The version comes from the index's last entry for the stream.
        raise corrupt(
            path, f"the index of stream versions gives {stream!r} version {version}", stream=stream
        )
    state = StreamState(
        stream, NO_STREAM if version is None else version, bool(deleted), bool(tombstoned)
    )
    return state, start


def check_filters(
    path: str,
    events: list[RecordedEvent],
    categories: Sequence[str] | None,
    types: Sequence[str] | None,
) -> None:
    """A filtered read goes through an index: each event it found must match."""
    for event in events:
        if (categories is not None and category_of(event.stream) not in categories) or (
            types is not None and event.type not in types
        ):
            raise corrupt(
                path,
                f"the index of categories or types led to the event at position "
                f"{event.position}, which does not match",
                position=event.position,
            )


def live_stream(path: str, row: tuple[Any, ...], category: str | None) -> bool:
    """Whether a ``streams`` row (as ``list_streams`` selects it) is a live
    stream, after its crc is checked: filtered in SQL, a damaged flag would
    hide a live stream without a trace."""
    stream, found, start, deleted, tombstoned, crc = row
    if crc != row_crc("streams", stream, found, start, deleted, tombstoned) or (
        found != category_of(stream) or category not in (None, found)
    ):
        raise corrupt(path, f"the row of stream {stream!r} failed its checksum", stream=stream)
    return not deleted and not tombstoned
