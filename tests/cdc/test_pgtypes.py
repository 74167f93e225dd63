"""Text values -> Python values: properties against independent writers, and the
server as judge of random values in bulk."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.cdc._oracle import pg_input
from tests.cdc.conftest import server_url
from unbundled.cdc._change import json_value
from unbundled.cdc._pgtypes import (
    BYTEA,
    DATE,
    FLOAT8,
    INT8,
    INTERVAL,
    NUMERIC,
    TEXT,
    TIMESTAMP,
    TIMESTAMPTZ,
    TIMETZ,
    BadValue,
    convert,
    parse_array,
)
from unbundled.errors import CorruptionError

# --- independent writers of PostgreSQL's text output --------------------------------


def _array_text(value: list[Any]) -> str:
    """array_out's rules: quote an element when it is empty, NULL-like, or holds a
    delimiter, brace, quote, backslash or space."""
    parts = []
    for item in value:
        if item is None:
            parts.append("NULL")
        elif isinstance(item, list):
            parts.append(_array_text(item))
        elif item == "" or item.upper() == "NULL" or any(c in item for c in '{},"\\ \t\n'):
            parts.append('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            parts.append(item)
    return "{" + ",".join(parts) + "}"


def _fraction(microsecond: int) -> str:
    return f".{microsecond:06d}".rstrip("0") if microsecond else ""


elements = st.none() | st.text(max_size=8)


@st.composite
def rectangular(draw: st.DrawFn) -> list[Any]:
    dims = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))

    def build(level: int) -> list[Any]:
        if level == len(dims) - 1:
            return [draw(elements) for _ in range(dims[level])]
        return [build(level + 1) for _ in range(dims[level])]

    return build(0)


@given(rectangular())
def test_arrays_of_text_round_trip(value: list[Any]) -> None:
    assert parse_array(_array_text(value), str) == value


@given(st.lists(st.integers(-(2**63), 2**63 - 1) | st.none(), max_size=6))
def test_int8_arrays_convert_their_elements(value: list[int | None]) -> None:
    text = _array_text([None if v is None else str(v) for v in value])
    assert convert(1016, text) == value


@given(st.text(max_size=30).filter(lambda t: not t.startswith("{")))
def test_damaged_arrays_are_bad_values(text: str) -> None:
    with pytest.raises(BadValue):
        parse_array(text, str)


@pytest.mark.parametrize("text", ["{", "{1,", '{"a}', "{1}}", "{{1}", "[0:1]{1}", "{a,,b}"])
def test_malformed_arrays_are_corruption(text: str) -> None:
    with pytest.raises(CorruptionError):
        parse_array(text, str)


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_numerics_are_exact(value: Decimal) -> None:
    text = format(value, "f")
    assert convert(NUMERIC, text) == value
    assert json_value(convert(NUMERIC, text)) == text


@given(st.floats(allow_nan=False))
def test_float8_keeps_every_bit(value: float) -> None:
    text = {float("inf"): "Infinity", float("-inf"): "-Infinity"}.get(value, repr(value))
    assert convert(FLOAT8, text) == value


@given(st.binary(max_size=40))
def test_bytea_in_both_output_formats(value: bytes) -> None:
    escaped = "".join(
        "\\\\" if b == 0x5C else chr(b) if 0x20 <= b < 0x7F else f"\\{b:03o}" for b in value
    )
    assert convert(BYTEA, "\\x" + value.hex()) == value
    assert convert(BYTEA, escaped) == value


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
def test_timestamps_keep_microseconds(value: datetime) -> None:
    text = value.strftime("%Y-%m-%d %H:%M:%S").rjust(19, "0") + _fraction(value.microsecond)
    text = f"{value.year:04d}" + text[text.index("-") :]
    assert datetime.fromisoformat(convert(TIMESTAMP, text)) == value


offsets = st.integers(-15 * 3600, 15 * 3600).map(lambda s: timedelta(seconds=s))


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    offsets,
)
def test_timestamptz_becomes_the_same_instant_in_utc(value: datetime, offset: timedelta) -> None:
    local = value.replace(tzinfo=timezone(offset))
    seconds = int(offset.total_seconds())
    sign, magnitude = ("-" if seconds < 0 else "+"), abs(seconds)
    zone = f"{sign}{magnitude // 3600:02d}"
    if magnitude % 3600:
        zone += f":{magnitude % 3600 // 60:02d}"
        if magnitude % 60:
            zone += f":{magnitude % 60:02d}"
    text = f"{value.year:04d}-{value:%m-%d %H:%M:%S}{_fraction(value.microsecond)}{zone}"
    result = convert(TIMESTAMPTZ, text)
    if result.endswith("Z"):
        assert datetime.fromisoformat(result[:-1]).replace(tzinfo=UTC) == local
    else:  # shifted out of datetime's range: kept with its offset
        assert datetime.fromisoformat(result) == local


@given(st.dates(min_value=date(1, 1, 1)), st.booleans())
def test_dates_use_astronomical_years_before_christ(value: date, bc: bool) -> None:
    text = f"{value.year:04d}-{value:%m-%d}" + (" BC" if bc else "")
    result = convert(DATE, text)
    year = 1 - value.year if bc else value.year
    assert int(result[: result.index("-", 1)]) == year
    assert result.endswith(f"{value:%m-%d}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10:00:00.5+05:30", "04:30:00.5Z"),
        ("00:30:00-01:00", "01:30:00Z"),
        ("23:00:00-02", "01:00:00Z"),
        ("12:00:00+00:19:32", "11:40:28Z"),
    ],
)
def test_timetz_in_utc(text: str, expected: str) -> None:
    assert convert(TIMETZ, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:00:00", "P0Y0M0DT0H0M0S"),
        ("1 year", "P1Y0M0DT0H0M0S"),
        ("-1 years -2 mons +3 days -00:00:01.000001", "P-1Y-2M3DT0H0M-1.000001S"),
        ("1 day 100:00:00", "P0Y0M1DT100H0M0S"),
        ("P1Y", "P1Y"),
    ],
)
def test_intervals_as_iso_durations(text: str, expected: str) -> None:
    assert convert(INTERVAL, text) == expected


@pytest.mark.parametrize(
    ("oid", "text"),
    [
        (16, "yes"),
        (INT8, "1.5"),
        (NUMERIC, "1,5"),
        (NUMERIC, "sNaN"),
        (BYTEA, "\\xZZ"),
        (BYTEA, "\\9"),
        (DATE, "01/02/2024"),
        (TIMESTAMP, "2024-01-02T03:04:05"),
        (TIMESTAMPTZ, "2024-13-40 00:00:00+00"),
        (INTERVAL, "1 fortnight"),
        (INTERVAL, "@ 1 day"),
        (TIMETZ, "10:00"),
    ],
)
def test_values_that_do_not_parse_are_corruption_naming_the_type(oid: int, text: str) -> None:
    with pytest.raises(CorruptionError, match="does not parse") as caught:
        convert(oid, text)
    assert caught.value.value == text


def test_money_outside_the_c_locale_stays_text() -> None:
    assert convert(790, "-$1,234,567.89") == Decimal("-1234567.89")
    assert convert(790, "1.234,56 EUR") == "1.234,56 EUR"


def test_unknown_types_and_user_arrays() -> None:
    assert convert(99999, "{a,b}") == "{a,b}"  # an enum or domain: its text
    assert convert(99999, "{a,b}", {99999: "_mood"}) == ["a", "b"]
    assert convert(TEXT, "") == ""


# --- the server as judge, in bulk ------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("type_name", "generator"),
    [
        (
            "interval",
            "make_interval(years => (random()*400 - 200)::int, months => (random()*30-15)::int,"
            " days => (random()*800-400)::int, hours => (random()*200-100)::int,"
            " secs => round((random()*100000-50000)::numeric, 6)::float8)",
        ),
        (
            "timestamptz",
            "timestamptz '0500-01-01 00:00:00+00' + random() * 9.4e10 * interval '1 second'",
        ),
        ("timestamp", "timestamp '0001-01-01' + random() * 3.1e11 * interval '1 second'"),
        ("timetz", "(time '00:00' + random() * interval '24 hours')::timetz"),
        (
            "numeric",
            "round((random() - 0.5)::numeric * 10::numeric ^ (random() * 40 - 20)::int, 30)",
        ),
        ("float8", "(random() - 0.5) * 10 ^ (random() * 600 - 300)"),
        ("float4", "((random() - 0.5) * 10 ^ (random() * 60 - 30))::float4"),
        ("date", "date '4713-01-01 BC' + (random() * 3000000)::int"),
    ],
)
@pytest.mark.parametrize("zone", ["UTC", "Asia/Kathmandu", "Europe/Amsterdam"])
def test_random_values_read_back_equal_on_the_server(
    type_name: str, generator: str, zone: str
) -> None:
    import psycopg

    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f"SET TimeZone = '{zone}'")
        conn.execute(f"SELECT setseed({random.Random(zone + type_name).random()})")
        result = conn.pgconn.exec_(
            f"SELECT v, pg_typeof(v)::regtype::oid FROM (SELECT {generator} AS v "
            "FROM generate_series(1, 300)) s".encode()
        )
        assert result.ntuples == 300, result.error_message
        texts = [bytes(result.get_value(i, 0) or b"").decode() for i in range(result.ntuples)]
        oid = int(bytes(result.get_value(0, 1) or b"0"))
        ours = [pg_input(convert(oid, text), oid) for text in texts]
        rows = conn.execute(
            f"SELECT a::{type_name}::text, b::{type_name}::text FROM "
            "unnest(%s::text[], %s::text[]) AS t(a, b) "
            + (
                f"WHERE (a::{type_name} AT TIME ZONE 'UTC') <> (b::{type_name} AT TIME ZONE 'UTC')"
                if type_name == "timetz"
                else f"WHERE a::{type_name} IS DISTINCT FROM b::{type_name}"
            ),
            [ours, texts],
        ).fetchall()
        assert rows == []
