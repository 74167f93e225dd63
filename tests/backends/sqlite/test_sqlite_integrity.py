"""Guarantee 7 (integrity) on SQLite: damaged records raise CorruptionError,
never come back as data; files that are not ours are refused and untouched.

The records here are stored a row per record (format 5: compacted topics, and
``delete`` topics of files written before format 6), which these tests damage
column by column; ``test_sqlite_batches`` does the same to record batches."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import struct
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import fuzzer as _fuzzer
from tests import _sqlite_pages
from tests._formats import downgrade, unbatch
from unbundled import CorruptionError, Idempotency, Log, Message, NotSupported
from unbundled.backends.sqlite import _schema
from unbundled.cli import cli
from unbundled.consistency import KV


def _write(path: Path, count: int = 200) -> list[bytes]:
    values = [b"value-%05d-" % i + os.urandom(40).hex().encode() for i in range(count)]
    with Log.open(path) as log:
        log.create_topic("t")
        log.append_batch(
            "t", [Message(v, key=b"k%d" % i, headers=(("h", b"x"),)) for i, v in enumerate(values)]
        )
    unbatch(path)
    return values


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("column", ["value", "key", "headers", "ts"])
def test_a_changed_column_fails_the_checksum(tmp_path: Path, column: str) -> None:
    path = tmp_path / "log.db"
    _write(path)
    raw = sqlite3.connect(path)
    new = "ts + 1" if column == "ts" else f"CAST(upper({column}) AS BLOB)"
    with raw:
        raw.execute(f"UPDATE log_1_0 SET {column} = {new} WHERE offset = 17")
    raw.close()
    with Log.open(path) as log:
        # As Kafka's consumer: the records before the damage, then an error.
        assert len(log.read("t", 0, 0, records_max=100)) == 17
        with pytest.raises(CorruptionError) as caught:
            log.read("t", 0, 17, records_max=100)
    assert caught.value.details["offset"] == 17
    assert "t[0]@17" in str(caught.value)


def test_bit_rot_inside_the_file_is_detected(tmp_path: Path) -> None:
    """Flip one byte of a stored value in the file itself (SQLite keeps no page
    checksums, so only our CRC can notice), then read everything."""
    path = tmp_path / "log.db"
    values = _write(path)
    data = bytearray(path.read_bytes())
    target = values[123]
    at = data.find(target)
    assert at > 0, "the value must be in the main file after close (checkpointed)"
    data[at + 20] ^= 0x01
    path.write_bytes(bytes(data))
    with Log.open(path) as log, pytest.raises(CorruptionError) as caught:
        list(log.scan("t", 0))
    assert caught.value.details["offset"] == 123


@pytest.mark.parametrize("where", [0.2, 0.4, 0.5, 0.7, 0.9])
def test_garbage_pages_never_read_as_records(tmp_path: Path, where: float) -> None:
    """Overwrite a stretch of the file: whatever SQLite makes of it, opening
    and reading either raise CorruptionError or return exactly what was written."""
    path = tmp_path / "log.db"
    values = _write(path, 2000)
    data = bytearray(path.read_bytes())
    start = int(len(data) * where)
    data[start : start + 4096] = random.Random(start).randbytes(4096)
    path.write_bytes(bytes(data))
    try:
        with Log.open(path) as log:
            got = [r.value for r in log.scan("t", 0)]
    except CorruptionError:
        return
    assert got == values


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    before = _digest(path)
    with pytest.raises(CorruptionError) as caught:
        Log.open(path)
    assert str(path) in str(caught.value)
    assert _digest(path) == before
    assert not Path(str(path) + "-wal").exists()


def test_another_applications_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    raw = sqlite3.connect(path)
    with raw:
        raw.execute("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT)")
        raw.execute("INSERT INTO customers(name) VALUES ('ada')")
    raw.close()
    before = _digest(path)
    with pytest.raises(CorruptionError, match="not an unbundled"):
        Log.open(path)
    assert _digest(path) == before


def test_a_newer_format_version_is_not_supported(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    _write(path, 3)
    raw = sqlite3.connect(path)
    with raw:  # as a newer unbundled writes it: the header and meta agree
        raw.execute("PRAGMA user_version = 99")
        raw.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
    raw.close()
    with pytest.raises(NotSupported, match="format version 99"):
        Log.open(path)


# --- issue 9, item 3: damage below SQLite -------------------------------------------


def _plain_log(path: Path, count: int = 400) -> list[bytes]:
    """The issue's file: one partition of ``count`` small records."""
    values = [b"value-%05d" % i for i in range(count)]
    with Log.open(path, sync="off", maintenance_interval_s=None) as log:
        log.create_topic("t")
        log.append_batch("t", values)
    unbatch(path)
    return values


def _read_all(path: Path) -> list[bytes | None]:
    with Log.open(path, maintenance_interval_s=None) as log:
        return [r.value for r in log.scan("t", 0)]


@pytest.mark.parametrize(
    ("column", "new"),
    [
        ("ts", "ts + 0.5"),  # a REAL where an INTEGER was
        ("key", "'text'"),  # TEXT where a BLOB (or NULL) was
        ("value", "CAST(value AS TEXT)"),
        ("headers", "7"),
        ("crc", "'x'"),
    ],
)
def test_a_column_of_another_type_is_corruption_not_a_type_error(
    tmp_path: Path, column: str, new: str
) -> None:
    """A flipped serial-type byte changes a column's type; the read used to
    raise TypeError (the CLI: a traceback after the good records)."""
    path = tmp_path / "log.db"
    _plain_log(path)
    with sqlite3.connect(path) as raw:
        raw.execute(f"UPDATE log_1_0 SET {column} = {new} WHERE offset = 123")
    raw.close()
    with pytest.raises(CorruptionError) as caught:
        _read_all(path)
    assert caught.value.details["offset"] == 123
    assert "t[0]@123" in str(caught.value)


def test_a_page_that_lost_its_last_records_fails_the_read(tmp_path: Path) -> None:
    """The issue's case: lowering a page's cell count used to make a read
    return 399 of 400 records while end_offsets said 400 (and consume exit 0)."""
    path = tmp_path / "log.db"
    values = _plain_log(path)
    first_leaf = _sqlite_pages.leaf_pages(path, "log_1_0")[0]
    size = _sqlite_pages.page_size(path)
    data = bytearray(path.read_bytes())
    at = (first_leaf - 1) * size + 3  # the b-tree page header's cell count
    (cells,) = struct.unpack_from(">H", data, at)
    struct.pack_into(">H", data, at, cells - 1)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match=rf"t\[0\]@{cells - 1}\.\.{cells - 1} are missing"):
        _read_all(path)
    result = CliRunner().invoke(
        cli, ["--db", str(path), "consume", "t", "--from-beginning", "--timeout", "0"]
    )
    assert result.exit_code == 6, result.output
    assert result.stdout_bytes.splitlines() == values[: cells - 1], "only the genuine records"


@pytest.mark.parametrize("where", ["middle", "last"])
def test_a_missing_record_is_never_skipped(tmp_path: Path, where: str) -> None:
    """A hole retention did not make (and the last record gone: nothing after
    it to show the gap) fails the read, where it used to be skipped."""
    path = tmp_path / "log.db"
    _plain_log(path)
    offset = 200 if where == "middle" else 399
    with sqlite3.connect(path) as raw:
        raw.execute("DELETE FROM log_1_0 WHERE offset = ?", (offset,))
    raw.close()
    with pytest.raises(CorruptionError) as caught:
        _read_all(path)
    assert caught.value.details["offset"] == offset
    with Log.open(path) as log:
        assert len(log.read("t", 0, 0, records_max=offset)) == offset, "the records before it"


def test_the_high_bits_of_a_timestamp_are_checked(tmp_path: Path) -> None:
    """The CRC's seed takes the low 32 bits of the timestamp only: a flip in
    the high bytes used to come back as a record with another timestamp."""
    path = tmp_path / "log.db"
    _plain_log(path)
    ts = _sqlite_pages.row_fields(path, "log_1_0", 77)[4]
    assert ts.length == 6, "a timestamp in ms takes six bytes"
    _sqlite_pages.damage(path, ts.value_at, 0x01)  # the timestamp's top byte
    with pytest.raises(CorruptionError) as caught:
        _read_all(path)
    assert caught.value.details["offset"] == 77


def test_a_damaged_format_version_names_the_file(tmp_path: Path) -> None:
    """The high bit of header byte 60 (user_version) made Log.open raise KeyError."""
    path = tmp_path / "log.db"
    _plain_log(path, 3)
    _sqlite_pages.damage(path, 60, 0x80)
    with pytest.raises(CorruptionError, match="format version is damaged") as caught:
        Log.open(path)
    assert str(path) in str(caught.value)
    _sqlite_pages.damage(path, 60, 0x80)
    _sqlite_pages.damage(path, 63, 0x01)  # 6 -> 7: the header and meta disagree
    with pytest.raises(CorruptionError, match="header says 7, meta says 6"):
        Log.open(path)


def test_a_damaged_text_encoding_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    _plain_log(path, 3)
    _sqlite_pages.damage(path, 59, 0x03)  # UTF-8 (1) -> UTF-16be (2)
    with pytest.raises(CorruptionError, match="encoding"):
        Log.open(path)


def test_a_file_truncated_inside_its_last_page_fails_the_read(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    _plain_log(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptionError):
        _read_all(path)


def test_a_damaged_start_offset_is_not_out_of_range(tmp_path: Path) -> None:
    """A partition row whose start offset grew would hide every record
    behind OffsetOutOfRange: the table still holds them, so it is damage."""
    path = tmp_path / "log.db"
    _plain_log(path)
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE partitions SET start_offset = 300")
    raw.close()
    with Log.open(path) as log, pytest.raises(CorruptionError, match="outside its range"):
        log.read("t", 0, 0)


def test_a_damaged_partition_row_fails_reads_and_refuses_appends(tmp_path: Path) -> None:
    """SQLite recomputes a partition row's checksum at every update, so an
    append (records = records + 1) would make damage to the row look sound:
    the update is refused instead."""
    path = tmp_path / "log.db"
    _plain_log(path)
    records = _sqlite_pages.keyed_fields(path, "partitions", (1, 0))[4]
    _sqlite_pages.damage(path, records.value_at + records.length - 1, 0x01)  # 400 -> 401
    with Log.open(path, maintenance_interval_s=None) as log:
        with pytest.raises(CorruptionError, match=r"row of t\[0\]"):
            log.describe_topic("t")
        with pytest.raises(CorruptionError, match="partitions is corrupt"):
            log.append("t", b"one more")
        with pytest.raises(CorruptionError, match=r"row of t\[0\]"):
            log.read("t", 0, 0)


@pytest.mark.parametrize(
    "config", ['{"partitions": "x"}', "not json", '{"partitions": 1, "retention_ms": 1e999}']
)
def test_a_damaged_topic_row_fails_an_append_typed(tmp_path: Path, config: str) -> None:
    """The writer reads a topic's row as a read does: damage to it (here a
    config that does not decode, or decodes to nonsense) is CorruptionError,
    not a decoding error escaping from the writer thread; nothing is written."""
    path = tmp_path / "log.db"
    _plain_log(path)
    with Log.open(path, maintenance_interval_s=None) as log:
        log.append("t", b"before")  # the facade now knows the topic's config
        raw = sqlite3.connect(path)  # the damage comes from outside: the
        raw.execute("UPDATE topics SET config = ? WHERE name = 't'", (config,))
        raw.commit()  # writer's cache of topics is dropped, its row read again
        raw.close()
        with pytest.raises(CorruptionError, match="topic"):
            log.append("t", b"one more")
        with pytest.raises(CorruptionError, match="topic"):
            log.append("t", b"and another")  # the writer is still serving


# --- compaction's gaps, the removed-range ledger and START (issue 9, item 10) --------


def _compacted(path: Path) -> None:
    with Log.open(path, sync="off", maintenance_interval_s=None) as log:
        log.create_topic("c", cleanup_policy="compact")
        keys = [b"a", b"a", b"b", b"a", b"c", b"b", b"d", b"a"]  # offsets 0..7
        log.append_batch("c", [Message(b"v%d" % i, key=k) for i, k in enumerate(keys)])
        assert log.maintain().removed == {"c": 4}


def test_compaction_leaves_gaps_that_reads_accept_and_start_stays(tmp_path: Path) -> None:
    """Kafka's log start offset: compaction removes records but does not move
    START; the gaps it leaves are in removed_ranges, and reads accept them."""
    path = tmp_path / "c.db"
    _compacted(path)
    with Log.open(path, maintenance_interval_s=None) as log:
        (info,) = log.describe_topic("c").partitions
        assert (info.start_offset, info.end_offset, info.records) == (0, 8, 4)
        assert [r.offset for r in log.read("c", 0, 0)] == [4, 5, 6, 7]
        assert [r.offset for r in log.read("c", 0, 2)] == [4, 5, 6, 7], "from inside a gap"
        assert log.read("c", 0, 8) == []
    with sqlite3.connect(path) as raw:
        ranges = raw.execute("SELECT start_offset, end_offset FROM removed_ranges").fetchall()
    raw.close()
    assert ranges == [(0, 4)]
    result = CliRunner().invoke(cli, ["--db", str(path), "topics", "describe", "c", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["partitions"][0]["start_offset"] == 0


def test_a_hole_compaction_did_not_make_fails_the_read(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    _compacted(path)
    with sqlite3.connect(path) as raw:
        raw.execute("DELETE FROM log_1_0 WHERE offset = 5")
    raw.close()
    with Log.open(path) as log:
        assert [r.offset for r in log.read("c", 0, 0)] == [4], "up to the hole"
        with pytest.raises(CorruptionError, match=r"c\[0\]@5\.\.5 are missing"):
            log.read("c", 0, 5)


@settings(max_examples=25, deadline=None)
@given(
    keys=st.lists(st.sampled_from([b"a", b"b", b"c", b"d"]), min_size=1, max_size=40),
    tombstones=st.sets(st.integers(0, 39)),
    lost=st.integers(0, 39),
)
def test_every_gap_is_explained_or_detected(
    keys: list[bytes], tombstones: set[int], lost: int
) -> None:
    """The ledger's law: after compaction, a read from any offset returns
    exactly the surviving records; remove any one of them below SQLite's
    bookkeeping of ours (a plain DELETE), and a full read raises."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "c.db"
        with Log.open(path, sync="off", maintenance_interval_s=None) as log:
            log.create_topic("c", cleanup_policy="compact", tombstone_retention_ms=0)
            messages = [
                Message(None if i in tombstones else b"v%d" % i, key=k, timestamp=0)
                for i, k in enumerate(keys)
            ]
            log.append_batch("c", messages)
            log.maintain()
            survivors = [r.offset for r in log.read("c", 0, 0)]
            for start in range(len(keys) + 1):
                assert [r.offset for r in log.read("c", 0, start)] == [
                    o for o in survivors if o >= start
                ]
        if not survivors:
            return
        victim = survivors[lost % len(survivors)]
        with sqlite3.connect(path) as raw:
            raw.execute("DELETE FROM log_1_0 WHERE offset = ?", (victim,))
        raw.close()
        with Log.open(path) as log, pytest.raises(CorruptionError):
            list(log.scan("c", 0))


# --- the other stores' rows -----------------------------------------------------------


def test_a_damaged_idempotency_record_or_kv_entry_is_corruption(tmp_path: Path) -> None:
    """Neither had a checksum: a changed byte came back as a different result."""
    path = tmp_path / "stores.db"
    with Idempotency.open(path) as idem:
        idem.call("order-7", {"n": 1}, lambda attempt: {"charged": 5})
    with KV.open(path) as kv:
        kv.write("limit", b"100")
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE idempotency SET record = replace(record, '5', '6')")
        raw.execute("UPDATE kv SET value = CAST('900' AS BLOB)")
    raw.close()
    with Idempotency.open(path) as idem, pytest.raises(CorruptionError, match="order-7"):
        idem.get("order-7")
    with KV.open(path) as kv, pytest.raises(CorruptionError, match="limit"):
        kv.read("limit")


def test_a_format_4_file_is_upgraded_and_reads_the_same(tmp_path: Path) -> None:
    """Every store's data, a compacted partition's gaps included, reads the
    same after the upgrade to format 5 (which computes every new check)."""
    path = tmp_path / "old.db"
    _fuzzer.build(path)
    before = _fuzzer.api_reads(path)
    downgrade(path, 4)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (4,)
    raw.close()
    assert _fuzzer.api_reads(path) == before
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (_schema.FORMAT_VERSION,)
        assert raw.execute("SELECT count(*) FROM removed_ranges").fetchone()[0] > 0
    raw.close()
