"""PostgreSQL plumbing: the URL, the schema, connections, and the translation
of psycopg errors into unbundled's typed errors.

Every table of one backend lives in one PostgreSQL schema (``?schema=name``
in the URL, default ``unbundled``), so several independent stores share a
database and a test can drop everything it made with one ``DROP SCHEMA``.
"""

from __future__ import annotations

import re
import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from ... import limits
from ..._bounds import check_int
from ...errors import (
    BackendError,
    Closed,
    Error,
    NotSupported,
    Timeout,
    Unavailable,
    UsageError,
)

FORMAT_VERSION = 1
DEFAULT_SCHEMA = "unbundled"
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# A writer or a projection waiting this long for a row lock gives up with
# Timeout instead of hanging behind a stuck transaction in another process.
LOCK_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 10
# A client that vanishes mid-transaction (its host died) would hold its row
# locks, the counter's among them, and stall every writer: the server ends a
# transaction idle this long, and probes a silent TCP peer every KEEPALIVE_S.
IDLE_IN_TRANSACTION_MS = 60_000
KEEPALIVE_S = 10
# The client's side of the same: a client cut off from the server (a network
# partition, the server's host gone) would wait for an answer until the
# kernel gives up retransmitting, about 15 minutes. libpq's keepalives end a
# connection whose server is silent for KEEPALIVE_S * 4 s, and
# tcp_user_timeout one whose sent data stays unacknowledged that long: the
# call raises Unavailable. A live server answers probes however long a
# statement runs, so neither ends a slow query. The URL's values win.
CLIENT_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": str(KEEPALIVE_S),
    "keepalives_interval": str(KEEPALIVE_S),
    "keepalives_count": "3",
    "tcp_user_timeout": str(KEEPALIVE_S * 4 * 1000),
}
SYNCHRONOUS_COMMIT = {"full": "on", "normal": "off", "off": "off"}

Conn = psycopg.Connection[TupleRow]

# Event ids are canonical UUIDs (eventstore._core checks), stored as uuid:
# half the index of text. Every index costs each append; there is one for
# reading a category in order, none for types (a type filter scans from the
# reader's position, once, then follows the tail).
# Each table's text keys sort bytewise (COLLATE "C"), as Python sorts
# str: list_streams and list_documents page by "greater than", and must
# agree with the memory model whatever the database's locale is.
# An idempotency record is stored as columns, not an encoded blob, so that a
# claim and each fenced transition is one statement that decides in SQL;
# phases are jsonb (name -> base64, msgspec's encoding of bytes), so
# recording one appends it without reading the record first.
# The key-value store (consistency.kv): a NULL value is a tombstone, so a
# deleted key keeps its version and versions never repeat. Existing schemas
# gain the table when next opened (CREATE ... IF NOT EXISTS).
# The log (``_log``): one table of records for every topic and partition,
# keyed by (topic id, partition, offset), each record with its CRC-32. Topic
# ids come from a counter in ``meta`` (no SEQUENCE: ``destroy`` refuses a
# schema holding relations it does not know), never reused, so a topic
# deleted and made again is a new topic. ``log_partitions`` holds each
# partition's counters; its row lock orders the partition's writers.
# Committed offsets are keyed by topic name (as on SQLite): deleting a
# topic deletes them.
DDL = """
CREATE TABLE IF NOT EXISTS {s}.meta (
    key text COLLATE "C" PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.positions (
    id int PRIMARY KEY CHECK (id = 1),
    last bigint NOT NULL
);
INSERT INTO {s}.positions VALUES (1, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS {s}.events (
    position bigint PRIMARY KEY,
    id uuid NOT NULL UNIQUE,
    stream text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    category text COLLATE "C" NOT NULL,
    type text COLLATE "C" NOT NULL,
    schema_version int NOT NULL,
    data bytea NOT NULL,
    metadata bytea NOT NULL,
    recorded_ms bigint NOT NULL,
    UNIQUE (stream, version)
);
CREATE INDEX IF NOT EXISTS events_category ON {s}.events (category, position);
CREATE TABLE IF NOT EXISTS {s}.streams (
    stream text COLLATE "C" PRIMARY KEY,
    version bigint NOT NULL,
    start_version bigint NOT NULL,
    deleted boolean NOT NULL,
    tombstoned boolean NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.snapshots (
    stream text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    type text NOT NULL,
    schema_version int NOT NULL,
    data bytea NOT NULL,
    recorded_ms bigint NOT NULL,
    PRIMARY KEY (stream, version)
);
CREATE TABLE IF NOT EXISTS {s}.projection_checkpoints (
    name text COLLATE "C" PRIMARY KEY,
    position bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.documents (
    collection text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (collection, key)
);
CREATE TABLE IF NOT EXISTS {s}.subject_keys (
    subject text COLLATE "C" PRIMARY KEY,
    key bytea
);
CREATE TABLE IF NOT EXISTS {s}.idempotency (
    key text COLLATE "C" PRIMARY KEY,
    fingerprint text NOT NULL,
    state text NOT NULL CHECK (state IN ('in_progress', 'completed')),
    token bigint NOT NULL,
    lease_until_ms bigint NOT NULL,
    expires_ms bigint NOT NULL,
    created_ms bigint NOT NULL,
    updated_ms bigint NOT NULL,
    result bytea,
    error boolean NOT NULL,
    phases jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_expires ON {s}.idempotency (expires_ms);
CREATE TABLE IF NOT EXISTS {s}.kv (
    key text COLLATE "C" PRIMARY KEY,
    value bytea,
    version bigint NOT NULL
);
INSERT INTO {s}.meta VALUES ('topic_ids', '0') ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS {s}.log_topics (
    id bigint PRIMARY KEY,
    name text COLLATE "C" NOT NULL UNIQUE,
    partitions int NOT NULL,
    config text NOT NULL,
    created_ms bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.log_partitions (
    topic_id bigint NOT NULL,
    partition int NOT NULL,
    start_offset bigint NOT NULL,
    end_offset bigint NOT NULL,
    records bigint NOT NULL,
    bytes bigint NOT NULL,
    PRIMARY KEY (topic_id, partition)
);
CREATE TABLE IF NOT EXISTS {s}.log_records (
    topic_id bigint NOT NULL,
    partition int NOT NULL,
    "offset" bigint NOT NULL,
    key bytea,
    value bytea,
    headers bytea,
    ts bigint NOT NULL,
    crc bigint NOT NULL,
    PRIMARY KEY (topic_id, partition, "offset")
);
CREATE TABLE IF NOT EXISTS {s}.log_producers (
    producer_id text COLLATE "C" PRIMARY KEY,
    epoch bigint NOT NULL,
    last_sequence bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.log_producer_window (
    producer_id text COLLATE "C" NOT NULL,
    sequence bigint NOT NULL,
    positions text NOT NULL,
    PRIMARY KEY (producer_id, sequence)
);
CREATE TABLE IF NOT EXISTS {s}.log_groups (
    name text COLLATE "C" PRIMARY KEY,
    generation bigint NOT NULL,
    version bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.log_group_members (
    grp text COLLATE "C" NOT NULL,
    member_id text COLLATE "C" NOT NULL,
    topics text NOT NULL,
    lease_ms bigint NOT NULL,
    lease_until_ms bigint NOT NULL,
    acked_generation bigint NOT NULL,
    instance_id text,
    PRIMARY KEY (grp, member_id)
);
CREATE TABLE IF NOT EXISTS {s}.log_group_assignments (
    grp text COLLATE "C" NOT NULL,
    topic text COLLATE "C" NOT NULL,
    partition int NOT NULL,
    owner text NOT NULL,
    generation bigint NOT NULL,
    prev_owner text,
    prev_generation bigint,
    PRIMARY KEY (grp, topic, partition)
);
CREATE TABLE IF NOT EXISTS {s}.log_offsets (
    grp text COLLATE "C" NOT NULL,
    topic text COLLATE "C" NOT NULL,
    partition int NOT NULL,
    next_offset bigint NOT NULL,
    committed_ms bigint NOT NULL,
    PRIMARY KEY (grp, topic, partition)
);
"""


def display_url(url: str) -> str:
    """The URL for messages: without a password (in the user part, or a
    libpq ``password`` parameter)."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username}:***@{host}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "password" for k, _ in query):
        masked = [(k, "***" if k == "password" else v) for k, v in query]
        parts = parts._replace(query=urlencode(masked, safe="*"))
    return urlunsplit(parts)


def parse_url(url: str) -> tuple[str, str]:
    """Split ``postgresql://...?schema=name`` into the libpq conninfo (the
    URL without our ``schema`` parameter) and the schema name."""
    parts = urlsplit(url)
    shown = display_url(url)  # errors carry the URL without its password
    if parts.scheme not in ("postgresql", "postgres"):
        raise UsageError(f"not a PostgreSQL URL: {shown!r}", url=shown)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not SCHEMA_NAME.fullmatch(schema):
        raise UsageError(
            f"schema {schema!r} must be a lower-case SQL identifier "
            "(letters, digits, underscores; at most 63)",
            url=shown,
            schema=schema,
        )
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def translate(exc: psycopg.Error, where: str) -> Error:
    """Map a psycopg error to a typed one (the caller chains ``from exc``)."""
    text = str(exc).strip()
    if isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected):
        return Unavailable(f"{where}: transaction conflict, retry: {text}", url=where)
    if isinstance(exc, pg_errors.LockNotAvailable | pg_errors.QueryCanceled):
        return Timeout(f"{where}: gave up waiting for a lock: {text}", url=where)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return Unavailable(f"{where}: PostgreSQL is unavailable: {text}", url=where)
    if isinstance(exc, psycopg.DataError):
        return UsageError(f"{where}: PostgreSQL refused the data: {text}", url=where)
    return BackendError(f"{where}: PostgreSQL failed: {text}", url=where)


@contextmanager
def translated(where: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, where) from exc


def application_name(schema: str) -> str:
    """How our connections show in ``pg_stat_activity``."""
    return f"unbundled {schema}"[:63]


def connect(conninfo: str, sync: str, where: str, schema: str) -> Conn:
    """An autocommit connection (we issue BEGIN ourselves) with our settings."""
    with translated(where):
        # The URL's own connect_timeout, application_name and keepalives win over ours.
        given = conninfo_to_dict(conninfo)
        ours = {
            "connect_timeout": str(CONNECT_TIMEOUT_S),
            "application_name": application_name(schema),
            **CLIENT_KEEPALIVES,
        }
        conn = psycopg.connect(
            make_conninfo(conninfo, **{k: v for k, v in ours.items() if k not in given}),
            autocommit=True,
        )
        try:
            conn.execute(
                f"SET synchronous_commit = {SYNCHRONOUS_COMMIT[sync]}; "
                f"SET lock_timeout = {LOCK_TIMEOUT_MS}; "
                f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}; "
                f"SET tcp_keepalives_idle = {KEEPALIVE_S}; "
                f"SET tcp_keepalives_interval = {KEEPALIVE_S}; "
                "SET tcp_keepalives_count = 3"
            )
        except BaseException:
            conn.close()
            raise
        return conn


# Every table and index the DDL makes, by name.
_RELATIONS = tuple(re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (?:\{s\}\.)?(\w+)", DDL))
_FOUND = (
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %s AND c.relname = ANY(%s::text[])"
)


def create_schema(conn: Conn, schema: str, where: str) -> None:
    """Create the schema and tables if missing; refuse a newer format."""
    with translated(where):
        # The DDL runs only if something is missing: its CREATE INDEX IF NOT
        # EXISTS takes a SHARE lock on its table even when the index exists:
        # a process opening the store deadlocked with another's transaction
        # that had written that table and went on to one the DDL had locked.
        found = conn.execute(_FOUND, (schema, list(_RELATIONS))).fetchone()
        read_version = f"SELECT value FROM \"{schema}\".meta WHERE key = 'format_version'"
        row = None
        if found is not None and found[0] == len(_RELATIONS):
            row = conn.execute(read_version).fetchone()
        if row is None:
            with conn.transaction():
                # Several processes may open a new store at once; CREATE ... IF
                # NOT EXISTS still races on the catalogs, so take a lock first.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"unbundled:{schema}",))
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                conn.execute(DDL.format(s=f'"{schema}"').encode())
                conn.execute(
                    f'INSERT INTO "{schema}".meta VALUES (%s, %s) ON CONFLICT DO NOTHING',
                    ("format_version", str(FORMAT_VERSION)),
                )
                row = conn.execute(read_version).fetchone()
    assert row is not None
    version = int(str(row[0]))
    if version > FORMAT_VERSION:
        raise NotSupported(
            f"{where}: schema {schema!r} has format version {version}; this version of "
            f"unbundled reads up to {FORMAT_VERSION}. Upgrade unbundled.",
            url=where,
            version=version,
        )


def _stale(conn: Conn) -> bool:
    """Whether an idle pooled connection is dead or dying: closed, broken, or
    with something to read. A pooled connection is autocommit, LISTENs to
    nothing and is idle between borrows, so the server sends it nothing
    unless it ends the session (a restart, ``pg_terminate_backend``: an error
    message, then EOF), which psycopg would only read at the next statement,
    failing it. One ``select`` with no wait per borrow."""
    if conn.closed or conn.broken:
        return True
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class Pool:
    """A few autocommit connections for reads and short transactions.

    A thread borrows one for a call and gives it back; at most ``size`` are
    open (plus one per nested borrow), and a thread finding none free waits.
    A connection that failed is closed and replaced on the next borrow, and
    so is an idle one the server closed meanwhile (:func:`_stale`), so a
    server restart costs no caller an ``Unavailable`` on a pooled read.
    """

    def __init__(self, connect: Callable[[], Conn], where: str, size: int) -> None:
        check_int("pool_size", size, 1, limits.pool_size_max)
        self._connect = connect
        self._where = where
        self._size = size
        self._idle: list[Conn] = []
        self._open = 0
        self._held = threading.local()  # .count: connections this thread holds
        self._closed = False
        self._free = threading.Condition()

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        conn = self._take()
        try:
            yield conn
        finally:
            self._give(conn)

    def _take(self) -> Conn:
        # A thread that already holds one (a projection handler reading the
        # store) never waits for a second: it could wait for itself.
        nested = getattr(self._held, "count", 0) > 0
        conn: Conn | None = None
        with self._free:
            while True:
                if self._closed:
                    raise Closed(f"the event store at {self._where} is closed")
                if self._idle:
                    conn = self._idle.pop()
                    if _stale(conn):
                        conn.close()
                        conn = None  # its slot stays counted: connect anew below
                    break
                if self._open < self._size or nested:
                    self._open += 1
                    break
                self._free.wait()
        if conn is None:
            try:
                conn = self._connect()
            except BaseException:
                with self._free:
                    self._open -= 1
                    self._free.notify()
                raise
        self._held.count = getattr(self._held, "count", 0) + 1
        return conn

    def _give(self, conn: Conn) -> None:
        self._held.count -= 1
        healthy = not conn.closed and not conn.broken
        if healthy and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:  # a transaction left open by an error: never lend it out again
                conn.execute("ROLLBACK")
            except psycopg.Error:
                healthy = False
        with self._free:
            if healthy and not self._closed and self._open <= self._size:
                self._idle.append(conn)
                self._free.notify()
                return
            self._open -= 1
            self._free.notify()
        conn.close()

    def close(self) -> None:
        with self._free:
            self._closed = True
            idle, self._idle = self._idle, []
            self._free.notify_all()
        for conn in idle:
            conn.close()
