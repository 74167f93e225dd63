"""The event store's hot paths after their speed-ups: generated ids are
UUIDv7 (time-ordered, for index locality); the checksum still has its
documented value (files written before read the same) and still catches a
changed column; decoding in bulk gives what decoding one by one gave."""

from __future__ import annotations

import gc
import sqlite3
import struct
import time
import uuid
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unbundled import CorruptionError, Event, EventStore, Metadata
from unbundled.backends.sqlite._events import event_crc
from unbundled.eventstore import NewEvent
from unbundled.eventstore._core import check_event_id
from unbundled.eventstore.api import new_event_id


class Noted(Event, frozen=True):
    pass


def test_generated_ids_are_uuid7_in_time_order(tmp_path: Path) -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(2_000)]
    after_ms = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
        assert str(parsed) == event_id == check_event_id(event_id)  # canonical form
        assert before_ms <= parsed.int >> 80 <= after_ms  # the timestamp prefix
    with EventStore.open(tmp_path / "ids.db", sync="off") as store:
        store.append("s-1", [Noted()])  # no ids given: the store makes them
        (event,) = store.read("s-1")
        assert uuid.UUID(event.id).version == 7


def chained_crc(
    position: int,
    version: int,
    event_id: str,
    stream: str,
    kind: str,
    data: bytes,
    meta: bytes,
    schema_version: int,
    recorded_ms: int,
) -> int:
    """The definition: CRC-32 chained over (schema_version, recorded_ms) as two
    little-endian int64, then id, stream, type, metadata, data, seeded with the
    low 32 bits of ``position XOR version``."""
    crc = zlib.crc32(
        struct.pack("<qq", schema_version, recorded_ms), (position ^ version) & 0xFFFFFFFF
    )
    for part in (event_id.encode(), stream.encode(), kind.encode(), meta, data):
        crc = zlib.crc32(part, crc)
    return crc


@given(
    st.integers(1, 2**62),
    st.integers(0, 2**40),
    st.text(max_size=40),
    st.text(min_size=1, max_size=40),
    st.text(min_size=1, max_size=20),
    st.binary(max_size=200),
    st.binary(max_size=50),
    st.integers(1, 1000),
    st.integers(0, 2**50),
)
def test_checksum_is_the_documented_chain(
    position: int,
    version: int,
    event_id: str,
    stream: str,
    kind: str,
    data: bytes,
    meta: bytes,
    schema_version: int,
    recorded_ms: int,
) -> None:
    got = event_crc(
        position, version, event_id, stream, kind, data, meta, schema_version, recorded_ms
    )
    assert got == chained_crc(
        position, version, event_id, stream, kind, data, meta, schema_version, recorded_ms
    )


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("data", b'{"n":2}'),
        ("metadata", b'{"correlation_id":"x"}'),
        ("type", "Other"),
        ("id", "00000000-0000-0000-0000-000000000000"),
        ("version", 7),
        ("schema_version", 2),
        ("recorded_ms", 12345),
    ],
)
def test_a_changed_event_column_fails_the_checksum(
    tmp_path: Path, column: str, value: object
) -> None:
    path = tmp_path / "e.db"
    with EventStore.open(path, sync="off") as store:
        store.append("s-1", [NewEvent(str(uuid.uuid4()), "T", b'{"n":1}')])
        store.append("s-1", [NewEvent(str(uuid.uuid4()), "T", b'{"n":1}')])
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(f"UPDATE events SET {column} = ? WHERE position = 2", (value,))
    conn.close()
    with EventStore.open(path, sync="off") as store:
        assert [e.position for e in store.read_all_raw(0, limit=1)] == [1]
        with pytest.raises(CorruptionError):
            store.read_all()
        with pytest.raises(CorruptionError):
            store.read("s-1")


def test_bulk_decoding_matches_one_by_one(tmp_path: Path) -> None:
    with EventStore.open(tmp_path / "d.db", sync="off") as store:
        store.append("s-1", [NewEvent(str(uuid.uuid4()), "T", b'{"n":1}')])
        store.append(
            "s-1",
            [NewEvent(str(uuid.uuid4()), "T", b'{"n":2}', b'{"user":{"k":1}}')],
            metadata=None,
        )
        store.append("s-2", [NewEvent(str(uuid.uuid4()), "U", b"{}")], metadata=Metadata())
        raw = store.read_all_raw()
        bulk = store.read_all()
        assert bulk == [store._decode(r) for r in raw]
        assert [e.metadata for e in bulk] == [Metadata(), Metadata(user={"k": 1}), Metadata()]
        # Not tracked by the cyclic GC (reading many events triggered passes)...
        assert not any(gc.is_tracked(e.metadata) for e in bulk)
        # ...and each event has its own metadata object: changing one changes no other.
        bulk[0].metadata.user["mine"] = True
        assert bulk[2].metadata.user == {}
