"""pgoutput from the real PostgreSQL, decoded and turned into changes.

The slot is read with pg_logical_slot_peek_binary_changes, which returns exactly the
bytes the walsender would send (one message a row). Values are judged by the server
itself: each converted value, written back as input, must print as the column does.
"""

from __future__ import annotations

import base64
import os
from decimal import Decimal
from typing import Any

import pytest

from tests.cdc._oracle import same_as_column
from tests.cdc._replay import Replay
from tests.cdc.conftest import Capture
from unbundled.cdc._change import UNAVAILABLE, UNAVAILABLE_TEXT, Change, json_value
from unbundled.cdc._pgoutput import Insert, Relation, Type, Update

pytestmark = pytest.mark.postgres

# (column, type, values for rows 1, 2, 3): row 4 is all NULL.
TYPES: list[tuple[str, str, tuple[str, str, str]]] = [
    ("b", "bool", ("true", "false", "true")),
    ("i2", "int2", ("32767", "-32768", "0")),
    ("i4", "int4", ("2147483647", "-2147483648", "7")),
    ("i8", "int8", ("9223372036854775807", "-9223372036854775808", "0")),
    ("o", "oid", ("4294967295", "0", "42")),
    ("f4", "float4", ("3.14", "'NaN'", "'-Infinity'")),
    ("f8", "float8", ("2.718281828459045", "'Infinity'", "-1e-300")),
    ("num", "numeric", ("12345678901234567890.123456789", "'NaN'", "'Infinity'")),
    ("numn", "numeric", ("'-Infinity'", "1e-20", "-0.00")),
    ("nump", "numeric(30,9)", ("0.0000001", "-1.5", "0")),
    ("m", "money", ("1234567.89", "-0.01", "0")),
    ("t", "text", ("E'h\\u00e9llo \"world\"\\n\\ttab'", "''", "'NULL'")),
    ("vc", "varchar(20)", ("'a,b'", "''", "' x '")),
    ("c", "char(5)", ("'ab'", "''", "'abcde'")),
    ("nm", "name", ("'pg_class'", "''", "'x y'")),
    ("by", "bytea", ("'\\x00ff10'::bytea", "''::bytea", "'\\x5c22'::bytea")),
    ("d", "date", ("'2024-02-29'", "'0044-03-15 BC'", "'infinity'")),
    ("tm", "time", ("'23:59:59.999999'", "'24:00:00'", "'00:00:00'")),
    ("ttz", "timetz", ("'10:00:00.5+05:30'", "'00:30:00-01:00'", "'23:00:00+00'")),
    ("ts", "timestamp", ("'2024-01-02 03:04:05.123456'", "'-infinity'", "'10000-01-01'")),
    (
        "tstz",
        "timestamptz",
        ("'2024-01-02 03:04:05.1+02'", "'infinity'", "'1900-01-01 12:00:00+00'"),
    ),
    (
        "iv",
        "interval",
        ("'1 year 2 mons 3 days 04:05:06.789'", "'-1 days +02:00:00'", "'-00:00:00.5'"),
    ),
    (
        "u",
        "uuid",
        ("'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "gen_random_uuid()", "gen_random_uuid()"),
    ),
    ("j", "json", ('\'{"a": [1, 2.50, "x"]}\'', "'[]'", "'\"s\"'")),
    ("jb", "jsonb", ('\'{"a": [1, 2.50, "x"]}\'', "'[]'", "'null'")),
    ("ip", "inet", ("'192.168.0.1/24'", "'::1'", "'10.0.0.1'")),
    ("cid", "cidr", ("'10.0.0.0/8'", "'2001:db8::/32'", "'1.2.3.4/32'")),
    ("mac", "macaddr", ("'08:00:2b:01:02:03'", "'ff:ff:ff:ff:ff:ff'", "'00:00:00:00:00:00'")),
    ("bits", "bit(4)", ("B'1010'", "B'0000'", "B'1111'")),
    ("vb", "varbit", ("B'1'", "B''", "B'0101010101'")),
    ("x", "xml", ("'<a b=\"1\">t</a>'", "''", "'text'")),
    ("tsv", "tsvector", ("'a fat cat'", "''", "'''quoted'':1'")),
    ("pt", "point", ("'(1.5,-2)'", "'(0,0)'", "'(1e10,3)'")),
    ("bx", "box", ("'(1,1),(0,0)'", "'(2,2),(-1,-1)'", "'(0,0),(0,0)'")),
    ("rng", "int4range", ("'[1,10)'", "'empty'", "'(,5]'")),
    ("mood", "mood", ("'happy'", "'sad'", "'so-so'")),
    ("ia", "int[]", ("'{1,NULL,3}'", "'{}'", "'[0:1]={7,8}'")),
    ("ia2", "int[][]", ("'{{1,2},{3,4}}'", "'{{NULL}}'", "'{{{1},{2}},{{3},{4}}}'")),
    (
        "ta",
        "text[]",
        (
            "ARRAY['a,b', 'c\"d', 'NULL', NULL, '', ' x', E'back\\\\slash', '{}']",
            "'{}'",
            "ARRAY[E'\\u00e9', 'null']",
        ),
    ),
    ("na", "numeric[]", ("'{1.10,NaN,-Infinity}'", "'{}'", "'{12345678901234567890.5}'")),
    (
        "tsa",
        "timestamptz[]",
        ("'{\"2024-01-01 00:00:00.25+00\",infinity}'", "'{}'", "'{NULL}'"),
    ),
    ("ba", "bytea[]", ("ARRAY['\\x00ff'::bytea, ''::bytea]", "'{}'", "'{NULL}'")),
    ("ma", "mood[]", ("'{happy,sad}'", "'{}'", "'{so-so,NULL}'")),
    ("bxa", "box[]", ("ARRAY[box '(1,1),(0,0)', box '(3,3),(2,2)']", "'{}'", "'{}'")),
    ("ja", "jsonb[]", ("ARRAY['{\"a\": 1}'::jsonb, '[]']", "'{}'", "'{}'")),
    ("iva", "interval[]", ("ARRAY['1 day'::interval, '-2 mons']", "'{}'", "'{}'")),
    ("ba1", "bool[]", ("'{t,f,NULL}'", "'{}'", "'{}'")),
]

# Python types each family must arrive as (beside None).
EXPECTED_TYPES: dict[str, type | tuple[type, ...]] = {
    "b": bool, "i2": int, "i4": int, "i8": int, "o": int, "f4": float, "f8": float,
    "num": Decimal, "numn": Decimal, "nump": Decimal, "m": Decimal, "by": bytes,
    "ia": list, "ia2": list, "ta": list, "na": list, "tsa": list, "ba": list,
    "ma": list, "bxa": list, "ja": list, "iva": list, "ba1": list,
}  # fmt: skip


def _create_type_table(conn: Any) -> None:
    conn.execute("CREATE TYPE mood AS ENUM ('happy', 'sad', 'so-so')")
    columns = ", ".join(f'"{name}" {sql_type}' for name, sql_type, _ in TYPES)
    conn.execute(f"CREATE TABLE every_type (id int PRIMARY KEY, {columns})")


def _insert_rows(conn: Any) -> None:
    names = ", ".join(f'"{name}"' for name, _, _ in TYPES)
    for row in range(3):
        values = ", ".join(f"({values[row]})::{sql_type}" for _, sql_type, values in TYPES)
        conn.execute(f"INSERT INTO every_type (id, {names}) VALUES ({row + 1}, {values})")
    conn.execute("INSERT INTO every_type (id) VALUES (4)")


@pytest.mark.parametrize(
    ("timezone", "bytea_output"),
    [("UTC", "hex"), ("Europe/Amsterdam", "escape"), ("America/St_Johns", "hex")],
)
def test_every_type_family_decodes_to_what_the_server_holds(
    capture: Capture, timezone: str, bytea_output: str
) -> None:
    conn = capture.conn
    _create_type_table(conn)
    _insert_rows(conn)
    # The decoding session's settings shape the text pgoutput sends: odd zones (with
    # 1900's local-mean-time offset in seconds for Amsterdam) and escape-format bytea.
    conn.execute(f"SET TimeZone = '{timezone}'")
    conn.execute(f"SET bytea_output = '{bytea_output}'")
    rows = capture.peek()
    replay = Replay("test")
    changes = replay.feed(rows)
    assert [c.op for c in changes] == ["c"] * 4
    assert any(isinstance(m, Type) and m.name == "mood" for m in replay.messages)
    assert any(isinstance(m, Type) and m.name == "_mood" for m in replay.messages)
    inserts = [m for m in replay.messages if isinstance(m, Insert)]
    names = ["id", *(name for name, _, _ in TYPES)]
    info = replay.relations[inserts[0].relation_id]
    for insert, change in zip(inserts, changes, strict=True):
        assert change.after is not None
        row_id = change.after["id"]
        assert change.key == {"id": row_id}
        # The raw text is exactly the column's text output in this session.
        assert insert.new == _output_texts(conn, names, row_id)
        for column in info.columns[1:]:
            value = change.after[column.name]
            if row_id == 4:
                assert value is None
                continue
            assert value is not None and value is not UNAVAILABLE, column.name
            expected = EXPECTED_TYPES.get(column.name, str)
            assert isinstance(value, expected), (column.name, value)
            if (column.name, row_id) == ("ia", 3):
                continue  # '[0:1]={7,8}': a list has no lower bound (checked below)
            assert same_as_column(
                conn, "every_type", column.name, row_id, value, column.type_oid
            ), (
                column.name,
                value,
            )
        json_value(change.after)  # every value is JSON-ready
    first, second, third = (c.after for c in changes[:3])
    assert first is not None and second is not None and third is not None
    assert first["num"] == Decimal("12345678901234567890.123456789")
    assert json_value(first["num"]) == "12345678901234567890.123456789"
    assert json_value(second["num"]) == "NaN" and json_value(third["num"]) == "Infinity"
    assert json_value(first["numn"]) == "-Infinity"
    assert json_value(first["nump"]) == "0.000000100"
    assert second["f4"] != second["f4"] and json_value(third["f4"]) == "-Infinity"
    assert second["d"] == "-0043-03-15" and third["d"] == "infinity"
    assert third["ts"] == "+10000-01-01T00:00:00" and second["ts"] == "-infinity"
    assert first["tstz"] == "2024-01-02T01:04:05.1Z"
    assert third["tstz"] == "1900-01-01T12:00:00Z"
    assert first["ttz"] == "04:30:00.5Z" and second["ttz"] == "01:30:00Z"
    assert first["iv"] == "P1Y2M3DT4H5M6.789S" and second["iv"] == "P0Y0M-1DT2H0M0S"
    assert third["iv"] == "P0Y0M0DT0H0M-0.5S"
    assert first["ia2"] == [[1, 2], [3, 4]] and third["ia"] == [7, 8]
    assert first["ta"] == ["a,b", 'c"d', "NULL", None, "", " x", "back\\slash", "{}"]
    assert first["ma"] == ["happy", "sad"] and third["ma"] == ["so-so", None]
    assert first["by"] == b"\x00\xff\x10" and first["ba"] == [b"\x00\xff", b""]
    assert first["j"] == '{"a": [1, 2.50, "x"]}'  # json keeps its text, as Debezium
    assert first["c"] == "ab   "


def _output_texts(conn: Any, names: list[str], row_id: int) -> tuple[str | None, ...]:
    """Each column as its type's output function prints it in this session (what a
    text-format query result carries; `::text` differs for bool)."""
    selected = ", ".join(f'"{name}"' for name in names)
    result = conn.pgconn.exec_params(
        f"SELECT {selected} FROM every_type WHERE id = $1".encode(), [str(row_id).encode()]
    )
    return tuple(
        None if (raw := result.get_value(0, i)) is None else bytes(raw).decode()
        for i in range(result.nfields)
    )


def _toasted_table(capture: Capture, full: bool) -> tuple[Any, str]:
    conn = capture.conn
    conn.execute("CREATE TABLE doc (id int PRIMARY KEY, body text, n int)")
    if full:
        conn.execute("ALTER TABLE doc REPLICA IDENTITY FULL")
    big = base64.b64encode(os.urandom(6000)).decode()  # random: compression cannot save it
    conn.execute("INSERT INTO doc VALUES (1, %s, 0)", [big])
    toast = conn.execute(
        "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'doc'::regclass"
    ).fetchone()
    assert toast is not None
    count = conn.execute(f"SELECT count(*) FROM {toast[0]}").fetchone()
    assert count is not None and int(str(count[0])) > 0, "the body was meant to be TOASTed"
    conn.execute("UPDATE doc SET n = 1 WHERE id = 1")
    conn.execute("DELETE FROM doc WHERE id = 1")
    return conn, big


def test_unchanged_toast_is_unavailable_without_replica_identity_full(capture: Capture) -> None:
    _, big = _toasted_table(capture, full=False)
    replay = Replay("test")
    insert, update, delete = replay.feed(capture.peek())
    assert insert.after == {"id": 1, "body": big, "n": 0}
    update_message = next(m for m in replay.messages if isinstance(m, Update))
    assert update_message.new[1] is UNAVAILABLE and update_message.old is None
    assert update.before is None
    assert update.after == {"id": 1, "body": UNAVAILABLE, "n": 1}
    assert update.after["body"] is not None
    assert update.envelope("x", 0)["after"]["body"] == UNAVAILABLE_TEXT
    assert update.key == {"id": 1}
    assert delete.op == "d" and delete.before == {"id": 1} and delete.after is None
    assert delete.key == {"id": 1}


def test_unchanged_toast_is_filled_from_the_old_row_with_replica_identity_full(
    capture: Capture,
) -> None:
    _, big = _toasted_table(capture, full=True)
    replay = Replay("test")
    replay.relations.set_primary_key(capture.schema, "doc", ["id"])
    insert, update, delete = replay.feed(capture.peek())
    update_message = next(m for m in replay.messages if isinstance(m, Update))
    assert update_message.new[1] is UNAVAILABLE and update_message.old_kind == "O"
    assert update.before == {"id": 1, "body": big, "n": 0}
    assert update.after == {"id": 1, "body": big, "n": 1}
    assert delete.before == {"id": 1, "body": big, "n": 1}
    assert [c.key for c in (insert, update, delete)] == [{"id": 1}] * 3
    # Under FULL every column is flagged: without the catalog's key there is none.
    unkeyed = Replay("test").feed(capture.peek())
    assert [c.key for c in unkeyed] == [None, None, None]


def test_an_update_of_the_key_carries_the_old_key(capture: Capture) -> None:
    conn = capture.conn
    conn.execute("CREATE TABLE k (id int PRIMARY KEY, v text)")
    conn.execute("INSERT INTO k VALUES (1, 'a')")
    conn.execute("UPDATE k SET id = 2 WHERE id = 1")
    _, update = Replay("test").feed(capture.peek())
    assert update.before == {"id": 1}
    assert update.after == {"id": 2, "v": "a"} and update.key == {"id": 2}


def test_truncate_gives_one_change_per_table(capture: Capture) -> None:
    conn = capture.conn
    conn.execute("CREATE TABLE a (id serial PRIMARY KEY)")
    conn.execute("CREATE TABLE b (id int PRIMARY KEY, a int REFERENCES a)")
    conn.execute("INSERT INTO a DEFAULT VALUES")
    conn.execute("TRUNCATE a, b RESTART IDENTITY")
    replay = Replay("test")
    changes = replay.feed(capture.peek())
    truncates = [c for c in changes if c.op == "t"]
    assert sorted(c.table for c in truncates) == ["a", "b"]
    assert len({c.position for c in truncates}) == 2
    assert {c.position.commit for c in truncates} == {truncates[0].position.commit}
    assert all(c.key is None and c.before is None and c.after is None for c in truncates)
    assert [c.total_order for c in truncates] == [1, 2]


def test_rows_sharing_one_lsn_keep_distinct_positions(capture: Capture) -> None:
    conn = capture.conn
    conn.execute("CREATE TABLE many (id int PRIMARY KEY, v text)")
    conn.execute("INSERT INTO many SELECT g, 'v' || g FROM generate_series(1, 300) g")
    with conn.cursor().copy("COPY many (id, v) FROM STDIN") as copy:
        for i in range(301, 1301):
            copy.write_row((i, f"c{i}"))
    changes = Replay("test").feed(capture.peek())
    assert [c.after["id"] for c in changes if c.after] == list(range(1, 1301))
    for rows in (changes[:300], changes[300:]):
        assert len({c.position.commit for c in rows}) == 1
        assert [c.position.index for c in rows] == list(range(len(rows)))
        assert [c.total_order for c in rows] == list(range(1, len(rows) + 1))
    copied = changes[300:]
    # COPY writes many rows in one WAL record: they share an LSN, not a position.
    assert len({c.lsn for c in copied}) < len(copied)
    assert len({c.position for c in changes}) == 1300


def test_schema_changes_mid_stream_bump_the_relation_version(capture: Capture) -> None:
    conn = capture.conn
    conn.execute("CREATE TABLE s (id int PRIMARY KEY, a int)")
    conn.execute("INSERT INTO s VALUES (1, 10)")
    conn.execute("INSERT INTO s VALUES (2, 20)")
    conn.execute("ALTER TABLE s ADD COLUMN b text DEFAULT 'x'")
    conn.execute("INSERT INTO s VALUES (3, 30, 'y')")
    conn.execute("ALTER TABLE s DROP COLUMN a")
    conn.execute("INSERT INTO s VALUES (4, 'z')")
    conn.execute("ALTER TABLE s ALTER COLUMN id TYPE bigint")
    conn.execute("INSERT INTO s VALUES (5, 'w')")
    conn.execute("UPDATE s SET b = 'v' WHERE id = 5")
    replay = Replay("test")
    changes = replay.feed(capture.peek())
    assert [(c.relation_version, c.after) for c in changes] == [
        (1, {"id": 1, "a": 10}),
        (1, {"id": 2, "a": 20}),
        (2, {"id": 3, "a": 30, "b": "y"}),
        (3, {"id": 4, "b": "z"}),
        (4, {"id": 5, "b": "w"}),
        (4, {"id": 5, "b": "v"}),
    ]
    relations = [m for m in replay.messages if isinstance(m, Relation)]
    assert relations[-1].columns[0].type_oid == 20  # int8


def test_logical_messages_become_message_changes(capture: Capture) -> None:
    conn = capture.conn
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    conn.execute("SELECT pg_logical_emit_message(false, 'heartbeat', '\\x00ff'::bytea)")
    with conn.transaction():
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("SELECT pg_logical_emit_message(true, 'outbox', 'hello')")
    changes = Replay("test").feed(capture.peek())
    heartbeat, insert, outbox = changes
    assert heartbeat.op == "m" and heartbeat.tx_id is None
    assert heartbeat.message == {
        "prefix": "heartbeat",
        "content": base64.b64encode(b"\x00\xff").decode(),
    }
    assert outbox.message == {"prefix": "outbox", "content": base64.b64encode(b"hello").decode()}
    assert outbox.tx_id == insert.tx_id and outbox.position.commit == insert.position.commit
    assert outbox.position.index == 1


def _comparable(change: Change) -> tuple[Any, ...]:
    return (change.op, change.position, change.key, change.before, change.after, change.tx_id)


def test_streamed_transactions_give_the_changes_the_whole_ones_give(capture: Capture) -> None:
    """Protocol 2 with streaming: the SQL functions stream too, once a transaction's
    changes pass logical_decoding_work_mem (64 kB here, the minimum) in the decoding
    session. Aborted transactions and rolled-back subtransactions must vanish."""
    conn = capture.conn
    conn.execute("CREATE TABLE big (id int PRIMARY KEY, pad text)")
    writer = capture.writer()
    try:
        with writer.transaction():
            writer.execute(
                "INSERT INTO big SELECT g, repeat('p', 50) FROM generate_series(1, 2000) g"
            )
            writer.execute("SAVEPOINT sp")
            writer.execute(
                "INSERT INTO big SELECT g, repeat('q', 50) FROM generate_series(2001, 4000) g"
            )
            writer.execute("ROLLBACK TO SAVEPOINT sp")
            writer.execute("UPDATE big SET pad = 'u' WHERE id <= 1500")
            writer.execute("SELECT pg_logical_emit_message(true, 'in-stream', 'm')")
        with pytest.raises(RuntimeError), writer.transaction():
            writer.execute("INSERT INTO big SELECT g, 'x' FROM generate_series(5001, 8000) g")
            raise RuntimeError("roll back a streamed transaction")
        writer.execute("INSERT INTO big VALUES (9000, 'after')")
    finally:
        writer.close()
    whole = Replay("test").feed(capture.peek(1))
    conn.execute("SET logical_decoding_work_mem = '64kB'")
    streamed = Replay("test", protocol=2)
    streamed.feed(capture.peek(2, streaming=True))
    kinds = {type(m).__name__ for m in streamed.messages}
    assert {"StreamStart", "StreamStop", "StreamCommit", "StreamAbort"} <= kinds
    assert any(a.subxid != a.xid for a in streamed.stream_aborts), "no subtransaction abort"
    assert any(a.subxid == a.xid for a in streamed.stream_aborts), "no transaction abort"
    assert len(whole) == 2000 + 1500 + 1 + 1
    assert [_comparable(c) for c in streamed.changes] == [_comparable(c) for c in whole]
