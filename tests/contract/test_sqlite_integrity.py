"""Guarantee 7 (integrity) on SQLite: damaged records raise CorruptionError,
never come back as data; files that are not ours are refused and untouched."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
from pathlib import Path

import pytest

from unbundled import CorruptionError, Log, Message, NotSupported


def _write(path: Path, count: int = 200) -> list[bytes]:
    values = [b"value-%05d-" % i + os.urandom(40).hex().encode() for i in range(count)]
    with Log.open(path) as log:
        log.create_topic("t")
        log.append_batch(
            "t", [Message(v, key=b"k%d" % i, headers=(("h", b"x"),)) for i, v in enumerate(values)]
        )
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
        assert len(log.read("t", 0, 0, records_max=17)) == 17  # before the damage: fine
        with pytest.raises(CorruptionError) as caught:
            log.read("t", 0, 0, records_max=100)
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
        log.read("t", 0, 0, records_max=1000)
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
