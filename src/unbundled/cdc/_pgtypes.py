"""PostgreSQL text-format values -> Python values ready for Debezium's JSON, by type OID.

pgoutput sends every column as its type's text output, formatted under the sending
session's settings. We read them as PostgreSQL prints them under DateStyle=ISO,
IntervalStyle=postgres (or iso_8601), any bytea_output, and a C or en_US
lc_monetary: the replication connection sets those (a value that does not parse is
a CorruptionError naming its type, never a guess). What each type becomes:

- bool, int2/4/8, oid: bool / int. float4/8: float (NaN, +-Infinity kept; JSON writes
  them as strings). numeric and money: Decimal, exact, NaN and +-Infinity kept
  (`json_value` writes a string, Debezium's decimal.handling.mode=string). A money
  text in a locale we do not read stays the text.
- bytea: bytes (base64 in JSON, Debezium's binary.handling.mode=base64).
- date, time, timestamp: ISO-8601 text; timestamptz and timetz: ISO-8601 in UTC with
  `Z` (Debezium's ZonedTimestamp/ZonedTime). Fractions keep every digit PostgreSQL
  printed (microseconds). infinity/-infinity stay those words. BC dates use ISO's
  astronomical years (1 BC = 0000, 44 BC = -0043); years past 9999 get a `+`.
- interval: ISO-8601 duration `P<y>Y<m>M<d>DT<h>H<m>M<s>S` with PostgreSQL's signed
  fields kept apart (Debezium's interval.handling.mode=string).
- json/jsonb: the JSON text (as Debezium's io.debezium.data.Json). uuid, text,
  varchar, char, name, xml, inet, cidr, macaddr, bit, varbit, tsvector, geometric and
  range types, enums, domains and every unknown type: the text.
- Arrays of all of these: nested lists (multi-dimensional arrays nest), NULL -> None;
  a lower bound other than 1 ('[0:1]={7,8}') is dropped, as in Debezium's lists.
  Arrays of user types (their oids are not fixed) are recognised by name: the Type
  message pgoutput sends for them names PostgreSQL's array type `_<element>`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any, Final

from unbundled.errors import CorruptionError

Converter = Callable[[str], Any]

BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
JSON, XML, FLOAT4, FLOAT8, MONEY, BPCHAR, VARCHAR = 114, 142, 700, 701, 790, 1042, 1043
DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, TIMETZ = 1082, 1083, 1114, 1184, 1186, 1266
NUMERIC, UUID, JSONB = 1700, 2950, 3802


class BadValue(CorruptionError):
    """A text value that does not parse as its column's type claims."""


def _bad(type_name: str, text: str, why: str = "") -> BadValue:
    shown = text if len(text) <= 80 else text[:77] + "..."
    reason = f": {why}" if why else ""
    return BadValue(
        f"a {type_name} value {shown!r} does not parse{reason}", type_name=type_name, value=shown
    )


def _bool(text: str) -> bool:
    if text == "t":
        return True
    if text == "f":
        return False
    raise _bad("bool", text)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _bad("integer", text) from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _bad("float", text) from None


def _numeric(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise _bad("numeric", text) from None
    if value.is_snan():
        raise _bad("numeric", text)
    return value


_MONEY = re.compile(r"(-?)\$?([0-9][0-9,]*)(\.[0-9]+)?")


def _money(text: str) -> Decimal | str:
    # money's text is lc_monetary's: under C/en_US it is [-]$1,234.56. In another
    # locale we keep the text rather than guess at separators.
    match = _MONEY.fullmatch(text)
    if match is None:
        return text
    sign, whole, fraction = match.groups()
    return Decimal(sign + whole.replace(",", "") + (fraction or ""))


def _bytea(text: str) -> bytes:
    if text.startswith("\\x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            raise _bad("bytea", text) from None
    return _bytea_escape(text)


def _bytea_escape(text: str) -> bytes:
    # bytea_output=escape: printable ASCII as is, '\\' for a backslash, '\ooo' octal.
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            if ord(char) > 0x7F:
                raise _bad("bytea", text, "non-ASCII in escape format")
            out.append(ord(char))
            i += 1
        elif text[i + 1 : i + 2] == "\\":
            out.append(0x5C)
            i += 2
        else:
            digits = text[i + 1 : i + 4]
            if len(digits) != 3 or any(d not in "01234567" for d in digits):
                raise _bad("bytea", text, f"bad escape at {i}")
            value = int(digits, 8)
            if value > 0xFF:
                raise _bad("bytea", text, f"bad escape at {i}")
            out.append(value)
            i += 4
    return bytes(out)


# --- dates and times ------------------------------------------------------------

_DATE = r"(\d{4,})-(\d\d)-(\d\d)"
_TIME = r"(\d\d):(\d\d):(\d\d)(\.\d{1,6})?"
_OFFSET = r"([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?"
_DATE_RE = re.compile(_DATE + r"( BC)?")
_TIMESTAMP_RE = re.compile(_DATE + " " + _TIME + r"( BC)?")
_TIMESTAMPTZ_RE = re.compile(_DATE + " " + _TIME + _OFFSET + r"( BC)?")
_TIME_RE = re.compile(_TIME)
_TIMETZ_RE = re.compile(_TIME + _OFFSET)
_INFINITE: Final = frozenset({"infinity", "-infinity"})


def _iso_year(year: int, bc: str | None) -> str:
    if bc:  # 1 BC is ISO's year 0000, 2 BC is -0001
        year = 1 - year
    if year < 0:
        return f"-{-year:04d}"
    return f"+{year}" if year > 9999 else f"{year:04d}"


def _check(type_name: str, text: str, month: str, day: str, clock: tuple[str, ...] = ()) -> None:
    # The regexes give the shape; the ranges catch damage that kept it.
    if clock:
        hour, minute, second = int(clock[0]), int(clock[1]), int(clock[2])
    else:
        hour = minute = second = 0
    if not (1 <= int(month) <= 12 and 1 <= int(day) <= 31 and hour <= 24):
        raise _bad(type_name, text, "field out of range")
    if minute > 59 or second > 60:
        raise _bad(type_name, text, "field out of range")


def _date(text: str) -> str:
    if text in _INFINITE:
        return text
    match = _DATE_RE.fullmatch(text)
    if match is None:
        raise _bad("date", text, "expected DateStyle ISO")
    year, month, day, bc = match.groups()
    _check("date", text, month, day)
    return f"{_iso_year(int(year), bc)}-{month}-{day}"


def _time(text: str) -> str:
    if _TIME_RE.fullmatch(text) is None:
        raise _bad("time", text)
    return text


def _timestamp(text: str) -> str:
    if text in _INFINITE:
        return text
    match = _TIMESTAMP_RE.fullmatch(text)
    if match is None:
        raise _bad("timestamp", text, "expected DateStyle ISO")
    year, month, day, hour, minute, second, fraction, bc = match.groups()
    _check("timestamp", text, month, day, (hour, minute, second))
    return f"{_iso_year(int(year), bc)}-{month}-{day}T{hour}:{minute}:{second}{fraction or ''}"


def _offset_seconds(sign: str, hours: str, minutes: str | None, seconds: str | None) -> int:
    total = int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0)
    return -total if sign == "-" else total


def _timestamptz(text: str) -> str:
    """ISO-8601 in UTC, as Debezium's ZonedTimestamp; the printed fraction is kept."""
    if text in _INFINITE:
        return text
    match = _TIMESTAMPTZ_RE.fullmatch(text)
    if match is None:
        raise _bad("timestamptz", text, "expected DateStyle ISO")
    year, month, day, hour, minute, second, fraction, *offset, bc = match.groups()
    _check("timestamptz", text, month, day, (hour, minute, second))
    shift = _offset_seconds(*offset)
    fraction = fraction or ""
    if shift and not bc and 1 <= int(year) <= 9999:
        try:
            local = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
            utc = local - timedelta(seconds=shift)
        except (ValueError, OverflowError):
            raise _bad("timestamptz", text) from None
        if 1 <= utc.year <= 9999:
            return (
                f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
                f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}{fraction}Z"
            )
    stamp = f"{_iso_year(int(year), bc)}-{month}-{day}T{hour}:{minute}:{second}{fraction}"
    if not shift:
        return stamp + "Z"
    # Out of datetime's range (BC, past 9999): keep the zone offset, still ISO-8601.
    return stamp + _offset_text(shift)


def _offset_text(shift: int) -> str:
    sign = "-" if shift < 0 else "+"
    hours, rest = divmod(abs(shift), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{sign}{hours:02d}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")


def _timetz(text: str) -> str:
    """The time in UTC with `Z`, as Debezium's ZonedTime (wraps around midnight)."""
    match = _TIMETZ_RE.fullmatch(text)
    if match is None:
        raise _bad("timetz", text)
    hour, minute, second, fraction, *offset = match.groups()
    local = int(hour) * 3600 + int(minute) * 60 + int(second)
    utc = (local - _offset_seconds(*offset)) % 86_400
    hours, rest = divmod(utc, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}{fraction or ''}Z"


_INTERVAL_UNITS: Final = {
    "year": 0,
    "years": 0,
    "mon": 1,
    "mons": 1,
    "day": 2,
    "days": 2,
}
_INTERVAL_TIME = re.compile(r"([+-])?(\d+):(\d\d):(\d\d)(\.\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


def _interval(text: str) -> str:
    """IntervalStyle postgres ('1 year 2 mons -3 days +04:05:06.5') -> ISO-8601 duration.

    iso_8601 output is passed through; PostgreSQL 17's infinities are kept as words.
    """
    if text.startswith("P") or text in _INFINITE:
        return text
    fields = [0, 0, 0]
    seen = [False, False, False]
    words = text.split(" ")
    clock = _INTERVAL_TIME.fullmatch(words[-1]) if words else None
    if clock is not None:
        words.pop()
    if len(words) % 2 or (not words and clock is None):
        raise _bad("interval", text, "expected IntervalStyle postgres")
    for number, unit in zip(words[::2], words[1::2], strict=True):
        slot = _INTERVAL_UNITS.get(unit)
        if slot is None or seen[slot] or _INTEGER.fullmatch(number) is None:
            raise _bad("interval", text, "expected IntervalStyle postgres")
        fields[slot] = int(number)
        seen[slot] = True
    hours, minutes, seconds = "0", "0", "0"
    if clock is not None:
        sign, hour, minute, second, fraction = clock.groups()
        negative = sign == "-"
        hours = _signed(str(int(hour)), negative)
        minutes = _signed(str(int(minute)), negative)
        seconds = _signed(str(int(second)) + (fraction or ""), negative)
    years, months, days = fields
    return f"P{years}Y{months}M{days}DT{hours}H{minutes}M{seconds}S"


def _signed(number: str, negative: bool) -> str:
    if not negative or number.strip("0.") == "":
        return number
    return "-" + number


def _text(text: str) -> str:
    return text


SCALARS: Final[Mapping[int, Converter]] = {
    BOOL: _bool,
    BYTEA: _bytea,
    INT2: _int,
    INT4: _int,
    INT8: _int,
    OID: _int,
    FLOAT4: _float,
    FLOAT8: _float,
    NUMERIC: _numeric,
    MONEY: _money,
    DATE: _date,
    TIME: _time,
    TIMETZ: _timetz,
    TIMESTAMP: _timestamp,
    TIMESTAMPTZ: _timestamptz,
    INTERVAL: _interval,
}

# Array type oid -> element type oid, for the built-in types (pg_type.typarray).
ARRAYS: Final[Mapping[int, int]] = {
    1000: BOOL, 1001: BYTEA, 1002: CHAR, 1003: NAME, 1005: INT2, 1007: INT4, 1009: TEXT,
    1028: OID, 1016: INT8, 1021: FLOAT4, 1022: FLOAT8, 791: MONEY, 1014: BPCHAR,
    1015: VARCHAR, 1182: DATE, 1183: TIME, 1270: TIMETZ, 1115: TIMESTAMP,
    1185: TIMESTAMPTZ, 1187: INTERVAL, 1231: NUMERIC, 2951: UUID, 199: JSON, 3807: JSONB,
    143: XML, 1041: 869, 651: 650, 1040: 829, 775: 774, 1561: 1560, 1563: 1562,
    3643: 3614, 3645: 3615, 1017: 600, 1018: 601, 1019: 602, 1020: 603, 1027: 604,
    629: 628, 719: 718, 1006: 22, 1008: 24, 1010: 27, 1011: 28, 1012: 29, 1013: 30,
    270: 5069, 3221: 3220, 4073: 4072, 3905: 3904, 3907: 3906, 3909: 3908, 3911: 3910,
    3913: 3912, 3927: 3926, 2211: 2206, 2949: 2970,
}  # fmt: skip
_BOX, _BOX_ARRAY = 603, 1020  # box is the one built-in type whose arrays use ';'


def convert(type_oid: int, text: str, type_names: Mapping[int, str] | None = None) -> Any:
    """The JSON-ready Python value of one column given as PostgreSQL text.

    `type_names` maps the oids of user types (enums, domains, their arrays) to the name
    a Type message gave them; a name starting with `_` is read as an array of text.
    """
    scalar = SCALARS.get(type_oid)
    if scalar is not None:
        return scalar(text)
    element = ARRAYS.get(type_oid)
    if element is not None:
        delimiter = ";" if type_oid == _BOX_ARRAY else ","
        return parse_array(text, SCALARS.get(element, _text), delimiter)
    if type_names is not None and type_names.get(type_oid, "").startswith("_"):
        return parse_array(text, _text, ",")
    return text


def converter(type_oid: int, type_names: Mapping[int, str] | None = None) -> Converter | None:
    """What `convert` does for this type, chosen once: a function of the text, or None
    where the value is the text itself. For callers that convert many values of a column."""
    scalar = SCALARS.get(type_oid)
    if scalar is not None:
        if scalar is _text:
            return None
        return _remember_last(scalar) if type_oid in _PARSED_TIMES else scalar
    element = ARRAYS.get(type_oid)
    if element is not None:
        return partial(
            parse_array,
            element=SCALARS.get(element, _text),
            delimiter=";" if type_oid == _BOX_ARRAY else ",",
        )
    if type_names is not None and type_names.get(type_oid, "").startswith("_"):
        return partial(parse_array, element=_text, delimiter=",")
    return None


# Types whose parse costs microseconds (a regex and a datetime) and whose values often
# repeat row after row (now() in every row of a transaction, a shared date).
_PARSED_TIMES: Final = frozenset({DATE, TIME, TIMETZ, TIMESTAMP, TIMESTAMPTZ, INTERVAL})


def _remember_last(convert: Converter) -> Converter:
    """`convert`, answering a repeat of the previous text from memory (the results are
    immutable str, so sharing one is safe; an error is never remembered)."""
    last_text: str | None = None
    last_value: Any = None

    def remembered(text: str) -> Any:
        nonlocal last_text, last_value
        if text == last_text:
            return last_value
        value = convert(text)
        last_text, last_value = text, value
        return value

    return remembered


# --- arrays -------------------------------------------------------------------------


def parse_array(text: str, element: Converter, delimiter: str = ",") -> list[Any]:
    """PostgreSQL's array text ('{1,NULL,"a \\"b\\""}', '{{1,2},{3,4}}', '[0:1]={7,8}')
    as nested lists, each element converted by `element`, NULL as None."""
    start = 0
    if text.startswith("["):  # lower bounds other than 1: '[0:1][1:2]={...}'
        start = text.find("=") + 1
        if start == 0:
            raise _bad("array", text, "dimension decoration without '='")
    parser = _ArrayParser(text, element, delimiter)
    value = parser.parse(start)
    if parser.pos != len(text):
        raise _bad("array", text, f"unexpected text at {parser.pos}")
    return value


class _ArrayParser:
    __slots__ = ("delimiter", "element", "pos", "text")

    def __init__(self, text: str, element: Converter, delimiter: str) -> None:
        self.text = text
        self.element = element
        self.delimiter = delimiter
        self.pos = 0

    def fail(self, why: str) -> BadValue:
        return _bad("array", self.text, f"{why} at {self.pos}")

    def parse(self, start: int) -> list[Any]:
        self.pos = start
        return self._list(depth=0)

    def _list(self, depth: int) -> list[Any]:
        if depth > 6:  # PostgreSQL's MAXDIM: deeper is not an array it printed
            raise self.fail("more than 6 dimensions")
        if self.text[self.pos : self.pos + 1] != "{":
            raise self.fail("expected '{'")
        self.pos += 1
        items: list[Any] = []
        if self.text[self.pos : self.pos + 1] == "}":
            self.pos += 1
            return items
        while True:
            items.append(self._item(depth))
            char = self.text[self.pos : self.pos + 1]
            self.pos += 1
            if char == "}":
                return items
            if char != self.delimiter:
                raise self.fail(f"expected {self.delimiter!r} or '}}'")

    def _item(self, depth: int) -> Any:
        char = self.text[self.pos : self.pos + 1]
        if char == "{":
            return self._list(depth + 1)
        if char == '"':
            return self.element(self._quoted())
        end = self.pos
        while end < len(self.text) and self.text[end] not in (self.delimiter, "}", "{", '"'):
            end += 1
        raw = self.text[self.pos : end]
        if not raw:
            raise self.fail("empty element")
        self.pos = end
        if raw.upper() == "NULL":
            return None
        return self.element(raw)

    def _quoted(self) -> str:
        out: list[str] = []
        i = self.pos + 1
        text = self.text
        while i < len(text):
            char = text[i]
            if char == '"':
                self.pos = i + 1
                return "".join(out)
            if char == "\\":
                i += 1
                if i == len(text):
                    break
                char = text[i]
            out.append(char)
            i += 1
        raise self.fail("unterminated quoted element")
