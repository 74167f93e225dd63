"""What lets a reader trust a row of the SQLite file (see docs/reference/format.md).

SQLite keeps no page checksums: a flipped byte can change a column's value or
its type, a damaged page can drop rows, and a damaged index can hide them.
So every row a read interprets carries a check of its own, verified before
any field is used:

* rows written by Python code carry ``crc``, a CRC-32 over the MessagePack
  encoding of the row's fields (:func:`row_crc`): MessagePack tags each
  field's type, so a NULL, an empty string and an empty blob differ;
* rows updated by SQL arithmetic (a partition's counters, which the writer
  bumps with ``records = records + ?``) carry ``checksum``, a STORED
  generated column that SQLite computes on every write
  (:func:`int_check_sql`) and the reader recomputes (:func:`int_check`).

Every check is seeded with the table's name, so a row (or a whole b-tree
whose root was redirected) of another table never verifies.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Sequence

import msgspec

from ...errors import CorruptionError

# A Mersenne prime: a changed value changes the check unless it changed by a
# multiple of 2**31 - 1, which no single byte of a varint can do.
_PRIME = 2_147_483_647
_FACTOR = 65_599
_encode = msgspec.msgpack.encode


def _seed(table: str) -> int:
    return zlib.crc32(table.encode()) % _PRIME


def row_crc(table: str, *fields: str | bytes | int | None) -> int:
    """The ``crc`` of a row of ``table`` with these fields, in column order."""
    return zlib.crc32(_encode(fields), zlib.crc32(table.encode()))


def int_check_sql(table: str, columns: Sequence[str]) -> str:
    """The SQL expression of a ``checksum`` column over integer ``columns``.

    Every intermediate value stays below 2**62: SQLite turns an integer
    overflow into a floating-point value, which would break the check."""
    expr = str(_seed(table))
    for column in columns:
        expr = f"(({expr}) * {_FACTOR} + {column} % {_PRIME}) % {_PRIME}"
    return expr


def _c_mod(value: int) -> int:
    """SQLite's ``%``: the remainder takes the sign of the dividend (C's rule)."""
    rest = abs(value) % _PRIME
    return -rest if value < 0 else rest


_SEEDS: dict[str, int] = {}


def int_check(table: str, values: Sequence[object]) -> int | None:
    """What :func:`int_check_sql` computes for ``values``; None if one is not an int.

    Runs on every read of a partition row: the loop takes the common case
    (no negative value, where C's ``%`` is Python's) without a call."""
    seed = _SEEDS.get(table)
    if seed is None:
        seed = _SEEDS[table] = _seed(table)
    check = seed
    for value in values:
        if type(value) is not int:
            return None
        if value < 0:
            return _signed_check(seed, values)
        check = (check * _FACTOR + value % _PRIME) % _PRIME
    return check


def _signed_check(seed: int, values: Sequence[object]) -> int | None:
    check = seed
    for value in values:
        if type(value) is not int:
            return None
        check = _c_mod(check * _FACTOR + _c_mod(value))
    return check


def rebuild_removed(
    conn: sqlite3.Connection, table: str, topic_id: int, partition: int, start: int, end: int
) -> None:
    """Record every gap between the stored offsets of a partition in
    ``removed_ranges``, as maximal ``[start_offset, end_offset)`` ranges.

    Called in the transaction that removed records (compaction), so the
    ledger always describes exactly the gaps the table has: a reader that
    meets a gap the ledger does not explain has met damage."""
    conn.execute(
        "DELETE FROM removed_ranges WHERE topic_id = ? AND partition = ?", (topic_id, partition)
    )
    conn.execute(
        "INSERT INTO removed_ranges(topic_id, partition, start_offset, end_offset) "
        "SELECT ?, ?, previous + 1, offset FROM ("
        "SELECT offset, lag(offset, 1, ?) OVER (ORDER BY offset) AS previous "
        f"FROM {table} WHERE offset >= ?"
        ") WHERE offset > previous + 1",
        (topic_id, partition, start - 1, start),
    )
    last = conn.execute(f"SELECT max(offset) FROM {table}").fetchone()[0]
    tail = start if last is None else last + 1
    if tail < end:
        conn.execute(
            "INSERT INTO removed_ranges(topic_id, partition, start_offset, end_offset) "
            "VALUES (?, ?, ?, ?)",
            (topic_id, partition, tail, end),
        )


def corrupt(path: str, what: str, **details: object) -> CorruptionError:
    """The error for a damaged row or structure of the file at ``path``."""
    return CorruptionError(f"{path}: {what}: the file is damaged", path=path, **details)
