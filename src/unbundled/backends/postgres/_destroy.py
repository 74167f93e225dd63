"""Destroy a PostgreSQL store: drop its schema and unbundled's tables in it.

One transaction, so a failure at any step drops nothing:

1. Take the advisory lock that ``create_schema`` takes: a process opening
   the store at this moment waits, then creates it afresh.
2. The schema must exist (``NotFound``) and hold unbundled's ``meta`` table
   with its format version (else it is not ours: ``UsageError``).
3. It must hold no relation that is not unbundled's (a table, view or
   sequence of yours: ``UsageError`` naming them).
4. No connection of an open store may use it: our connections name
   themselves ``unbundled <schema>`` (``application_name``), so
   ``pg_stat_activity`` shows them. A store opened with an
   ``application_name`` of your own in its URL is not seen.
5. ``DROP TABLE`` each of ours, then ``DROP SCHEMA``, both without
   ``CASCADE``: an object of yours elsewhere that depends on one of them (a
   view, a foreign key), or a function or type left in the schema, makes
   PostgreSQL refuse, and the whole transaction rolls back.
"""

from __future__ import annotations

import re

from psycopg import errors as pg_errors

from ...errors import NotFound, UsageError
from .._report import DestroyReport, still_open
from ._schema import DDL, Conn, application_name, connect, display_url, parse_url, translated

OUR_TABLES = tuple(re.findall(r"CREATE TABLE IF NOT EXISTS \{s\}\.(\w+)", DDL))
# Relations a user can see as "theirs": indexes and TOAST tables go with
# their table and are not listed.
_RELATIONS = """
SELECT c.relname, c.relkind, pg_total_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind NOT IN ('i', 'I', 't')
ORDER BY c.relname
"""
_KINDS = {
    "r": "table",
    "p": "partitioned table",
    "v": "view",
    "m": "materialized view",
    "S": "sequence",
    "f": "foreign table",
    "c": "composite type",
}
_OPEN = """
SELECT pid, coalesce(host(client_addr), 'local')
FROM pg_stat_activity
WHERE application_name = %s AND datname = current_database() AND pid <> pg_backend_pid()
"""


def _check(conn: Conn, schema: str, where: str) -> list[tuple[str, int]]:
    """Steps 2 to 4 of the module docstring: our tables with their sizes."""
    if conn.execute("SELECT FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None:
        raise NotFound(
            f"{where}: there is no schema {schema!r}: nothing to destroy", url=where, schema=schema
        )
    if conn.execute("SELECT to_regclass(%s)", (f'"{schema}".meta',)).fetchone() in (None, (None,)):
        raise UsageError(
            f"{where}: refusing to destroy schema {schema!r}: it is not an unbundled store "
            "(it has no unbundled meta table)",
            url=where,
            schema=schema,
        )
    version = conn.execute(
        f"SELECT value FROM \"{schema}\".meta WHERE key = 'format_version'"
    ).fetchone()
    if version is None:
        raise UsageError(
            f"{where}: refusing to destroy schema {schema!r}: its meta table has no "
            "unbundled format version",
            url=where,
            schema=schema,
        )
    relations = conn.execute(_RELATIONS, (schema,)).fetchall()
    foreign = [
        f"{_KINDS.get(kind, kind)} {name}" for name, kind, _ in relations if name not in OUR_TABLES
    ]
    if foreign:
        raise UsageError(
            f"{where}: refusing to destroy schema {schema!r}: it also holds relations that "
            f"are not unbundled's: {', '.join(foreign)}; drop or move them first",
            url=where,
            schema=schema,
        )

    def list_open() -> list[str]:
        conn.execute("SELECT pg_stat_clear_snapshot()")  # else cached per transaction
        rows = conn.execute(_OPEN, (application_name(schema),)).fetchall()
        return [f"pid {pid} from {host}" for pid, host in rows]

    sessions = still_open(list_open)
    if sessions:
        clients = ", ".join(sessions)
        raise UsageError(
            f"{where}: refusing to destroy schema {schema!r}: {len(sessions)} connection(s) "
            f"of an open store use it ({clients}); close those stores first",
            url=where,
            schema=schema,
        )
    return [(str(name), int(size)) for name, _, size in relations]


def destroy(url: str, *, dry_run: bool) -> DestroyReport:
    """Drop the schema of ``url`` and unbundled's tables in it (see the module docstring)."""
    conninfo, schema = parse_url(url)
    where = display_url(url)
    conn = connect(conninfo, "full", where, schema)
    try:
        with translated(where), conn.transaction(force_rollback=dry_run):
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"unbundled:{schema}",))
            tables = _check(conn, schema, where)
            if not dry_run:
                _drop(conn, schema, [name for name, _ in tables], where)
    finally:
        conn.close()
    items = tuple(f"table {schema}.{name} ({size:,} bytes)" for name, size in tables)
    what = f"the PostgreSQL schema {schema!r} at {where}"
    return DestroyReport("postgres", where, schema, what, items, dry_run)


def _drop(conn: Conn, schema: str, tables: list[str], where: str) -> None:
    try:
        for table in tables:
            conn.execute(f'DROP TABLE "{schema}"."{table}"')
        conn.execute(f'DROP SCHEMA "{schema}"')
    except pg_errors.DependentObjectsStillExist as exc:
        detail = (exc.diag.message_detail or str(exc)).replace("\n", "; ")
        raise UsageError(
            f"{where}: refusing to destroy schema {schema!r}: other objects depend on it "
            f"({detail}); drop them first. Nothing was dropped.",
            url=where,
            schema=schema,
        ) from None
