"""The least work of the unit-of-work benchmark: its rows, written by raw sqlite3.

A file made by unbundled (every table, index, trigger and generated column of
the real schema; for the unit of work a topic and every idempotency key claimed)
gets, from one thread and a plain ``sqlite3`` connection (WAL,
``synchronous=FULL``), commits of ``per_commit`` transactions' rows built
before the clock starts: the events (one multi-row INSERT and the events head),
and for the unit also the outbox records (one record batch, its partition row)
and the completed idempotency records (one UPSERT each). No checks, no
checksums computed, no decisions, no asyncio: what SQLite itself costs for the
same rows. The two rates bound what any implementation on one SQLite file can
reach, and their ratio is the SQL's own share of the unit of work's ratio to
the event store alone.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path

import msgspec

import unbundled
from unbundled.backends.sqlite import _events, _idempotency

TOPIC = "payments"
# The library's own statements, so these rows are written exactly as its writer writes them.
_EVENT_COLUMNS = _events._COLUMNS
_UPSERT = _idempotency._UPSERT


def _prepare(path: Path, writers: int, per_writer: int, unit: bool) -> tuple[int, list[bytes]]:
    """The file as unbundled makes it: the topic's id and each key's claimed record."""
    with unbundled.open(str(path)) as db:
        if not unit:
            return 0, []
        db.log.create_topic(TOPIC, partitions=1)
        for i in range(per_writer):
            for n in range(writers):
                db.idempotency.attempt(f"deposit-{n}-{i}", {"account": n, "amount": i})
    conn = sqlite3.connect(path)
    try:
        (topic_id,) = conn.execute("SELECT id FROM topics WHERE name = ?", (TOPIC,)).fetchone()
        records = [r for (r,) in conn.execute("SELECT record FROM idempotency ORDER BY key")]
    finally:
        conn.close()
    return topic_id, records


def least_work(path: Path, writers: int, per_writer: int, per_commit: int, *, unit: bool) -> float:
    """Transactions/s of the rows of ``writers * per_writer`` transactions (each one
    event; with ``unit``, also one outbox record and one completed idempotency
    record), ``per_commit`` transactions to a commit, written by raw sqlite3."""
    topic_id, claimed = _prepare(path, writers, per_writer, unit)
    total = writers * per_writer
    now = int(time.time() * 1000)
    value = b"%0100d" % 7
    # Everything a commit writes, built before the clock starts.
    commits = []
    for first in range(0, total, per_commit):
        txns = range(first, min(first + per_commit, total))
        events: list[object] = []
        for t in txns:
            n, i = t % writers, t // writers
            data = msgspec.json.encode({"amount": i})
            row = (t + 1, str(uuid.uuid4()), f"account-{n}", i, "account", "Deposited", 1)
            events.extend((*row, data, b"{}", now, 0))
        keys = [f"account-{t % writers}".encode() for t in txns]
        batch = msgspec.msgpack.encode(
            [keys, [value] * len(keys), [[]] * len(keys), [now] * len(keys)]
        )
        results = (
            [
                (
                    f"deposit-{t % writers}-{t // writers}",
                    "completed",
                    now + 86_400_000,
                    claimed[0],
                    0,
                )
                for t in txns
            ]
            if unit
            else []
        )
        commits.append((len(txns), first, events, batch, results))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        log_table = f"log_{topic_id}_0"
        started = time.perf_counter()
        for count, first, events, batch, results in commits:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                f"INSERT INTO events({_EVENT_COLUMNS}) VALUES "
                + ",".join(["(?,?,?,?,?,?,?,?,?,?,?)"] * count),
                events,
            )
            conn.execute("UPDATE heads SET position = ? WHERE name = 'events'", (first + count,))
            if unit:
                conn.execute(
                    f"INSERT INTO {log_table}(base, last, ts_max, size, data, crc) "
                    "VALUES (?, ?, ?, ?, ?, 0)",
                    (first, first + count - 1, now, count * (len(value) + 10), batch),
                )
                conn.execute(
                    "UPDATE partitions SET end_offset = ?, records = records + ?, "
                    "bytes = bytes + ? WHERE topic_id = ? AND partition = 0",
                    (first + count, count, count * (len(value) + 10), topic_id),
                )
                conn.executemany(_UPSERT, results)
            conn.execute("COMMIT")
        return total / (time.perf_counter() - started)
    finally:
        conn.close()


__all__ = ["least_work"]
