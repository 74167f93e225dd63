"""Where a record's bytes sit in an SQLite file, for tests that damage one
field of one row the way a flipped bit on disk would (below SQLite, so none
of its own bookkeeping follows the change).

Only table b-tree leaf pages, and only records whose payload fits the page
(no overflow), which is what the tests' small rows are.
"""

from __future__ import annotations

import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path

HEADER_BYTES = 100


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """SQLite's big-endian varint at ``at``: (value, length)."""
    value = 0
    for i in range(8):
        byte = data[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, i + 1
    return (value << 8) | data[at + 8], 9


def _body_length(serial_type: int) -> int:
    fixed = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8, 7: 8, 8: 0, 9: 0}
    if serial_type in fixed:
        return fixed[serial_type]
    return (serial_type - 12) // 2 if serial_type % 2 == 0 else (serial_type - 13) // 2


@dataclass(frozen=True)
class Field:
    """One column of one stored row: where its serial type and its value are."""

    type_at: int  # file offset of the serial type varint (its first byte)
    value_at: int  # file offset of the value
    length: int  # bytes of the value


def page_size(path: Path) -> int:
    (size,) = struct.unpack_from(">H", path.read_bytes(), 16)
    return 65536 if size == 1 else int(size)


def leaf_pages(path: Path, table: str) -> list[int]:
    """The leaf pages of ``table``'s b-tree, in key order."""
    with sqlite3.connect(path) as raw:
        rows = raw.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY path",
            (table,),
        ).fetchall()
    raw.close()
    return [int(r[0]) for r in rows]


def _cells(path: Path, btree: str) -> list[tuple[bytes, int, int | None]]:
    """``(file bytes, record offset, rowid)`` of every cell on the b-tree's
    leaf pages: a rowid table's cells carry a rowid, an index's (and a
    WITHOUT ROWID table's) do not."""
    data = path.read_bytes()
    size = page_size(path)
    out: list[tuple[bytes, int, int | None]] = []
    for number in leaf_pages(path, btree):
        start = (number - 1) * size
        header = start + (HEADER_BYTES if number == 1 else 0)
        kind = data[header]
        (cells,) = struct.unpack_from(">H", data, header + 3)
        for i in range(cells):
            (pointer,) = struct.unpack_from(">H", data, header + 8 + 2 * i)
            at = start + pointer
            _, used = _varint(data, at)  # payload length
            if kind == 0x0D:  # a table leaf: the rowid follows
                rowid, used_rowid = _varint(data, at + used)
                out.append((data, at + used + used_rowid, rowid))
            else:
                out.append((data, at + used, None))
    return out


def _fields(data: bytes, record: int) -> list[Field]:
    header_length, used_header = _varint(data, record)
    types_at, value_at = record + used_header, record + header_length
    fields = []
    while types_at < record + header_length:
        serial, used_serial = _varint(data, types_at)
        length = _body_length(serial)
        fields.append(Field(types_at, value_at, length))
        types_at += used_serial
        value_at += length
    return fields


def _integer(data: bytes, field: Field) -> int | None:
    serial = data[field.type_at]
    if serial in (8, 9):
        return serial - 8
    if 1 <= serial <= 6:
        return int.from_bytes(
            data[field.value_at : field.value_at + field.length], "big", signed=True
        )
    return None


def row_fields(path: Path, table: str, rowid: int) -> list[Field]:
    """The columns of the row with ``rowid`` in ``table`` (a rowid table)."""
    for data, record, found in _cells(path, table):
        if found == rowid:
            return _fields(data, record)
    raise LookupError(f"row {rowid} of {table} is not on a leaf page of {path}")


def keyed_fields(path: Path, table: str, key: tuple[int, ...]) -> list[Field]:
    """The columns of the row of a WITHOUT ROWID ``table`` whose first
    columns are the integers ``key``."""
    for data, record, _ in _cells(path, table):
        fields = _fields(data, record)
        if tuple(_integer(data, f) for f in fields[: len(key)]) == key:
            return fields
    raise LookupError(f"row {key} of {table} is not on a leaf page of {path}")


def damage(path: Path, at: int, xor: int) -> None:
    """Flip bits of the byte at ``at`` (``xor``), as a disk would."""
    data = bytearray(path.read_bytes())
    data[at] ^= xor
    path.write_bytes(bytes(data))
