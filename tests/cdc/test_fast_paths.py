"""The capture's fast paths against the slow references they replace, on random input:
the same values, the same errors. Each fast path is only an optimisation.

1. the tuple reader (`_fast_tuple`, and the Insert shortcut in `decode`) decodes what the
   checked reader decodes, and raises what it raises on damaged bytes;
2. `converter(oid)` (chosen once per column, remembering the last value) is `convert(oid)`;
3. rows read through a relation's plan equal rows converted value by value;
4. `to_changes` of an Insert builds the Change `row_changes` + `Transaction.place` build,
   and `insert_changes` (straight from the bytes) the one `to_changes(decode(...))` builds,
   or declines (None, nothing placed) where that path raises or is not the common case;
5. `encode` (msgspec) writes JSON that reads back equal to json.dumps's, byte for byte
   when there is no float; `_json_row` skips `json_value` only where it changes nothing;
   the envelope's `sequence` is json.dumps's text; `envelope_json` is
   `encode(envelope())` byte for byte.
"""

from __future__ import annotations

import enum
import json
import math
import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from tests.cdc._pgencode import encode as pg_encode
from unbundled.cdc import _pgoutput as pgo
from unbundled.cdc._change import (
    UNAVAILABLE,
    Change,
    SourcePosition,
    _json_row,
    encode,
    json_value,
    slow_encode,
)
from unbundled.cdc._pgchanges import (
    Relations,
    Transaction,
    _row,
    insert_changes,
    row_changes,
    to_changes,
)
from unbundled.cdc._pgtypes import ARRAYS, SCALARS, convert, converter
from unbundled.errors import CorruptionError, Error

# --- 1. the tuple reader -------------------------------------------------------------

values = st.one_of(
    st.none(),
    st.just(UNAVAILABLE),
    st.text(max_size=20),
    st.binary(max_size=10).map(pgo.Binary),
)


def outcome(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A call's value, or its error's type and message (what a caller sees either way)."""
    try:
        return ("value", call(*args, **kwargs))
    except Error as exc:
        return ("error", type(exc).__name__, str(exc))


def checked_decode(data: bytes) -> Any:
    with mock.patch.object(pgo._Reader, "tuple_data", pgo._Reader.tuple_data_checked):
        return pgo.decode(data)


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    raw = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        choice = draw(st.integers(0, 2))
        if choice == 0 and raw:
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        elif choice == 1:
            del raw[draw(st.integers(0, len(raw))) :]
        else:
            raw += draw(st.binary(min_size=1, max_size=3))
    return bytes(raw)


@given(st.data(), st.lists(values, max_size=8).map(tuple), st.integers(0, 2**32 - 1))
def test_tuples_and_inserts_decode_as_the_checked_reader_decodes(
    data: st.DataObject, row: tuple[Any, ...], relation_id: int
) -> None:
    message = pg_encode(pgo.Insert(relation_id, row))
    assert pgo.decode(message) == pgo.Insert(relation_id, row)
    bad = data.draw(damaged(message))
    assert outcome(lambda: pgo.decode(bad)) == outcome(lambda: checked_decode(bad))
    update = pg_encode(pgo.Update(relation_id, row, row, "O"))
    bad = data.draw(damaged(update))
    assert outcome(lambda: pgo.decode(bad)) == outcome(lambda: checked_decode(bad))


@given(st.binary(max_size=40))
def test_any_bytes_as_a_tuple(raw: bytes) -> None:
    def fast() -> Any:
        reader = pgo._Reader(raw, "Insert")
        reader.pos = 0
        return reader.tuple_data(), reader.pos

    def checked() -> Any:
        reader = pgo._Reader(raw, "Insert")
        reader.pos = 0
        return reader.tuple_data_checked(), reader.pos

    assert outcome(fast) == outcome(checked)


# --- 2. converters -------------------------------------------------------------------

SAMPLES = [
    "t",
    "f",
    "0",
    "-12",
    "99999999999999999999",
    "1.5",
    "NaN",
    "Infinity",
    "-0.0",
    "123.4500",
    "\\x00ff",
    "2024-02-29",
    "0044-03-15 BC",
    "12:34:56.789",
    "12:34:56+05:30",
    "2024-02-29 23:59:59.123456",
    "2024-02-29 23:59:59.5+00",
    "2024-12-31 22:00:00-03:30",
    "1999-01-08 04:05:06+00 BC",
    "infinity",
    "-infinity",
    "1 year 2 mons -3 days +04:05:06.5",
    "00:00:00",
    "$1,234.56",
    "{1,2,NULL}",
    '{"a b","c\\"d"}',
    "{{1,2},{3,4}}",
    "[0:1]={7,8}",
    "{(1,2),(3,4)}",
    "{}",
    "",
    "2024-13-01",
    "25:00:00",
    "x",
]
OIDS = sorted({*SCALARS, *ARRAYS, 25, 1043, 99999, 70000})
texts = st.sampled_from(SAMPLES) | st.text(max_size=12)


@given(st.sampled_from(OIDS), st.lists(texts, min_size=1, max_size=6))
def test_converter_is_convert(oid: int, inputs: list[str]) -> None:
    names = {70000: "_mood", 99999: "mood"}
    convert_one = converter(oid, names)
    for text in [*inputs, *inputs]:  # repeats hit the remembered value
        fast = ("value", text) if convert_one is None else outcome(convert_one, text)
        assert fast == outcome(convert, oid, text, names), (oid, text)


# --- 3. and 4. rows and changes ------------------------------------------------------


def reference_row(
    relations: Relations, info: Any, row: tuple[Any, ...], identity_only: bool
) -> dict[str, Any]:
    """The row as the code before the plans read it: `convert` per value."""
    if len(row) != len(info.columns):
        raise CorruptionError("column count")
    out: dict[str, Any] = {}
    for column, value in zip(info.columns, row, strict=True):
        if identity_only and not column.key:
            continue
        if isinstance(value, str):
            out[column.name] = convert(column.type_oid, value, relations.type_names)
        elif isinstance(value, pgo.Binary):
            raise CorruptionError("binary")
        else:
            out[column.name] = value
    return out


@st.composite
def tables(draw: st.DrawFn) -> tuple[pgo.Relation, list[tuple[Any, ...]]]:
    oids = draw(
        st.lists(
            st.sampled_from([20, 23, 25, 1700, 1184, 1114, 1082, 1007, 16]), min_size=1, max_size=6
        )
    )
    columns = tuple(pgo.RelationColumn(f"c{i}", oid, -1, i == 0) for i, oid in enumerate(oids))
    good = {
        20: st.integers(-(2**63), 2**63 - 1).map(str),
        23: st.integers(-(2**31), 2**31 - 1).map(str),
        25: st.text(max_size=10),
        1700: st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: format(d, "f")),
        1184: st.sampled_from(["2024-02-29 23:59:59.5+00", "2024-12-31 22:00:00-03:30", "x"]),
        1114: st.sampled_from(["2024-02-29 23:59:59.123456", "infinity"]),
        1082: st.sampled_from(["2024-02-29", "0044-03-15 BC"]),
        1007: st.sampled_from(["{1,2,NULL}", "{}", "{{1},{2}}"]),
        16: st.sampled_from(["t", "f"]),
    }
    cells: list[st.SearchStrategy[Any]] = [
        st.one_of(good[oid], st.none(), st.just(UNAVAILABLE)) for oid in oids
    ]
    rows = draw(st.lists(st.tuples(*cells), min_size=1, max_size=5))
    return pgo.Relation(7, "s", "t", "d", columns), rows


@given(tables(), st.booleans())
def test_rows_through_the_plan_equal_value_by_value(
    table: tuple[pgo.Relation, list[tuple[Any, ...]]], identity_only: bool
) -> None:
    relation, rows = table
    relations = Relations()
    info = relations.apply(relation)
    for row in rows:
        fast = outcome(_row, relations.plan(info), row, identity_only=identity_only)
        slow = outcome(reference_row, relations, info, row, identity_only)
        assert fast[0] == slow[0] and (fast[0] == "error" or fast == slow)


@given(tables(), st.integers(1, 2**40), st.integers(0, 2**32 - 1))
def test_an_insert_becomes_the_change_row_changes_and_place_make(
    table: tuple[pgo.Relation, list[tuple[Any, ...]]], commit: int, xid: int
) -> None:
    relation, rows = table
    relations = Relations()
    relations.apply(relation)
    fast_tx = Transaction("db", commit, 700_000_000_000_000, xid)
    slow_tx = Transaction("db", commit, 700_000_000_000_000, xid)
    for lsn, row in enumerate(rows):
        insert = pgo.Insert(7, row)
        fast = outcome(to_changes, insert, relations, fast_tx, lsn=lsn)
        slow = outcome(row_changes, insert, relations, lsn=lsn)
        if slow[0] == "value":
            slow = ("value", [slow_tx.place(r) for r in slow[1]])
        assert fast == slow


def decoded_insert(payload: bytes, relations: Relations, tx: Transaction, lsn: int) -> list[Change]:
    """The general path the source takes for an 'I' message."""
    message = pgo.decode(payload)
    assert isinstance(message, pgo.Insert)
    return to_changes(message, relations, tx, lsn=lsn)


@given(st.data(), tables(), st.integers(1, 2**40))
def test_an_insert_read_from_its_bytes_is_the_decoded_one(
    data: st.DataObject, table: tuple[pgo.Relation, list[tuple[Any, ...]]], commit: int
) -> None:
    relation, rows = table
    relations = Relations()
    relations.apply(relation)
    fast_tx = Transaction("db", commit, 0, 9)
    slow_tx = Transaction("db", commit, 0, 9)
    for lsn, row in enumerate(rows):
        payload = pg_encode(pgo.Insert(7, row))
        if data.draw(st.booleans()):
            payload = data.draw(damaged(payload))
        if payload[:1] != b"I":
            continue  # the source dispatches on the tag: not an insert any more
        slow = outcome(decoded_insert, payload, relations, slow_tx, lsn)
        fast = insert_changes(payload, relations, fast_tx, lsn=lsn)
        if fast is None:
            assert slow[0] == "error"  # declined only what the general path refuses
        else:
            assert slow == ("value", fast)
        assert fast_tx.next_index == slow_tx.next_index


def test_insert_changes_declines_what_is_not_simple() -> None:
    relations = Relations()
    relations.apply(pgo.Relation(7, "s", "t", "d", (pgo.RelationColumn("a", 23, -1, True),)))
    tx = Transaction("db", 1, 0, 9)
    assert insert_changes(pg_encode(pgo.Insert(8, ("1",))), relations, tx) is None  # unknown
    assert insert_changes(pg_encode(pgo.Insert(7, ("x",))), relations, tx) is None  # bad int
    binary = pg_encode(pgo.Insert(7, (pgo.Binary(b"\x01"),)))
    assert insert_changes(binary, relations, tx) is None
    assert insert_changes(pg_encode(pgo.Insert(7, ("1", "2"))), relations, tx) is None
    assert tx.next_index == 0  # nothing placed
    (change,) = insert_changes(pg_encode(pgo.Insert(7, ("5",))), relations, tx) or []
    assert (change.after, change.key, change.position) == ({"a": 5}, {"a": 5}, SourcePosition(1, 0))


# --- 5. JSON --------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, list):
        return any(map(has_float, value))
    if isinstance(value, dict):
        return any(map(has_float, value.values()))
    return False


@given(json_values)
def test_encode_reads_back_as_json_dumps_writes(value: Any) -> None:
    fast, slow = encode(value), slow_encode(value)
    assert json.loads(fast) == json.loads(slow)
    if not has_float(value):
        assert fast == slow


def test_encode_hands_what_msgspec_refuses_to_json_dumps() -> None:
    assert encode({"n": 2**70, "s": "é"}) == slow_encode({"n": 2**70, "s": "é"})
    try:
        encode({"x": object()})
    except TypeError as exc:
        assert "not JSON serializable" in str(exc)  # json.dumps's error, as before
    else:
        raise AssertionError("an object JSON cannot hold was encoded")


class Colour(enum.IntEnum):
    RED = 1


cells = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=5),
    st.floats(),
    st.decimals(),
    st.binary(max_size=5),
    st.just(UNAVAILABLE),
    st.just(Colour.RED),
    st.lists(st.integers() | st.decimals(allow_nan=False) | st.none(), max_size=3),
)


@given(st.dictionaries(st.text(max_size=3), cells, max_size=6))
def test_json_row_is_json_value_of_each(row: dict[str, Any]) -> None:
    def same(a: Any, b: Any) -> bool:
        if isinstance(a, float) and math.isnan(a):
            return isinstance(b, float) and math.isnan(b)
        return type(a) is type(b) and a == b

    expected = {name: json_value(v) for name, v in row.items()}
    got = _json_row(row)
    assert got is not None and list(got) == list(expected)
    assert all(same(got[k], expected[k]) for k in expected)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**31 - 1))
def test_sequence_is_json_dumps_text(commit: int, index: int) -> None:
    change = Change("c", "postgresql", "db", "s", "t", SourcePosition(commit, index), 0)
    sequence = change.envelope("n", 0)["source"]["sequence"]
    assert sequence == json.dumps([str(commit), str(index)])


def test_random_rows_round_trip_through_the_envelope() -> None:
    rng = random.Random(5)
    for _ in range(200):
        after = {"a": rng.randint(-(2**40), 2**40), "b": Decimal(rng.randint(0, 10**6)) / 100}
        change = Change("c", "postgresql", "db", "s", "t", SourcePosition(1, 0), 0, after=after)
        body = json.loads(encode(change.envelope("n", 5)))
        assert body["after"] == {"a": after["a"], "b": format(after["b"], "f")}


@st.composite
def changes(draw: st.DrawFn) -> Change:
    row = st.none() | st.dictionaries(st.text(max_size=3), cells, max_size=4)
    op = draw(st.sampled_from(["c", "u", "d", "r", "t", "m"]))
    return Change(
        op,  # type: ignore[arg-type]
        draw(st.sampled_from(["postgresql", "sqlite"])),
        draw(st.text(max_size=5)),
        draw(st.text(max_size=5)),
        draw(st.text(max_size=5)),
        SourcePosition(draw(st.integers(0, 2**64)), draw(st.integers(0, 2**31))),
        draw(st.integers(0, 2**45)),
        key=draw(row),
        before=draw(row),
        after=draw(row),
        lsn=draw(st.none() | st.integers(0, 2**64)),
        tx_id=draw(st.none() | st.integers(0, 2**32)),
        snapshot=draw(st.sampled_from(["false", "true", "first", "last"])),
        relation_version=draw(st.integers(1, 50)),
        total_order=draw(st.integers(0, 10**6)),
        data_collection_order=draw(st.integers(0, 10**6)),
        message=draw(
            st.none() | st.fixed_dictionaries({"prefix": st.text(), "content": st.text()})
        ),
    )


@given(changes(), st.text(max_size=8), st.integers(0, 2**45))
def test_envelope_json_is_the_encoded_envelope(change: Change, name: str, now: int) -> None:
    assert change.envelope_json(name, now) == encode(change.envelope(name, now))
