"""The event store's integrity on SQLite (a damaged event row raises
CorruptionError naming its position, never comes back as data), the file
format's migration from version 1, and schema evolution of stored events
(upcaster chains, missing upcasters, unknown types)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest

from tests._formats import downgrade
from unbundled import CorruptionError, EventSchemaMismatch, Log, NotSupported, UsageError
from unbundled.backends.sqlite import _schema
from unbundled.eventstore import NO_STREAM, Event, EventStore, NewEvent, Serializer

EVENT_TABLES = [
    "events",
    "streams",
    "snapshots",
    "projection_checkpoints",
    "documents",
    "subject_keys",
]


def _open(path: Path, **kwargs: Any) -> EventStore:
    return EventStore.open(path, sync="off", maintenance_interval_s=None, **kwargs)


def _fill(path: Path) -> list[str]:
    """Ten events in two streams; returns their ids in position order."""
    ids = [str(uuid.uuid4()) for _ in range(10)]
    with _open(path) as store:
        for i, event_id in enumerate(ids):
            data = b'{"marker":"MARK-%05d-payload"}' % i
            store.append(f"acct-{i % 2}", [NewEvent(event_id, "Noted", data, b'{"user":{}}')])
    return ids


# --- damaged rows ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "new"),
    [
        ("data", "CAST(upper(data) AS BLOB)"),
        ("metadata", 'CAST(\'{"user":{"x":1}}\' AS BLOB)'),
        ("type", "'Other'"),
        ("id", "'" + str(uuid.UUID(int=7)) + "'"),
        ("version", "version + 100"),
        ("stream", "'acct-9'"),
    ],
)
def test_a_changed_event_column_fails_the_checksum(tmp_path: Path, column: str, new: str) -> None:
    path = tmp_path / "events.db"
    ids = _fill(path)
    with sqlite3.connect(path) as raw:
        raw.execute(f"UPDATE events SET {column} = {new} WHERE position = 5")
    raw.close()
    with _open(path) as store:
        assert len(store.read_all(limit=4)) == 4, "the rows before the damage read fine"
        with pytest.raises(CorruptionError) as caught:
            store.read_all(limit=100)
        assert caught.value.details["position"] == 5
        assert "position 5" in str(caught.value)
        if column not in ("stream", "version"):  # still found by its stream and version
            with pytest.raises(CorruptionError):
                store.read("acct-0")
        if column != "id":  # a retry of the damaged event's append reads it: refused
            with pytest.raises(CorruptionError):
                store.append("acct-0", [NewEvent(ids[4], "Noted", b"{}")])
        assert [e.position for e in store.read("acct-1")] == [2, 4, 6, 8, 10]


def test_bit_rot_in_an_event_is_detected(tmp_path: Path) -> None:
    """Flip one byte of an event's data in the file itself (SQLite keeps no
    page checksums, so only the event's CRC can notice)."""
    path = tmp_path / "events.db"
    _fill(path)
    data = bytearray(path.read_bytes())
    at = data.find(b"MARK-00006-payload")
    assert at > 0, "the event must be in the main file after close (checkpointed)"
    data[at + 12] ^= 0x01
    path.write_bytes(bytes(data))
    with _open(path) as store, pytest.raises(CorruptionError) as caught:
        store.read_all(limit=100)
    assert caught.value.details["position"] == 7


@pytest.mark.parametrize("position", [5, 10])
def test_a_missing_event_is_never_skipped(tmp_path: Path, position: int) -> None:
    """Events are never removed: a gap in positions, or the last events gone
    (the head recorded with every commit says where $all ends), is damage."""
    path = tmp_path / "events.db"
    _fill(path)
    with sqlite3.connect(path) as raw:
        raw.execute("DELETE FROM events WHERE position = ?", (position,))
    raw.close()
    with _open(path) as store:
        with pytest.raises(CorruptionError, match=r"missing|where") as caught:
            store.read_all(limit=100)
        assert caught.value.details["position"] == position
        if position == 5:  # a gap in acct-0's versions
            with pytest.raises(CorruptionError):
                store.read("acct-0")
        else:  # the last event: only $all has a head to compare with
            with pytest.raises(CorruptionError, match="not 10 as committed"):
                store.safe_position()
            with pytest.raises(CorruptionError, match="not 10 as committed"):
                # appending would give the lost event's position to another
                store.append("acct-9", [NewEvent(str(uuid.uuid4()), "Noted", b"{}")])


def test_a_damaged_stream_row_is_corruption_not_a_deleted_stream(tmp_path: Path) -> None:
    """A stream row's flags decide whether it can be read: a changed flag
    used to make a live stream look deleted (StreamNotFound)."""
    path = tmp_path / "events.db"
    _fill(path)
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE streams SET deleted = 1 WHERE stream = 'acct-1'")
    raw.close()
    with _open(path) as store:
        with pytest.raises(CorruptionError, match="acct-1"):
            store.read("acct-1")
        with pytest.raises(CorruptionError, match="acct-1"):
            store.streams()
        assert len(store.read("acct-0")) == 5


def test_big_appends_fit_old_sqlite_variable_limits(tmp_path: Path) -> None:
    """SQLite before 3.32 (Ubuntu 20.04 ships 3.31) allows 999 variables per
    statement: multi-row INSERTs must be cut to fit the connection's limit."""
    with _open(tmp_path / "events.db") as store:
        store.backend._writer._conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # type: ignore[attr-defined]
        events = [NewEvent(str(uuid.uuid4()), "A", b"{}") for _ in range(1000)]
        assert store.append("acct-1", events).last_version == 999
        writes = [
            (f"acct-{i + 2}", [NewEvent(str(uuid.uuid4()), "A", b"{}")], NO_STREAM)
            for i in range(400)
        ]
        assert len(store.append_many(writes)) == 400
        assert store.safe_position() == 1400 and len(store.streams()) == 401


# --- the file format ------------------------------------------------------------


def _format(path: Path) -> tuple[int, set[str]]:
    with sqlite3.connect(path) as raw:
        version = raw.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    raw.close()
    return version, tables


def test_a_new_file_has_the_current_format(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    _open(path).close()
    version, tables = _format(path)
    assert version == _schema.FORMAT_VERSION >= 2
    assert tables >= _schema.EXPECTED_TABLES | set(EVENT_TABLES)


def test_a_format_1_file_is_migrated_on_open(tmp_path: Path) -> None:
    """A file as version 1 wrote it (the log's tables only) gains the event
    store's tables when opened, and works."""
    path = tmp_path / "v1.db"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA journal_mode = WAL")
    raw.execute("BEGIN")
    for statement in _schema.SCHEMA.split(";"):  # the log's DDL is version 1's
        if statement.strip():
            raw.execute(statement)
    raw.execute("INSERT INTO meta VALUES ('format', 'unbundled'), ('created_ms', '0')")
    raw.execute(f"PRAGMA application_id = {_schema.APPLICATION_ID}")
    raw.execute("PRAGMA user_version = 1")
    raw.execute("COMMIT")
    raw.close()
    version, tables = _format(path)
    assert (version, tables & set(EVENT_TABLES)) == (1, set())
    with _open(path) as store:
        assert store.append("acct-1", [NewEvent(str(uuid.uuid4()), "A", b"{}")], NO_STREAM)
        assert [e.type for e in store.read("acct-1")] == ["A"]
    version, tables = _format(path)
    assert version == _schema.FORMAT_VERSION and tables >= set(EVENT_TABLES)


def test_a_downgraded_file_keeps_its_log_through_the_migration(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with Log.open(path, sync="off") as log:
        log.create_topic("t")
        log.append("t", b"kept")
    assert _format(path)[0] == _schema.FORMAT_VERSION
    downgrade(path, 1)
    version, tables = _format(path)
    assert (version, tables & set(EVENT_TABLES)) == (1, set())
    with _open(path) as store:
        assert store.append("acct-1", [NewEvent(str(uuid.uuid4()), "A", b"{}")]).positions == (1,)
    assert _format(path)[0] == _schema.FORMAT_VERSION
    with Log.open(path) as log:
        assert [r.value for r in log.read("t")] == [b"kept"]


def test_a_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    _open(path).close()
    newer = _schema.FORMAT_VERSION + 1
    with sqlite3.connect(path) as raw:  # as a newer unbundled writes it
        raw.execute(f"PRAGMA user_version = {newer}")
        raw.execute(f"UPDATE meta SET value = '{newer}' WHERE key = 'format_version'")
    raw.close()
    with pytest.raises(NotSupported, match=f"format version {newer}"):
        _open(path)


# --- schema evolution of stored events ------------------------------------------


class AccountOpened(Event, frozen=True):
    """Version 3. v1 stored {"name"}; v2 split it into {"first", "last"};
    v3 added "currency"."""

    event_type: ClassVar[str] = "AccountOpened"
    schema_version: ClassVar[int] = 3
    first: str
    last: str
    currency: str


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    first, _, last = data.pop("name").partition(" ")
    return {**data, "first": first, "last": last}


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "currency": "EUR"}


def _store_old_events(path: Path) -> None:
    """What older code wrote: v1, v2 and v3 events, raw."""
    events = [
        NewEvent(str(uuid.uuid4()), "AccountOpened", b'{"name":"Ada Lovelace"}', schema_version=1),
        NewEvent(
            str(uuid.uuid4()),
            "AccountOpened",
            b'{"first":"Alan","last":"Turing"}',
            schema_version=2,
        ),
        NewEvent(
            str(uuid.uuid4()),
            "AccountOpened",
            b'{"first":"Grace","last":"Hopper","currency":"USD"}',
            schema_version=3,
        ),
        NewEvent(str(uuid.uuid4()), "Legacy", b'{"anything":[1,2]}', schema_version=7),
    ]
    with _open(path) as store:
        store.append("acct-1", events, NO_STREAM)


def test_upcasters_chain_on_stored_old_events(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    _store_old_events(path)
    serializer = Serializer([AccountOpened])
    serializer.upcaster("AccountOpened", 1)(_v1_to_v2)
    serializer.upcaster("AccountOpened", 2)(_v2_to_v3)
    with _open(path, serializer=serializer) as store:
        stored = store.read("acct-1")
        assert [e.event for e in stored[:3]] == [
            AccountOpened(first="Ada", last="Lovelace", currency="EUR"),
            AccountOpened(first="Alan", last="Turing", currency="EUR"),
            AccountOpened(first="Grace", last="Hopper", currency="USD"),
        ]
        assert [e.schema_version for e in stored] == [1, 2, 3, 7], "the stored version is kept"
        assert stored[3].event == {"anything": [1, 2]}, "an unknown type decodes to a dict"
        assert [e.event for e in store.read_all(types=[AccountOpened])] == [
            e.event for e in stored[:3]
        ]
        raw = store.backend.read_stream("acct-1", 0, 1)[0]
        assert raw.data == b'{"name":"Ada Lovelace"}', "upcasting never rewrites the store"


def test_a_missing_upcaster_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    _store_old_events(path)
    serializer = Serializer([AccountOpened])
    serializer.upcaster("AccountOpened", 1)(_v1_to_v2)  # no v2 -> v3
    with _open(path, serializer=serializer) as store:
        with pytest.raises(EventSchemaMismatch) as caught:
            store.read("acct-1")
        details = caught.value.details
        assert (details["event_type"], details["schema_version"]) == ("AccountOpened", 1)
        assert (details["missing_from"], details["stream"], details["version"]) == (2, "acct-1", 0)
        assert "none is registered for AccountOpened v2 -> v3" in str(caught.value)
        assert isinstance(caught.value, UsageError), "the code is out of date: the caller's fault"
        assert store.read("acct-1", 2, limit=1)[0].event.first == "Grace", "v3 needs none"


def test_events_newer_than_the_code_or_not_matching_it_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with _open(path) as store:
        newer = b'{"first":"A","last":"B","currency":"X","extra":1}'
        bad = b'{"first":1,"last":"B","currency":"X"}'
        store.append(
            "acct-1",
            [
                NewEvent(str(uuid.uuid4()), "AccountOpened", newer, schema_version=4),
                NewEvent(str(uuid.uuid4()), "AccountOpened", bad, schema_version=3),
            ],
        )
    with _open(path, events=[AccountOpened]) as store:
        with pytest.raises(EventSchemaMismatch, match="newer than the code"):
            store.read("acct-1", limit=1)
        with pytest.raises(EventSchemaMismatch) as caught:
            store.read("acct-1", 1)
        details = caught.value.details
        assert (details["event_type"], details["field"], details["position"]) == (
            "AccountOpened",
            "first",
            2,
        )


def test_typed_events_round_trip_as_json() -> None:
    serializer = Serializer([AccountOpened])
    event = AccountOpened(first="Ada", last="L", currency="GBP")
    kind, version, data = serializer.encode(event)
    assert (kind, version) == ("AccountOpened", 3)
    assert msgspec.json.decode(data) == {"first": "Ada", "last": "L", "currency": "GBP"}
    assert serializer.decode(kind, version, data) == event
