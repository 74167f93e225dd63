"""The log's read path on SQLite: every row is checked before it is believed.

A topic row and a partition row are verified by their checks
(``_integrity``); a record by its CRC, after its columns proved to have the
types the CRC covers. Offsets must come back in order and without gaps,
except where ``removed_ranges`` says compaction removed records; and a read
that reaches the end of the table must reach the partition's end offset.
So a damaged page can make a read fail, never make it skip a record.
"""

from __future__ import annotations

import bisect
import functools
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgspec

from ..._ground import crc32 as _crc32
from ...errors import CorruptionError, OffsetOutOfRange, TopicNotFound
from ...log import _core
from ...log._protocol import PartitionInfo, Record, TopicConfig
from . import _log_batch
from ._integrity import corrupt, int_check, row_crc
from ._schema import BATCHED_FORMAT, TS_HIGH_SQL, records_table

_decode_headers = msgspec.msgpack.Decoder(list[tuple[str, bytes]]).decode
_decode_config = msgspec.json.Decoder(TopicConfig).decode
_TOPIC_COLUMNS = "id, name, partitions, config, created_ms, records_format, crc"
# A records table of format 5 has `ts_high` (see _schema.TS_HIGH_SQL): a row
# whose timestamp's high half changed is not selected, and becomes a gap. (In
# the WHERE clause this costs about nothing; as an output column, 10%.)
_READ_SQL = {
    4: "SELECT offset, key, value, headers, ts, crc FROM {} "
    "WHERE offset >= ? ORDER BY offset LIMIT ?",
    5: "SELECT offset, key, value, headers, ts, crc FROM {} "
    f"WHERE offset >= ? AND ts_high = {TS_HIGH_SQL} ORDER BY offset LIMIT ?",
}


_FORMATS = {*_READ_SQL, BATCHED_FORMAT}


class Topic(NamedTuple):
    """A verified row of ``topics``."""

    id: int
    name: str
    config: TopicConfig
    records_format: int


@functools.lru_cache(maxsize=4096)
def _read_sql(records_format: int, topic_id: int, partition: int) -> str:
    return _READ_SQL[records_format].format(records_table(topic_id, partition))


def read_rows(
    conn: sqlite3.Connection, topic: Topic, partition: int, offset: int, records_max: int
) -> list[tuple[Any, ...]]:
    """The stored rows of a partition from ``offset``, for :func:`decode`."""
    sql = _read_sql(topic.records_format, topic.id, partition)
    return conn.execute(sql, (offset, records_max)).fetchall()


# Rows already verified, by their exact values: a read of the same row again
# (every read fetches its topic's row) skips the CRC and the JSON decoding.
_VERIFIED: dict[tuple[Any, ...], Topic] = {}
_VERIFIED_MAX = 4096


def _verify_topic(path: str, row: tuple[Any, ...]) -> Topic:
    found = _VERIFIED.get(row)
    if found is not None:
        return found
    topic = _check_topic(path, row)
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED[row] = topic
    return topic


def _check_topic(path: str, row: Sequence[Any]) -> Topic:
    tid, name, partitions, raw, created_ms, records_format, crc = row
    if crc != row_crc("topics", tid, name, partitions, raw, created_ms, records_format) or (
        records_format not in _FORMATS
    ):
        raise corrupt(path, f"the row of topic {name!r} failed its checksum", topic=name)
    try:
        config = _decode_config(raw)
    except msgspec.DecodeError as exc:  # a checksum collision, or a bug: never trust it
        raise corrupt(path, f"the config of topic {name!r} is unreadable", topic=name) from exc
    if config.partitions != partitions:
        raise corrupt(path, f"topic {name!r} disagrees about its partition count", topic=name)
    return Topic(tid, name, config, records_format)


def topic_row(conn: sqlite3.Connection, path: str, name: str) -> Topic:
    """The id and config of topic ``name``, verified; ``TopicNotFound`` only
    when no row of the table has that name (a damaged index cannot hide one)."""
    row = conn.execute(f"SELECT {_TOPIC_COLUMNS} FROM topics WHERE name = ?", (name,)).fetchone()
    return _found_topic(conn, path, name, row)


def _found_topic(
    conn: sqlite3.Connection, path: str, name: str, row: tuple[Any, ...] | None
) -> Topic:
    if row is not None:
        found = _verify_topic(path, row)
        if row[1] == name:
            return found
    # Rare, and the table is small (limits.topics_max rows): look at every
    # row without the name index before saying the topic is not there.
    for other in all_topics(conn, path):
        if other.name == name:
            raise corrupt(path, f"the index of topic names lost {name!r}", topic=name)
    raise TopicNotFound(f"topic {name!r} does not exist", topic=name)


# One statement for a read's topic and partition rows (a statement costs more
# than the checks): the partition's columns are NULL if its row is missing.
_TOPIC_AND_PARTITION_SQL = (
    "SELECT "
    + ", ".join(f"t.{c}" for c in _TOPIC_COLUMNS.split(", "))
    + ", p.start_offset, p.end_offset, p.records, p.bytes, p.checksum FROM topics AS t "
    "LEFT JOIN partitions AS p ON p.topic_id = t.id AND p.partition = ? WHERE t.name = ?"
)
_TOPIC_WIDTH = len(_TOPIC_COLUMNS.split(", "))


def topic_and_partition(
    conn: sqlite3.Connection, path: str, name: str, partition: int
) -> tuple[Topic, tuple[int, int, int, int]]:
    """:func:`topic_row` and :func:`partition_row` in one statement."""
    row = conn.execute(_TOPIC_AND_PARTITION_SQL, (partition, name)).fetchone()
    topic = _found_topic(conn, path, name, None if row is None else row[:_TOPIC_WIDTH])
    _core.check_partition(name, partition, topic.config.partitions)
    assert row is not None  # _found_topic raised otherwise
    rest = row[_TOPIC_WIDTH:]
    return topic, _verify_partition(
        path, name, topic.id, partition, None if rest[-1] is None else rest
    )


def all_topics(conn: sqlite3.Connection, path: str) -> list[Topic]:
    """Every topic row, verified, in name order.

    Read twice, from the table and from its index of names, which must
    agree: a page of either that lost a topic would hide it from the other's
    reader without a trace (the table has at most ``limits.topics_max`` rows)."""
    rows = conn.execute(f"SELECT {_TOPIC_COLUMNS} FROM topics NOT INDEXED").fetchall()
    topics = sorted((_verify_topic(path, row) for row in rows), key=lambda t: t.name)
    indexed = conn.execute(
        "SELECT name FROM topics INDEXED BY sqlite_autoindex_topics_1 ORDER BY name"
    ).fetchall()
    if [name for (name,) in indexed] != [t.name for t in topics]:
        raise corrupt(path, "the topics table and its index of names disagree")
    return topics


def _verify_partition(
    path: str, topic: str, tid: int, partition: int, row: Sequence[Any] | None
) -> tuple[int, int, int, int]:
    if row is None:
        raise corrupt(path, f"the row of {topic}[{partition}] is missing", topic=topic)
    start, end, records, size, checksum = row
    if int_check("partitions", (tid, partition, start, end, records, size)) != checksum or not (
        0 <= start <= end
    ):
        raise corrupt(path, f"the row of {topic}[{partition}] failed its checksum", topic=topic)
    return start, end, records, size


def partition_row(
    conn: sqlite3.Connection, path: str, tid: int, topic: str, partition: int
) -> tuple[int, int, int, int]:
    """``(start_offset, end_offset, records, bytes)`` of one partition, verified."""
    row = conn.execute(
        "SELECT start_offset, end_offset, records, bytes, checksum FROM partitions "
        "WHERE topic_id = ? AND partition = ?",
        (tid, partition),
    ).fetchone()
    return _verify_partition(path, topic, tid, partition, row)


def partition_infos(
    conn: sqlite3.Connection, path: str, tid: int, topic: str, partitions: int
) -> tuple[PartitionInfo, ...]:
    """Every partition of a topic, verified: exactly ``0 .. partitions-1``."""
    rows = {
        row[0]: row[1:]
        for row in conn.execute(
            "SELECT partition, start_offset, end_offset, records, bytes, checksum "
            "FROM partitions WHERE topic_id = ?",
            (tid,),
        )
    }
    if set(rows) != set(range(partitions)):
        raise corrupt(path, f"the partition rows of topic {topic!r} are damaged", topic=topic)
    return tuple(
        PartitionInfo(p, *_verify_partition(path, topic, tid, p, rows[p]))
        for p in range(partitions)
    )


def check_out_of_range(
    conn: sqlite3.Connection, path: str, found: Topic, topic: str, partition: int, bounds: range
) -> None:
    """Before answering ``OffsetOutOfRange``: the table must agree with the
    partition row's range (a damaged start offset would hide every record)."""
    table = records_table(found.id, partition)
    if found.records_format == BATCHED_FORMAT:
        low, high = conn.execute(f"SELECT min(base), max(last) FROM {table}").fetchone()
        if low is not None and low < bounds.start:
            # Retention keeps the batch its cut fell in, records before the start too.
            low = min(bounds.start, high)
    else:
        low, high = conn.execute(f"SELECT min(offset), max(offset) FROM {table}").fetchone()
    if low is not None and (low not in bounds or high not in bounds):
        raise corrupt(
            path,
            f"{topic}[{partition}] stores offsets {low}..{high} outside its range "
            f"{bounds.start}..{bounds.stop}",
            topic=topic,
            partition=partition,
        )


def gap_explainer(
    conn: sqlite3.Connection, path: str, tid: int, topic: str, partition: int
) -> Callable[[int, int], None]:
    """``explain(expected, found)`` returns if offsets ``expected .. found-1``
    were removed by compaction (the ``removed_ranges`` ledger), else raises."""

    def explain(expected: int, found: int) -> None:
        if found <= expected:
            raise CorruptionError(
                f"{path}: record {topic}[{partition}]@{found} is out of order "
                f"(expected offset {expected} or later): the file is damaged",
                path=path,
                topic=topic,
                partition=partition,
                offset=found,
            )
        row = conn.execute(
            "SELECT start_offset, end_offset, checksum FROM removed_ranges "
            "WHERE topic_id = ? AND partition = ? AND start_offset <= ? "
            "ORDER BY start_offset DESC LIMIT 1",
            (tid, partition, expected),
        ).fetchone()
        if row is not None:
            first, stop, checksum = row
            if int_check("removed_ranges", (tid, partition, first, stop)) != checksum:
                raise corrupt(path, f"a removed range of {topic}[{partition}] is damaged")
            if stop >= found:
                return
        raise CorruptionError(
            f"{path}: records {topic}[{partition}]@{expected}..{found - 1} are missing, and "
            "neither retention nor compaction removed them: the file is damaged",
            path=path,
            topic=topic,
            partition=partition,
            offset=expected,
        )

    return explain


def _bad_record(path: str, topic: str, partition: int, offset: int, what: str) -> CorruptionError:
    where = {"topic": topic, "partition": partition, "offset": offset}
    return corrupt(path, f"record {topic}[{partition}]@{offset} {what}", **where)


def decode(
    path: str,
    topic: str,
    partition: int,
    rows: list[tuple[Any, ...]],
    offset: int,
    bytes_max: int,
    compact: bool,
    explain: Callable[[int, int], None],
) -> list[Record]:
    """Verify each row and build records (the hot loop of reads).

    Each check costs nothing when it passes: the offset comparison, the
    NULL tests the CRC needs anyway, and the CRC itself, which raises
    ``TypeError`` for a column whose type a damaged page changed.

    Damage after the first record ends the read there, as Kafka's consumer
    does: the records before it are returned, and the next read, which
    starts at the damage, raises ``CorruptionError``."""
    out: list[Record] = []
    append = out.append
    crc32 = _crc32
    size = 0
    expected = offset
    off = offset
    try:
        for off, key, value, hblob, ts, crc in rows:
            if off != expected:
                explain(expected, off)
            check = (off ^ ts) & 0xFFFFFFFF
            if hblob is not None:
                check = crc32(hblob, check)
            if key is not None:
                check = crc32(key, check)
                size += len(key)
            elif compact:
                raise _bad_record(path, topic, partition, off, "has no key in a compacted topic")
            if value is not None:
                check = crc32(value, check)
                size += len(value)
            elif not compact:
                raise _bad_record(path, topic, partition, off, "is a tombstone outside compaction")
            if check != crc:
                stored = f"{crc:#010x}" if type(crc) is int else repr(crc)
                raise CorruptionError(
                    f"{path}: record {topic}[{partition}]@{off} failed its checksum "
                    f"(stored {stored}, computed {check:#010x})",
                    path=path,
                    topic=topic,
                    partition=partition,
                    offset=off,
                )
            if size > bytes_max and out:
                break
            headers = () if hblob is None else tuple(_decode_headers(hblob))
            append(Record(topic, partition, off, key, value, headers, ts))
            expected = off + 1
    except (TypeError, msgspec.DecodeError) as exc:
        error = _bad_record(path, topic, partition, off, "has columns of the wrong type")
        error.__cause__ = exc
    except CorruptionError as exc:
        error = exc
    else:
        return out
    if out:
        return out
    raise error


def check_tail(
    path: str,
    topic: str,
    partition: int,
    records: list[Record],
    offset: int,
    end: int,
    at_table_end: bool,
    explain: Callable[[int, int], None],
) -> list[Record]:
    """After a read whose rows were all decoded: the records before the end
    offset (a record at or past it is damage: the next read raises there),
    and, for an empty read that reached the table's end, nothing missing
    between ``offset`` and the end offset."""
    if records and records[-1].offset >= end:
        keep = bisect.bisect_left(records, end, key=lambda r: r.offset)
        if keep:
            return records[:keep]
        raise _bad_record(path, topic, partition, records[0].offset, f"lies past the end {end}")
    if at_table_end and not records and offset < end:
        explain(offset, end)
    return records


def read_partition(
    conn: sqlite3.Connection,
    path: str,
    topic: str,
    partition: int,
    offset: int,
    records_max: int,
    bytes_max: int,
) -> list[Record]:
    """``SqliteLog.read`` inside its read transaction: the rows, decoded and
    checked against the partition row and the removed ranges of the same
    snapshot."""
    found, (start, end, _, _) = topic_and_partition(conn, path, topic, partition)
    if offset < start or offset > end:
        check_out_of_range(conn, path, found, topic, partition, range(start, end))
        raise OffsetOutOfRange(
            f"offset {offset} is outside {topic}[{partition}]'s range {start}..{end}",
            topic=topic,
            partition=partition,
            offset=offset,
            start_offset=start,
            end_offset=end,
        )
    if found.records_format == BATCHED_FORMAT:
        return _log_batch.read(
            conn, path, found.id, topic, partition, offset, end, records_max, bytes_max
        )
    rows = read_rows(conn, found, partition, offset, records_max)
    explain = gap_explainer(conn, path, found.id, topic, partition)
    compact = found.config.cleanup_policy == "compact"
    records = decode(path, topic, partition, rows, offset, bytes_max, compact, explain)
    if len(records) < len(rows):  # cut by bytes_max, or stopped before damage
        return records
    at_table_end = len(rows) < records_max
    return check_tail(path, topic, partition, records, offset, end, at_table_end, explain)
