"""Record batches (format 6, the ``delete`` topics' storage on SQLite): reads
and retention give exactly what a row per record gives; a damaged batch raises
CorruptionError, never comes back as records, never is skipped."""

from __future__ import annotations

import os
import random
import sqlite3
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import _sqlite_pages
from tests._formats import downgrade
from unbundled import CorruptionError, Log, Message, OffsetOutOfRange
from unbundled.backends.sqlite import _log_batch, _schema
from unbundled.cli import cli


def _batches(path: Path, table: str = "log_1_0") -> list[tuple[int, int, int, int]]:
    with sqlite3.connect(path) as raw:
        rows = raw.execute(f"SELECT base, last, ts_max, size FROM {table} ORDER BY base")
        found = rows.fetchall()
    raw.close()
    return found


def _write(path: Path, count: int = 2000) -> list[bytes]:
    values = [b"value-%05d-" % i + os.urandom(8).hex().encode() for i in range(count)]
    with Log.open(path, sync="off", maintenance_interval_s=None) as log:
        log.create_topic("t")
        log.append_batch(
            "t",
            [Message(v, key=b"k%d" % i, headers=(("h", b"%d" % i),)) for i, v in enumerate(values)],
        )
    return values


def _read_all(path: Path) -> list[bytes | None]:
    with Log.open(path, maintenance_interval_s=None) as log:
        return [r.value for r in log.scan("t", 0)]


def test_a_delete_topic_stores_batches_bounded_by_records_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    values = _write(path)
    big = b"x" * (_log_batch.BATCH_BYTES - 10)
    with Log.open(path, maintenance_interval_s=None) as log:
        log.append_batch("t", [b"small", big, big, b"tail"])
        log.create_topic("c", cleanup_policy="compact")
        records = log.read("t", 0, 0, records_max=5000)
    with sqlite3.connect(path) as raw:
        formats = dict(raw.execute("SELECT name, records_format FROM topics").fetchall())
    raw.close()
    assert formats == {"t": _schema.BATCHED_FORMAT, "c": _schema.ROW_FORMAT}
    batches = _batches(path)
    assert [(b, last) for b, last, _, _ in batches] == [
        (0, 511),
        (512, 1023),
        (1024, 1535),
        (1536, 1999),
        (2000, 2001),
        (2002, 2003),
    ], "512 records at most, and 256 KiB (a bigger record alone)"
    assert [r.value for r in records] == [*values, b"small", big, big, b"tail"]
    assert [r.headers for r in records[:3]] == [(("h", b"0"),), (("h", b"1"),), (("h", b"2"),)]
    assert [r.offset for r in records] == list(range(2004))
    assert sum(size for *_, size in batches) == sum(
        len(r.key or b"") + len(r.value or b"") for r in records
    )


@contextmanager
def _tiny_batches() -> Iterator[None]:
    saved = _log_batch.BATCH_RECORDS, _log_batch.BATCH_BYTES
    _log_batch.BATCH_RECORDS, _log_batch.BATCH_BYTES = 3, 20
    try:
        yield
    finally:
        _log_batch.BATCH_RECORDS, _log_batch.BATCH_BYTES = saved


@settings(max_examples=40, deadline=None)
@given(
    appends=st.lists(st.integers(1, 9), min_size=1, max_size=8),
    reads=st.lists(
        st.tuples(st.integers(0, 80), st.integers(1, 12), st.integers(1, 60)), max_size=12
    ),
)
def test_reads_from_anywhere_equal_the_records_appended(
    appends: list[int], reads: list[tuple[int, int, int]]
) -> None:
    """Tiny batches (3 records or 20 bytes), so reads start and stop inside
    batches and cross many: every read is the slice a list of records gives."""
    with (
        _tiny_batches(),
        tempfile.TemporaryDirectory() as directory,
        Log.open(Path(directory) / "p.db", sync="off", maintenance_interval_s=None) as log,
    ):
        log.create_topic("t")
        written: list[bytes] = []
        for n in appends:
            batch = [b"v%d" % (len(written) + i) * (1 + i % 3) for i in range(n)]
            log.append_batch("t", batch)
            written += batch
        for offset, records_max, bytes_max in reads:
            if offset > len(written):
                with pytest.raises(OffsetOutOfRange):
                    log.read("t", 0, offset)
                continue
            got = log.read("t", 0, offset, records_max=records_max, bytes_max=bytes_max)
            want: list[bytes] = []
            size = 0
            for value in written[offset : offset + records_max]:
                size += len(value)
                if size > bytes_max and want:
                    break
                want.append(value)
            assert [r.value for r in got] == want
            assert [r.offset for r in got] == list(range(offset, offset + len(want)))


def test_retention_cuts_inside_a_batch_and_reads_start_at_the_start(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with Log.open(path, sync="off", maintenance_interval_s=None) as log:
        log.create_topic("t", retention_bytes=10 * 700)
        log.append_batch("t", [b"%010d" % i for i in range(1000)])  # batches 0..511, 512..999
        assert log.maintain().removed == {"t": 300}
        (info,) = log.describe_topic("t").partitions
        assert (info.start_offset, info.end_offset, info.records, info.bytes) == (
            300,
            1000,
            700,
            7000,
        )
        assert _batches(path)[0][:2] == (0, 511), "the batch the cut fell in stays"
        assert [r.offset for r in log.read("t", 0, 300, records_max=3)] == [300, 301, 302]
        with pytest.raises(OffsetOutOfRange):
            log.read("t", 0, 299)
        log.append_batch("t", [b"%010d" % i for i in range(1000, 1300)])
        assert log.maintain().removed == {"t": 300}
        assert _batches(path)[0][:2] == (512, 999), "whole batches before the cut are gone"
        assert [r.value for r in log.read("t", 0, 600, records_max=1)] == [b"%010d" % 600]


def test_retention_by_time_finds_the_first_young_record_inside_a_batch(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with Log.open(path, sync="off", maintenance_interval_s=None, clock=lambda: 10_000) as log:
        log.create_topic("t", retention_ms=1_000)
        # Out of order: a young record early in the batch keeps what follows it.
        stamps = [1_000] * 100 + [9_500] + [1_000] * 50 + [9_600] * 49
        log.append_batch("t", [Message(b"x", timestamp=ts) for ts in stamps])
        assert log.maintain().removed == {"t": 100}
        assert log.describe_topic("t").partitions[0].start_offset == 100


# --- damage -------------------------------------------------------------------------


def _rewrite(path: Path, base: int, column: str, value: object) -> None:
    with sqlite3.connect(path) as raw:
        raw.execute(f"UPDATE log_1_0 SET {column} = ? WHERE base = ?", (value, base))
    raw.close()


def _flipped(path: Path, base: int) -> bytes:
    with sqlite3.connect(path) as raw:
        (data,) = raw.execute("SELECT data FROM log_1_0 WHERE base = ?", (base,)).fetchone()
    raw.close()
    data = bytes(data)
    at = len(data) // 2
    return data[:at] + bytes([data[at] ^ 0x04]) + data[at + 1 :]


@pytest.mark.parametrize("column", ["data", "last", "ts_max", "size"])
def test_a_changed_column_fails_the_checksum(tmp_path: Path, column: str) -> None:
    path = tmp_path / "log.db"
    _write(path)
    if column == "data":
        _rewrite(path, 1024, "data", _flipped(path, 1024))
    else:
        with sqlite3.connect(path) as raw:
            raw.execute(f"UPDATE log_1_0 SET {column} = {column} + 1 WHERE base = 1024")
        raw.close()
    with Log.open(path) as log:
        # As Kafka's consumer: the records before the damaged batch, then an error.
        assert len(log.read("t", 0, 0, records_max=5000)) == 1024
        with pytest.raises(CorruptionError) as caught:
            log.read("t", 0, 1100)
    assert caught.value.details["offset"] == 1024
    assert "t[0] at offset 1024" in str(caught.value)


@pytest.mark.parametrize(
    ("column", "new"),
    [("data", "'text'"), ("crc", "'x'"), ("last", "last + 0.5"), ("size", "size + 0.5")],
)
def test_a_column_of_another_type_is_corruption_not_a_type_error(
    tmp_path: Path, column: str, new: str
) -> None:
    path = tmp_path / "log.db"
    _write(path)
    with sqlite3.connect(path) as raw:
        raw.execute(f"UPDATE log_1_0 SET {column} = {new} WHERE base = 512")
    raw.close()
    with pytest.raises(CorruptionError) as caught:
        _read_all(path)
    assert caught.value.details["offset"] == 512


@pytest.mark.parametrize("which", [512, 1536])
def test_a_missing_batch_is_never_skipped(tmp_path: Path, which: int) -> None:
    """A hole retention did not make, in the middle or at the end (nothing
    after it to show the gap but the partition's end offset)."""
    path = tmp_path / "log.db"
    _write(path)
    with sqlite3.connect(path) as raw:
        raw.execute("DELETE FROM log_1_0 WHERE base = ?", (which,))
    raw.close()
    with pytest.raises(CorruptionError) as caught:
        _read_all(path)
    assert caught.value.details["offset"] == which
    with Log.open(path) as log:
        assert len(log.read("t", 0, 0, records_max=5000)) == which, "the records before it"
        with pytest.raises(CorruptionError):
            log.read("t", 0, which + 3)


def test_bit_rot_inside_the_file_is_detected(tmp_path: Path) -> None:
    """One flipped bit of a stored value in the file itself (SQLite keeps no
    page checksums, so only the batch's CRC can notice)."""
    path = tmp_path / "log.db"
    values = _write(path)
    data = bytearray(path.read_bytes())
    at = data.find(values[1200])
    assert at > 0, "the value must be in the main file after close (checkpointed)"
    data[at + 14] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError) as caught:
        _read_all(path)
    assert caught.value.details["offset"] == 1024, "the batch holding it"


@pytest.mark.parametrize("where", [0.2, 0.4, 0.5, 0.7, 0.9])
def test_garbage_pages_never_read_as_records(tmp_path: Path, where: float) -> None:
    path = tmp_path / "log.db"
    values = _write(path, 6000)
    data = bytearray(path.read_bytes())
    start = int(len(data) * where)
    data[start : start + 4096] = random.Random(start).randbytes(4096)
    path.write_bytes(bytes(data))
    try:
        got = _read_all(path)
    except CorruptionError:
        return
    assert got == values


def _leaf_with_cells(path: Path) -> Iterator[tuple[int, int]]:
    size = _sqlite_pages.page_size(path)
    data = path.read_bytes()
    for leaf in _sqlite_pages.leaf_pages(path, "log_1_0"):
        at = (leaf - 1) * size + 3
        yield at, struct.unpack_from(">H", data, at)[0]


def test_a_page_that_lost_its_last_batches_fails_the_read(tmp_path: Path) -> None:
    """A page header whose cell count shrank hides its last rows from SQLite:
    a read must fail there, and `consume` print only the genuine records."""
    path = tmp_path / "log.db"
    values = _write(path, 20_000)
    leaves = list(_leaf_with_cells(path))
    at, cells = next(leaf for leaf in leaves[:-1] if leaf[1] > 1)
    data = bytearray(path.read_bytes())
    struct.pack_into(">H", data, at, cells - 1)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="missing"):
        _read_all(path)
    result = CliRunner().invoke(
        cli, ["--db", str(path), "consume", "t", "--from-beginning", "--timeout", "0"]
    )
    assert result.exit_code == 6, result.output
    lines = result.stdout_bytes.splitlines()
    assert lines and lines == values[: len(lines)], "only genuine records, in order"


# --- files of format 5 ----------------------------------------------------------------


def test_a_format_5_file_keeps_its_rows_and_new_topics_store_batches(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    values = _write(path, 700)
    downgrade(path, 5)
    with Log.open(path, maintenance_interval_s=None) as log:
        assert [r.value for r in log.scan("t", 0)] == values
        log.append_batch("t", [b"after", b"the upgrade"])
        log.create_topic("new")
        log.append_batch("new", [b"a", b"b"])
        assert [r.value for r in log.read("t", 0, 699)] == [values[-1], b"after", b"the upgrade"]
        assert [r.value for r in log.read("new", 0, 0)] == [b"a", b"b"]
    with sqlite3.connect(path) as raw:
        formats = dict(raw.execute("SELECT name, records_format FROM topics").fetchall())
        version = raw.execute("PRAGMA user_version").fetchone()[0]
    raw.close()
    assert formats == {"t": _schema.ROW_FORMAT, "new": _schema.BATCHED_FORMAT}
    assert version == _schema.FORMAT_VERSION == 6


def test_a_format_5_file_opens_read_only_without_the_upgrade(tmp_path: Path) -> None:
    """Version 6 only added a layout for new topics: a version-5 file reads
    as it is, where an older one needs the (writing) upgrade first."""
    path = tmp_path / "old.db"
    values = _write(path, 600)
    downgrade(path, 5)
    with Log.open(f"sqlite:///{path}?mode=ro") as log:
        assert [r.value for r in log.scan("t", 0)] == values
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (5,), "left as it was"
    raw.close()
