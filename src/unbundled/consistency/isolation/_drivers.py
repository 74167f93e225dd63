"""The databases the tester drives: SQLite, PostgreSQL, MariaDB/MySQL.

Each target knows its isolation levels (named as the database names them),
how to open a transaction at one, how to set up and tear down a test's own
table, and which errors mean "the database aborted this transaction to keep
its isolation" (as opposed to a bug in the tester, which is raised).

The drivers are imported when a target is opened, so ``psycopg`` and
``pymysql`` are needed only for the databases they serve.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import sqlite3
import tempfile
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from ...errors import NotSupported, UsageError
from ._scripts import INITIAL_ROWS

Rows = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Variant:
    """One configuration under test: an isolation level and, optionally, a
    setting that changes it (``journal_mode=wal``,
    ``innodb_snapshot_isolation=ON``). ``note`` says why a variant the
    caller might expect is absent or merged."""

    level: str
    setting: str | None = None
    note: str | None = None

    @property
    def label(self) -> str:
        """The level, and the setting if there is one: ``serializable, journal_mode=wal``."""
        return self.level if self.setting is None else f"{self.level}, {self.setting}"


class Connection(Protocol):
    """One client connection, used by one thread (``interrupt`` excepted)."""

    def begin(self, variant: Variant) -> list[str]:
        """The statements that open a transaction at ``variant``'s level."""
        ...

    def execute(self, sql: str) -> tuple[Rows | None, int | None]:
        """Run one statement: the ``(id, value)`` rows of a query, and the row count."""
        ...

    def abort_reason(self, exc: BaseException) -> str | None:
        """``"<code>: <message>"`` when ``exc`` is the database aborting the
        transaction (serialization failure, deadlock, lock wait timeout, busy);
        ``None`` for any other error."""
        ...

    def rollback_quietly(self) -> None: ...

    def interrupt(self) -> None:
        """Cancel the running statement; safe to call from another thread."""
        ...

    def close(self) -> None: ...


class Fixture(Protocol):
    """One test's private table (and, for SQLite, its own database file)."""

    table: str

    def connect(self, variant: Variant) -> Connection: ...

    def final_state(self) -> dict[int, int]: ...

    def drop(self) -> None: ...


class Target(Protocol):
    """A database to test, opened from a URL."""

    kind: str
    database: str

    def variants(self) -> list[Variant]: ...

    def prepare(self, test: str, variant: Variant) -> Fixture:
        """Create the test's table (for SQLite, its file) with Hermitage's two rows."""
        ...


def _table_name(test: str) -> str:
    slug = "".join(c if c.isalnum() else "_" for c in test.lower())
    return f"hermitage_{slug}_{secrets.token_hex(4)}"


def _rows(raw: list[Any] | tuple[Any, ...]) -> Rows:
    return tuple(sorted((int(r[0]), int(r[1])) for r in raw))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _create_sql(table: str, suffix: str = "") -> list[str]:
    values = ", ".join(f"({k}, {v})" for k, v in INITIAL_ROWS.items())
    return [
        f"CREATE TABLE {table} (id INT PRIMARY KEY, value INT){suffix}",
        f"INSERT INTO {table} (id, value) VALUES {values}",
    ]


# --- SQLite ---------------------------------------------------------------------

# Every journal mode SQLite has. They differ in how a writer's changes reach the
# file (and so in what a crash leaves behind), not in the lock protocol that
# isolates transactions, so all of them are tested: the measurement, not the
# documentation, says they isolate alike. ``off`` keeps no rollback journal, so
# SQLite leaves ROLLBACK undefined; the scripts' transactions are small enough
# to stay in the page cache, where a rollback just discards them.
_SQLITE_MODES = ("delete", "truncate", "persist", "memory", "wal", "off")
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_INTERRUPT = 9


def _set_journal_mode(conn: sqlite3.Connection, journal_mode: str) -> None:
    # SQLite answers with the mode it is in, which is not the one asked for when
    # it cannot switch (wal on a filesystem without shared memory, say): a row
    # labelled with a mode the test did not run in would be a false measurement.
    row = conn.execute(f"PRAGMA journal_mode = {journal_mode}").fetchone()
    actual = str(row[0]).lower() if row else "unknown"
    if actual != journal_mode:
        raise NotSupported(
            f"SQLite would not switch to journal_mode={journal_mode} (it stayed in {actual})"
        )


class _SqliteConnection:
    def __init__(self, path: str, journal_mode: str, lock_timeout_s: float) -> None:
        self._conn = sqlite3.connect(
            path, timeout=lock_timeout_s, isolation_level=None, check_same_thread=False
        )
        # Per connection: only wal is stored in the file, the others are not.
        _set_journal_mode(self._conn, journal_mode)

    def begin(self, variant: Variant) -> list[str]:
        # Deferred, as an application's plain BEGIN is: locks are taken on
        # first read and first write, which is what the scripts probe.
        return ["BEGIN"]

    def execute(self, sql: str) -> tuple[Rows | None, int | None]:
        cur = self._conn.execute(sql)
        if cur.description is not None:
            return _rows(cur.fetchall()), None
        return None, cur.rowcount if cur.rowcount >= 0 else None

    def abort_reason(self, exc: BaseException) -> str | None:
        code = getattr(exc, "sqlite_errorcode", None)
        busy = (_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_INTERRUPT)
        if isinstance(exc, sqlite3.OperationalError) and code is not None and code & 0xFF in busy:
            return f"{getattr(exc, 'sqlite_errorname', code)}: {_first_line(exc)}"
        return None

    def rollback_quietly(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # nothing to roll back, or the connection is gone: same result

    def interrupt(self) -> None:
        self._conn.interrupt()

    def close(self) -> None:
        self._conn.close()


class _SqliteFixture:
    def __init__(self, directory: str, test: str, journal_mode: str, lock_timeout_s: float):
        fd, self.path = tempfile.mkstemp(prefix=f"hermitage-{test}-", suffix=".db", dir=directory)
        os.close(fd)
        self.table = "test"  # the file is the test's own, so the table can keep its name
        self._mode = journal_mode
        self._lock_timeout_s = lock_timeout_s
        admin = sqlite3.connect(self.path, isolation_level=None)
        try:
            _set_journal_mode(admin, journal_mode)
            for sql in _create_sql(self.table):
                admin.execute(sql)
        finally:
            admin.close()

    def connect(self, variant: Variant) -> Connection:
        return _SqliteConnection(self.path, self._mode, self._lock_timeout_s)

    def final_state(self) -> dict[int, int]:
        conn = sqlite3.connect(self.path, timeout=self._lock_timeout_s)
        try:
            return dict(_rows(conn.execute(f"SELECT id, value FROM {self.table}").fetchall()))
        finally:
            conn.close()

    def drop(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path + suffix)


class SqliteTarget:
    """SQLite: one level (serializable), once per journal mode.

    SQLite locks the whole database file, so tests sharing a file would block
    each other: every test gets its own temporary file, in the directory of
    the URL's path (the system's temporary directory for ``sqlite://``), and
    removes it afterwards. ``?journal_mode=delete,wal`` picks the modes
    (default: all six, ``delete truncate persist memory wal off``).
    """

    kind = "sqlite"

    def __init__(self, url: str, lock_timeout_s: float) -> None:
        parts = urlsplit(url)
        path = unquote(parts.path)
        if parts.netloc:
            path = unquote(parts.netloc) + path
        self._directory = os.path.dirname(path) if path else tempfile.gettempdir()
        if self._directory and not os.path.isdir(self._directory):
            raise UsageError(f"no such directory for the test files: {self._directory!r}")
        query = parse_qs(parts.query)
        modes = [m.strip().lower() for v in query.get("journal_mode", []) for m in v.split(",")]
        bad = [m for m in modes if m not in _SQLITE_MODES]
        if bad:
            raise UsageError(
                f"unknown SQLite journal_mode {bad[0]!r}; choose from {', '.join(_SQLITE_MODES)}"
            )
        self._modes = list(dict.fromkeys(modes)) or list(_SQLITE_MODES)
        self._lock_timeout_s = lock_timeout_s
        self.database = f"SQLite {sqlite3.sqlite_version}"

    def variants(self) -> list[Variant]:
        return [Variant("serializable", f"journal_mode={m}") for m in self._modes]

    def prepare(self, test: str, variant: Variant) -> Fixture:
        mode = (variant.setting or "journal_mode=delete").split("=", 1)[1]
        return _SqliteFixture(self._directory, test, mode, self._lock_timeout_s)


# --- PostgreSQL -----------------------------------------------------------------

# serialization_failure, deadlock_detected, lock_not_available (lock_timeout),
# query_canceled (the tester's own interrupt of a statement that never returned).
_PG_ABORTS = frozenset({"40001", "40P01", "55P03", "57014"})


def _psycopg() -> Any:
    try:
        import psycopg
    except ModuleNotFoundError:
        raise NotSupported(
            "testing PostgreSQL needs psycopg: pip install 'unbundled[postgres]'"
        ) from None
    return psycopg


class _PgConnection:
    def __init__(self, url: str, lock_timeout_s: int) -> None:
        self._psycopg = _psycopg()
        self._conn = self._psycopg.connect(url, autocommit=True, connect_timeout=10)
        self._conn.execute(f"SET lock_timeout = '{lock_timeout_s}s'")

    def begin(self, variant: Variant) -> list[str]:
        return [f"BEGIN ISOLATION LEVEL {variant.level.upper()}"]

    def execute(self, sql: str) -> tuple[Rows | None, int | None]:
        cur = self._conn.execute(sql)
        if cur.description is not None:
            return _rows(cur.fetchall()), None
        return None, cur.rowcount if cur.rowcount >= 0 else None

    def abort_reason(self, exc: BaseException) -> str | None:
        state = getattr(exc, "sqlstate", None)
        if isinstance(exc, self._psycopg.Error) and state in _PG_ABORTS:
            return f"{state}: {_first_line(exc)}"
        return None

    def rollback_quietly(self) -> None:
        with contextlib.suppress(self._psycopg.Error):
            self._conn.execute("ROLLBACK")

    def interrupt(self) -> None:
        self._conn.cancel()

    def close(self) -> None:
        self._conn.close()


class _PgFixture:
    def __init__(self, url: str, test: str, lock_timeout_s: int) -> None:
        self._url = url
        self._lock_timeout_s = lock_timeout_s
        self.table = _table_name(test)
        with _psycopg().connect(url, autocommit=True, connect_timeout=10) as admin:
            for sql in _create_sql(self.table):
                admin.execute(sql)

    def connect(self, variant: Variant) -> Connection:
        return _PgConnection(self._url, self._lock_timeout_s)

    def final_state(self) -> dict[int, int]:
        with _psycopg().connect(self._url, autocommit=True, connect_timeout=10) as admin:
            rows = admin.execute(f"SELECT id, value FROM {self.table}").fetchall()
        return dict(_rows(rows))

    def drop(self) -> None:
        with _psycopg().connect(self._url, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f"DROP TABLE IF EXISTS {self.table}")


class PostgresTarget:
    """PostgreSQL: read committed, repeatable read, serializable.

    (PostgreSQL accepts ``read uncommitted`` but runs it as read committed,
    so it is not a level of its own.)"""

    kind = "postgresql"

    def __init__(self, url: str, lock_timeout_s: int) -> None:
        self._url = url
        self._lock_timeout_s = lock_timeout_s
        psycopg = _psycopg()
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                version = conn.execute("SHOW server_version").fetchone()[0]
        except psycopg.OperationalError as exc:
            raise _unavailable(url, exc) from exc
        self.database = f"PostgreSQL {version.split()[0]}"

    def variants(self) -> list[Variant]:
        return [Variant(level) for level in ("read committed", "repeatable read", "serializable")]

    def prepare(self, test: str, variant: Variant) -> Fixture:
        return _PgFixture(self._url, test, self._lock_timeout_s)


# --- MariaDB / MySQL ------------------------------------------------------------

# 1213 deadlock victim, 1205 lock wait timeout, 1020 "record has changed since
# last read" (MariaDB's innodb_snapshot_isolation), 1317 statement interrupted.
_MYSQL_ABORTS = frozenset({1213, 1205, 1020, 1317})
_UNKNOWN_VARIABLE = 1193


def _pymysql() -> Any:
    try:
        import pymysql
    except ModuleNotFoundError:
        raise NotSupported(
            "testing MariaDB/MySQL needs pymysql: pip install 'unbundled[mysql]'"
        ) from None
    return pymysql


def _mysql_params(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    database = parts.path.lstrip("/") or "test"
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
        "database": database,
        "autocommit": True,
        "connect_timeout": 10,
    }


class _MysqlConnection:
    def __init__(self, params: dict[str, Any], lock_timeout_s: int) -> None:
        self._pymysql = _pymysql()
        self._params = params
        self._conn = self._pymysql.connect(**params)
        self.execute(f"SET SESSION innodb_lock_wait_timeout = {lock_timeout_s}")

    def begin(self, variant: Variant) -> list[str]:
        statements = [f"SET SESSION TRANSACTION ISOLATION LEVEL {variant.level.upper()}"]
        if variant.setting is not None:
            statements.append(f"SET SESSION {variant.setting}")
        return [*statements, "BEGIN"]

    def execute(self, sql: str) -> tuple[Rows | None, int | None]:
        with self._conn.cursor() as cur:
            count = cur.execute(sql)
            if cur.description is not None:
                return _rows(cur.fetchall()), None
            return None, int(count)

    def abort_reason(self, exc: BaseException) -> str | None:
        code = exc.args[0] if exc.args else None
        if isinstance(exc, self._pymysql.MySQLError) and code in _MYSQL_ABORTS:
            message = exc.args[1] if len(exc.args) > 1 else ""
            return f"{code}: {message}"
        return None

    def rollback_quietly(self) -> None:
        with contextlib.suppress(self._pymysql.MySQLError):
            self.execute("ROLLBACK")

    def interrupt(self) -> None:
        killer = self._pymysql.connect(**self._params)
        try:
            with killer.cursor() as cur:
                cur.execute(f"KILL QUERY {int(self._conn.thread_id())}")
        finally:
            killer.close()

    def close(self) -> None:
        self._conn.close()


class _MysqlFixture:
    def __init__(self, params: dict[str, Any], test: str, lock_timeout_s: int) -> None:
        self._params = params
        self._lock_timeout_s = lock_timeout_s
        self.table = _table_name(test)
        self._admin(_create_sql(self.table, " ENGINE=InnoDB"))

    def _admin(self, statements: list[str]) -> Rows:
        conn = _pymysql().connect(**self._params)
        rows: Rows = ()
        try:
            with conn.cursor() as cur:
                for sql in statements:
                    cur.execute(sql)
                    if cur.description is not None:
                        rows = _rows(cur.fetchall())
        finally:
            conn.close()
        return rows

    def connect(self, variant: Variant) -> Connection:
        return _MysqlConnection(self._params, self._lock_timeout_s)

    def final_state(self) -> dict[int, int]:
        return dict(self._admin([f"SELECT id, value FROM {self.table}"]))

    def drop(self) -> None:
        self._admin([f"DROP TABLE IF EXISTS {self.table}"])


class MysqlTarget:
    """MariaDB or MySQL (InnoDB): read uncommitted, read committed, repeatable
    read, serializable. Repeatable read runs twice, with
    ``innodb_snapshot_isolation`` off and on, when the server has that variable
    (MariaDB 10.6.18, 10.11.8, 11.x and later); otherwise once, with a note."""

    def __init__(self, url: str, lock_timeout_s: int) -> None:
        pymysql = _pymysql()
        self._params = _mysql_params(url)
        self._lock_timeout_s = lock_timeout_s
        try:
            conn = pymysql.connect(**self._params)
        except pymysql.MySQLError as exc:
            raise _unavailable(url, exc) from exc
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                version = str(cur.fetchone()[0])
                try:
                    cur.execute("SELECT @@innodb_snapshot_isolation")
                    self._snapshot_variable = True
                except pymysql.MySQLError as exc:
                    if exc.args[0] != _UNKNOWN_VARIABLE:
                        raise
                    self._snapshot_variable = False
        finally:
            conn.close()
        mariadb = "mariadb" in version.lower()
        self.kind = "mariadb" if mariadb else "mysql"
        self.database = f"{'MariaDB' if mariadb else 'MySQL'} {version.split('-', maxsplit=1)[0]}"

    def variants(self) -> list[Variant]:
        found = [Variant("read uncommitted"), Variant("read committed")]
        if self._snapshot_variable:
            found += [
                Variant("repeatable read", "innodb_snapshot_isolation=OFF"),
                Variant("repeatable read", "innodb_snapshot_isolation=ON"),
            ]
        else:
            found.append(
                Variant(
                    "repeatable read",
                    note="this server has no innodb_snapshot_isolation variable: "
                    "repeatable read is tested once, as the server runs it",
                )
            )
        return [*found, Variant("serializable")]

    def prepare(self, test: str, variant: Variant) -> Fixture:
        return _MysqlFixture(self._params, test, self._lock_timeout_s)


def _unavailable(url: str, exc: BaseException) -> Exception:
    from ...errors import Unavailable

    host = urlsplit(url).hostname or url
    return Unavailable(f"cannot connect to {host}: {_first_line(exc)}", url=url)


def open_target(url: str, lock_timeout_s: float) -> SqliteTarget | PostgresTarget | MysqlTarget:
    """The target a URL names: ``sqlite:///dir/file.db[?journal_mode=wal]``,
    ``postgresql://...``, ``mysql://...`` or ``mariadb://...``."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    whole_seconds = max(1, math.ceil(lock_timeout_s))
    if scheme == "sqlite":
        return SqliteTarget(url, lock_timeout_s)
    if scheme in ("postgresql", "postgres"):
        return PostgresTarget(url, whole_seconds)
    if scheme in ("mysql", "mariadb"):
        return MysqlTarget(url, whole_seconds)
    raise UsageError(
        f"cannot test {url!r}: use sqlite:///path, postgresql://..., mysql://... or mariadb://..."
    )
