"""``destroy(url, confirm=True)``: drop everything unbundled keeps under a URL.

What a URL names, and what goes:

* ``postgresql://...?schema=name``: the schema, with the tables unbundled
  created in it (events, idempotency records, the key-value store...). Only
  a schema holding unbundled's ``meta`` table, and nothing but unbundled's
  tables, is dropped; no ``CASCADE`` anywhere, so an object of yours that
  depends on one of them (a view, a foreign key) makes the drop fail and
  changes nothing.
* ``redis://...?prefix=p``: the idempotency records under the prefix. Only
  if every key under it is one of our records (a hash with the record's
  fields); never ``FLUSHDB``.
* ``nats://...?bucket=b``: the log's record streams (``UBLOG_b_...``) and
  the key-value bucket (its stream ``KV_b``, which also holds the log's
  catalog, producers and groups), if it is a KV bucket whose first and
  last messages carry unbundled's version header.
* a SQLite path: the file with its ``-wal``, ``-shm`` and ``-journal``
  files, if the file is unbundled's (its application id) and holds only
  unbundled's tables.
* ``memory://``: nothing; a memory store lives and dies with its process.

Refused while the store is open, where that can be seen: a connection of an
open PostgreSQL store (``pg_stat_activity``), of an open Redis store
(``CLIENT LIST``; skipped if the server does not allow it) or a connection
to the SQLite file (its lock). NATS does not show a bucket's clients: there
the caller must make sure no process uses it.

Each backend's ``destroy(url, dry_run=...)`` runs every check in both modes,
so a dry run raises exactly what the real one would, and returns the
:class:`DestroyReport` of what would go.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import UsageError
from ._drivers import backend_class
from ._report import DestroyReport
from .sqlite._destroy import destroy as destroy_sqlite


def destroy(
    url: str | os.PathLike[str], *, confirm: bool = False, dry_run: bool = False
) -> DestroyReport:
    """Drop everything unbundled keeps under ``url`` (see the module
    docstring for what that is on each backend); irreversible.

    ``confirm=True`` is required unless ``dry_run=True``, which drops
    nothing and returns what would go. Raises ``UsageError`` without
    confirmation, for a store that is not unbundled's (or holds things that
    are not) and for a store still open where that can be seen; ``NotFound``
    when there is no such schema, bucket or file; ``Unavailable`` when the
    server cannot be reached. Nothing is dropped when it raises, except
    that a PostgreSQL drop is one transaction and a Redis one deletes key by
    key (a failure half-way leaves the rest, and running it again finishes).
    """
    text = os.fspath(url)
    if not isinstance(text, str) or not text:
        raise UsageError(f"destroy needs a store URL or path, got {url!r}", url=url)
    if type(dry_run) is not bool:
        raise UsageError(f"dry_run must be True or False, got {dry_run!r}")
    if confirm is not True and not dry_run:
        raise UsageError(
            "destroy drops everything unbundled keeps at this URL, irreversibly: pass "
            "confirm=True (or dry_run=True to see what would go)",
        )
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme == "memory":
        nothing = "nothing: a memory store lives and dies with its process"
        return DestroyReport("memory", text, text, nothing, (), dry_run)
    destroy_at = _destroyer(scheme, text)
    report: DestroyReport = destroy_at(text, dry_run=dry_run)
    return report


def _destroyer(scheme: str, url: str) -> Any:
    # A server backend's module is imported only when a URL names it: its
    # driver is an optional extra (see _drivers).
    if scheme in ("", "sqlite"):
        return destroy_sqlite
    if scheme in ("postgresql", "postgres"):
        return backend_class("postgres", "destroy", "psycopg 3", url)
    if scheme in ("redis", "rediss"):
        return backend_class("redis", "destroy", "redis-py", url)
    if scheme == "nats":
        return backend_class("nats", "destroy", "nats-py", url)
    raise UsageError(f"unknown backend URL scheme {scheme!r} in {url!r}", url=url)
