"""The scale-out benchmark at its smallest, on SQLite only (the other backends and
the raw drivers need bench/.venv and servers): the spawned producers append every
record, the consumer group reads every one back, and the table marks a NATS line
below its floor. No speed is asserted."""

from __future__ import annotations

from pathlib import Path

from bench import scaleout_bench as sb


def test_sqlite_append_and_consume_every_record(tmp_path: Path) -> None:
    target = sb.Target("SQLite", sb._sqlite_url(tmp_path))
    # 2 processes x 64 tasks x 1 record: append_and_consume checks the topic holds
    # all 128 and that the group read all 128, or raises.
    append, consume = sb.append_and_consume(target, 2, 128)
    assert append > 0 and consume > 0
    assert not list(tmp_path.glob("scale-*.db")), "the store is destroyed afterwards"


def test_rows_judge_the_nats_floor() -> None:
    lines = [
        sb.Line("NATS", "append", 4, [700.0]),
        sb.Line("NATS", "raw nats-py publish", 4, [1_000.0]),
        sb.Line("PostgreSQL", "append", 4, [300.0]),
        sb.Line("PostgreSQL", "raw psycopg insert+commit", 4, [100.0]),
    ]
    table = {(cells[0], cells[1]): (cells, below) for cells, below in sb.rows(lines)}
    nats, below = table[("NATS", "append")]
    assert nats[5] == "0.70x" and nats[7] == "BELOW FLOOR" and below
    pg, below = table[("PostgreSQL", "append")]
    assert pg[5] == "3.00x" and pg[7] == "context" and not below
    assert table[("NATS", "raw nats-py publish")][0][7] == "baseline"
