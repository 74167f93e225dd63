"""A PostgreSQL source's server-side objects: its publication, its slot, its retained WAL.

Names are derived from the connector's name (``unbundled_<name>``, with characters
PostgreSQL identifiers should not hold replaced) so that `cdc remove` drops exactly what
`cdc add` and `cdc run` created, and nothing else. Plain SQL over psycopg 3; only the
stream itself needs psycopg2's replication connection (`_pg_stream`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from ..errors import NotFound, Unavailable, UsageError

_IDENT = re.compile(r"[^a-z0-9_]")


def object_name(connector: str) -> str:
    """The slot's and publication's name for a connector (a valid slot name: [a-z0-9_])."""
    return "unbundled_" + _IDENT.sub("_", connector.lower())[:40]


# How the server prints values as text: the forms `_pgtypes.convert` reads (ISO dates,
# the postgres interval style, money without a locale's symbols), whatever the server's
# or the role's defaults are. The walsender prints pgoutput's text values with these too.
SESSION_OPTIONS = (
    "-c DateStyle=ISO -c IntervalStyle=postgres -c lc_monetary=C -c client_encoding=UTF8"
)


def _connect(url: str) -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the extra is part of dev
        raise UsageError("CDC from PostgreSQL needs: pip install 'unbundled[cdc]'") from exc
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10, options=SESSION_OPTIONS)
    except psycopg.OperationalError as exc:
        raise Unavailable(f"cannot connect to the CDC source {_redact(url)}: {exc}") from exc


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """A replication slot as `pg_replication_slots` shows it, with the WAL it keeps."""

    name: str
    active: bool
    restart_lsn: int | None
    confirmed_flush_lsn: int | None
    current_lsn: int
    retained_bytes: int  # WAL on disk kept for this slot (current - restart)
    lag_bytes: int  # changes not yet confirmed (current - confirmed flush)


def lsn_int(text: str | None) -> int | None:
    """PostgreSQL's `X/Y` LSN notation as an int."""
    if text is None:
        return None
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def check_source(url: str) -> None:
    """Fail early, with what to do, when the server cannot do logical decoding."""
    with _connect(url) as conn:
        level = conn.execute("SHOW wal_level").fetchone()[0]
        if level != "logical":
            raise UsageError(
                f"the CDC source's wal_level is {level!r}; logical decoding needs 'logical': "
                "ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL"
            )


def tables_of(url: str, tables: list[str] | None) -> list[tuple[str, str]]:
    """(schema, table) of each named table (`schema.table` or `table` in `public`);
    None = every ordinary table outside the system schemas. UsageError names a missing one."""
    with _connect(url) as conn:
        rows = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2"
        ).fetchall()
    known = [(schema, table) for schema, table in rows]
    if tables is None:
        return known
    found = []
    for name in tables:
        schema, _, table = name.rpartition(".")
        wanted = (schema or "public", table)
        if wanted not in known:
            raise UsageError(f"table {name!r} is not in the CDC source")
        found.append(wanted)
    return found


def create_publication(url: str, connector: str, tables: list[tuple[str, str]]) -> None:
    """Create (or redefine) the connector's publication over exactly these tables."""
    from psycopg import sql

    name = sql.Identifier(object_name(connector))
    targets = sql.SQL(", ").join(sql.Identifier(s, t) for s, t in tables)
    with _connect(url) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_publication WHERE pubname = %s", (object_name(connector),)
        ).fetchone()
        if exists:
            conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(name, targets))
        else:
            conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(name, targets))


def slot_info(url: str, connector: str) -> SlotInfo | None:
    """The connector's slot, or None if it has none (yet, or any more)."""
    with _connect(url) as conn:
        row = conn.execute(
            "SELECT slot_name, active, restart_lsn::text, confirmed_flush_lsn::text, "
            "pg_current_wal_lsn()::text FROM pg_replication_slots WHERE slot_name = %s",
            (object_name(connector),),
        ).fetchone()
    if row is None:
        return None
    restart, confirmed, current = lsn_int(row[2]), lsn_int(row[3]), lsn_int(row[4])
    assert current is not None
    return SlotInfo(
        name=row[0],
        active=bool(row[1]),
        restart_lsn=restart,
        confirmed_flush_lsn=confirmed,
        current_lsn=current,
        retained_bytes=max(0, current - restart) if restart is not None else 0,
        lag_bytes=max(0, current - confirmed) if confirmed is not None else 0,
    )


def drop_slot(url: str, connector: str) -> bool:
    """Drop the connector's slot (ending a runner still attached). True if it existed."""
    name = object_name(connector)
    with _connect(url) as conn:
        for _ in range(100):
            row = conn.execute(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (name,)
            ).fetchone()
            if row is None:
                return False
            if row[0] is not None:
                conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                return True
            except Exception as exc:  # still active for a moment after the terminate
                if "is active" not in str(exc):
                    raise
                time.sleep(0.05)
    raise Unavailable(f"replication slot {name} stayed active; stop its runner first")


def drop_publication(url: str, connector: str) -> bool:
    from psycopg import sql

    name = object_name(connector)
    with _connect(url) as conn:
        exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
        if exists:
            conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
        return bool(exists)


def require_slot(url: str, connector: str) -> SlotInfo:
    info = slot_info(url, connector)
    if info is None:
        raise NotFound(f"connector {connector!r} has no replication slot on its source")
    return info


def primary_keys(url: str, connector: str) -> dict[tuple[str, str], list[str]]:
    """The primary-key columns of every table in the connector's publication."""
    with _connect(url) as conn:
        rows = conn.execute(
            "SELECT p.schemaname, p.tablename, a.attname "
            "FROM pg_publication_tables p "
            "JOIN pg_namespace n ON n.nspname = p.schemaname "
            "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename "
            "JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) "
            "WHERE p.pubname = %s ORDER BY 1, 2, array_position(i.indkey, a.attnum)",
            (object_name(connector),),
        ).fetchall()
    keys: dict[tuple[str, str], list[str]] = {}
    for schema, table, column in rows:
        keys.setdefault((schema, table), []).append(column)
    return keys


def wait_inactive(url: str, connector: str, wait_s: float) -> SlotInfo | None:
    """The slot once no runner holds it (None if there is no slot). A runner that was
    killed holds it until its server process notices, a moment later; a live one for
    good, and then this raises ``Unavailable`` after ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        info = slot_info(url, connector)
        if info is None or not info.active:
            return info
        if time.monotonic() >= deadline:
            raise Unavailable(
                f"replication slot {info.name} is in use by another runner of connector "
                f"{connector!r} (waited {wait_s:g} s); stop it first"
            )
        time.sleep(0.1)


def published_tables(url: str, connector: str) -> set[tuple[str, str]]:
    """(schema, table) of every table in the connector's publication."""
    with _connect(url) as conn:
        rows = conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
            (object_name(connector),),
        ).fetchall()
    return {(schema, table) for schema, table in rows}
