"""The server as the judge of a converted value: our JSON-ready value, written back as
PostgreSQL input, must print as the column prints (`same_as_column`)."""

from __future__ import annotations

import re
from typing import Any

import psycopg

from unbundled.cdc._change import json_value
from unbundled.cdc._pgtypes import DATE, TIMESTAMP, TIMESTAMPTZ, TIMETZ

_ISO_YEAR = re.compile(r"([+-]?)(\d{4,})(-.*)")


def pg_input(value: Any, type_oid: int = 0) -> str | None:
    """A converted value as text PostgreSQL's input function reads back."""
    if value is None:
        return None
    if isinstance(value, list):
        delimiter = ";" if type_oid == 1020 else ","  # box[]
        return "{" + delimiter.join(_element(item, type_oid) for item in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    text = str(json_value(value))
    if type_oid in (DATE, TIMESTAMP, TIMESTAMPTZ):
        return _pg_date(text)
    return text


def _element(item: Any, array_oid: int) -> str:
    if item is None:
        return "NULL"
    if isinstance(item, list):
        return pg_input(item, array_oid) or "{}"
    text = pg_input(item, _element_date_oid(item)) or ""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _element_date_oid(item: Any) -> int:
    # Array elements of date types: their ISO years need the same reading back.
    if isinstance(item, str) and _ISO_YEAR.fullmatch(item) and "T" in item:
        return TIMESTAMPTZ
    return 0


def _pg_date(text: str) -> str:
    """ISO's astronomical years (-0043, 0000, +10000) as PostgreSQL reads them."""
    match = _ISO_YEAR.fullmatch(text)
    if match is None:
        return text
    sign, year, rest = match.groups()
    astronomical = -int(year) if sign == "-" else int(year)
    if astronomical <= 0:
        return f"{1 - astronomical:04d}{rest} BC".replace("T", " ").replace("Z BC", "+00 BC")
    return f"{astronomical:04d}{rest}"


def same_as_column(
    conn: psycopg.Connection[Any], table: str, column: str, row_id: int, value: Any, type_oid: int
) -> bool:
    """Does `value` (ours) print, as the column's type, exactly as the stored value?"""
    ours, theirs = f"%s::{_type_of(conn, table, column)}", f'"{column}"'
    if type_oid == TIMETZ:  # equal times in other zones: compare them in UTC
        ours, theirs = f"({ours} AT TIME ZONE 'UTC')", f"({theirs} AT TIME ZONE 'UTC')"
    row = conn.execute(
        f'SELECT {ours}::text IS NOT DISTINCT FROM {theirs}::text FROM "{table}" WHERE id = %s',
        [pg_input(value, type_oid), row_id],
    ).fetchone()
    assert row is not None
    return bool(row[0])


def _type_of(conn: psycopg.Connection[Any], table: str, column: str) -> str:
    row = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attname = %s",
        [table, column],
    ).fetchone()
    assert row is not None
    return str(row[0])
