"""A non-transactional logical message and the transaction whose commit record follows
it in the WAL: pgoutput gives the message the LSN where its record ends, which is where
that commit record starts, so both would sit at (LSN, 0) and the sink would refuse the
batch as out of order. The message is placed just before (its LSN - 1): both are stored,
in stream order."""

from __future__ import annotations

import base64

import psycopg

from tests.cdc._pg import PG_URL, PgCase, pg
from unbundled.cdc._replay import events


def test_message_written_just_before_a_commit_keeps_its_own_position(pg_case: PgCase) -> None:
    case = pg_case
    pg(f"CREATE TABLE {case.table('t')} (id int PRIMARY KEY)")
    config = case.add(["t"])
    prefix = f"test.mark.{case.connector}"  # other runs on the server send messages too
    with case.producer(config) as producer:
        producer.run(until_idle=True, poll_s=0.2)
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            for i in range(5):
                with conn.transaction():
                    conn.execute(f"INSERT INTO {case.table('t')} VALUES ({i})")
                    # Its WAL record ends where the COMMIT's record starts.
                    conn.execute("SELECT pg_logical_emit_message(false, %s, %s)", (prefix, str(i)))
        producer.run(until_idle=True, poll_s=0.2)
    rows = list(events(case.db.log, case.topic("t")))
    assert [e.value["after"]["id"] for e in rows] == [0, 1, 2, 3, 4]
    marks = [
        e
        for e in events(case.db.log, f"{case.connector}.message")
        if e.value["message"]["prefix"] == prefix
    ]
    assert [base64.b64decode(e.value["message"]["content"]) for e in marks] == [
        b"0",
        b"1",
        b"2",
        b"3",
        b"4",
    ]
    for mark, row in zip(marks, rows, strict=True):
        assert mark.position < row.position  # the message came first in the WAL
        assert mark.position.commit == int(mark.value["source"]["lsn"]) - 1
