"""The competitor's side of ``bench/eventstore_bench.py``: the ``eventsourcing``
library (9.x), used the way its documentation shows.

Imported only inside ``bench/.venv`` (``bench/requirements.txt``), where the
library is installed; it is never a dependency of unbundled. Its persistence
is chosen with its own environment settings (``PERSISTENCE_MODULE``,
``SQLITE_DBNAME``, ``POSTGRES_*``). On SQLite it switches the file to WAL
itself and leaves ``synchronous`` at SQLite's default, which is FULL for this
build: :func:`sqlite_synchronous` reads it back on the library's own
connection, and the benchmark refuses to run if it is not FULL (2).

No ``from __future__ import annotations`` here: the library builds each
aggregate's ``Created`` event from ``__init__``'s signature.
"""

import time
import uuid
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from eventsourcing.application import Application  # type: ignore[import-not-found]
from eventsourcing.domain import Aggregate, event  # type: ignore[import-not-found]
from eventsourcing.persistence import StoredEvent  # type: ignore[import-not-found]

VERSION = version("eventsourcing")
RunThreads = Callable[[int, Callable[[int], None]], float]


class Account(Aggregate):  # type: ignore[misc]
    """The same aggregate as unbundled's side: opened by an owner, then deposits."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = 0

    @event("Deposited")  # type: ignore[untyped-decorator]
    def deposit(self, amount: int) -> None:
        self.balance += amount


class Bank(Application):  # type: ignore[misc]
    pass


def sqlite_app(path: Path) -> Any:
    """An application on an SQLite file: WAL (set by the library) and synchronous=FULL."""
    app = Bank(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(path),
            "SQLITE_LOCK_TIMEOUT": "60",
        }
    )
    level = sqlite_synchronous(app)
    if level != 2:
        raise AssertionError(f"eventsourcing's SQLite connection has synchronous={level}, not FULL")
    return app


def sqlite_synchronous(app: Any) -> int:
    """``PRAGMA synchronous`` and ``journal_mode`` as the library's own connection sees them."""
    pool = app.recorder.datastore.pool
    conn = pool.get_connection()
    try:
        raw = conn._sqlite_conn
        if raw.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            raise AssertionError("eventsourcing's SQLite file is not in WAL mode")
        return int(raw.execute("PRAGMA synchronous").fetchone()[0])
    finally:
        pool.put_connection(conn)


def postgres_app(dbname: str, host: str, port: int, pool_size: int, schema: str = "") -> Any:
    """An application on a PostgreSQL database (trust auth: the password is
    unused), in ``schema`` if given (which must exist), else ``public``."""
    return Bank(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_SCHEMA": schema,
            "POSTGRES_HOST": host,
            "POSTGRES_PORT": str(port),
            "POSTGRES_USER": "postgres",
            "POSTGRES_PASSWORD": "",
            # A connection per writer thread, as unbundled's side may use.
            "POSTGRES_POOL_SIZE": str(pool_size),
            "POSTGRES_MAX_OVERFLOW": "0",
        }
    )


def close(app: Any) -> None:
    app.close()


def stored_events(app: Any) -> int:
    return int(app.recorder.max_notification_id() or 0)


def appends_by_save(app: Any, writers: int, per_writer: int, run_threads: RunThreads) -> float:
    """Events/s: each thread deposits into its own account and saves after
    every event (``Application.save``: one transaction, one fsync per event)."""
    accounts = [Account(owner=f"owner-{i}") for i in range(writers)]
    app.save(*accounts)  # the Created events, before the clock starts
    before = stored_events(app)

    def work(i: int) -> None:
        account = accounts[i]
        for n in range(per_writer):
            account.deposit(n)
            app.save(account)

    elapsed = run_threads(writers, work)
    if stored_events(app) - before != writers * per_writer:
        raise AssertionError("eventsourcing lost events in the save benchmark")
    return writers * per_writer / elapsed


def appends_by_recorder(app: Any, writers: int, per_writer: int, run_threads: RunThreads) -> float:
    """Events/s: each thread inserts already-serialized events of its own
    aggregate one per call (``recorder.insert_events``: one transaction each),
    skipping the aggregate and the mapper."""
    template = app.mapper.to_stored_event(Account(owner="x").collect_events()[0])
    rows = [
        [
            StoredEvent(uuid.uuid4(), version + 1, template.topic, template.state)
            for version in range(per_writer)
        ]
        for _ in range(writers)
    ]
    before = stored_events(app)

    def work(i: int) -> None:
        insert = app.recorder.insert_events
        for stored in rows[i]:
            insert([stored])

    elapsed = run_threads(writers, work)
    if stored_events(app) - before != writers * per_writer:
        raise AssertionError("eventsourcing lost events in the recorder benchmark")
    return writers * per_writer / elapsed


# The outbox a user of eventsourcing adds beside its tables: the library has
# none, so the announcement of a saved event is a second INSERT, in a second
# transaction (and a second fsync) -- the dual write the unit of work removes.
OUTBOX_TABLES = {
    "sqlite": "CREATE TABLE IF NOT EXISTS {table} "
    "(id INTEGER PRIMARY KEY, topic TEXT NOT NULL, key BLOB, value BLOB NOT NULL)",
    "postgres": "CREATE TABLE IF NOT EXISTS {table} "
    "(id BIGSERIAL PRIMARY KEY, topic TEXT NOT NULL, key BYTEA, value BYTEA NOT NULL)",
}
OUTBOX_INSERTS = {
    "sqlite": "INSERT INTO {table} (topic, key, value) VALUES (?, ?, ?)",
    "postgres": "INSERT INTO {table} (topic, key, value) VALUES (%s, %s, %s)",
}


def outbox_table(app: Any) -> str:
    """The outbox's name: on PostgreSQL qualified with the application's
    schema (``POSTGRES_SCHEMA``; its connections do not set a search_path)."""
    schema = getattr(app.recorder.datastore, "schema", None)
    return f'"{schema}".outbox' if schema else "outbox"


def create_outbox(app: Any, dialect: str) -> None:
    """The outbox table, through the application's own datastore."""
    with app.recorder.datastore.transaction(commit=True) as cursor:
        cursor.execute(OUTBOX_TABLES[dialect].format(table=outbox_table(app)))


def outbox_rows(app: Any) -> int:
    with app.recorder.datastore.transaction(commit=False) as cursor:
        cursor.execute(f"SELECT count(*) AS n FROM {outbox_table(app)}")
        row = cursor.fetchone()
    return int(row["n"] if isinstance(row, dict) else row[0])


def saves_with_outbox(
    app: Any,
    writers: int,
    per_writer: int,
    run_threads: RunThreads,
    dialect: str,
    value: bytes,
) -> float:
    """Commands/s: each thread deposits into its own account, saves after
    every event (``Application.save``: one transaction) and then announces it
    with an outbox INSERT in a transaction of its own (the same datastore,
    ``transaction(commit=True)``). Two commits per command, as a user of the
    library writes it; a crash between them loses the announcement."""
    insert = OUTBOX_INSERTS[dialect].format(table=outbox_table(app))
    accounts = [Account(owner=f"owner-{i}") for i in range(writers)]
    app.save(*accounts)  # the Created events, before the clock starts
    before = stored_events(app)
    transaction = app.recorder.datastore.transaction

    def work(i: int) -> None:
        account = accounts[i]
        key = str(account.id).encode()
        for n in range(per_writer):
            account.deposit(n)
            app.save(account)
            with transaction(commit=True) as cursor:
                cursor.execute(insert, ("payments", key, value))

    elapsed = run_threads(writers, work)
    total = writers * per_writer
    if stored_events(app) - before != total or outbox_rows(app) != total:
        raise AssertionError("eventsourcing lost events or outbox rows in the outbox benchmark")
    return total / elapsed


def populate(app: Any, aggregates: int, events_per: int) -> list[Any]:
    """``aggregates`` accounts of ``events_per`` events (Created + deposits of
    1, 2, ...), saved 100 accounts per transaction. Returns their ids."""
    ids = []
    for start in range(0, aggregates, 100):
        batch = []
        for i in range(start, min(start + 100, aggregates)):
            account = Account(owner=f"owner-{i}")
            for amount in range(1, events_per):
                account.deposit(amount)
            batch.append(account)
        app.save(*batch)
        ids += [a.id for a in batch]
    return ids


def rebuild(app: Any, ids: list[Any]) -> tuple[int, float]:
    """Total balance of the accounts, each rebuilt with ``repository.get``; seconds taken."""
    get = app.repository.get
    started = time.perf_counter()
    total = sum(get(i).balance for i in ids)
    return total, time.perf_counter() - started


def read_all(app: Any, page: int = 10_000) -> tuple[int, float]:
    """Every event of the application sequence as a typed domain event
    (``recorder.select_notifications`` + ``mapper.to_domain_event``, as its
    followers do); returns how many and the seconds taken."""
    select = app.recorder.select_notifications
    to_event = app.mapper.to_domain_event
    count = 0
    start = 1
    started = time.perf_counter()
    while True:
        notifications = select(start, page)
        events = [to_event(n) for n in notifications]
        count += len(events)
        if len(notifications) < page:
            break
        start = notifications[-1].id + 1
    return count, time.perf_counter() - started


__all__ = [
    "VERSION",
    "appends_by_recorder",
    "appends_by_save",
    "close",
    "create_outbox",
    "outbox_rows",
    "populate",
    "postgres_app",
    "read_all",
    "rebuild",
    "saves_with_outbox",
    "sqlite_app",
    "sqlite_synchronous",
    "stored_events",
]
