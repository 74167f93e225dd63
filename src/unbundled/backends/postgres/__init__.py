"""The PostgreSQL backend (psycopg 3): the event store shared by many
processes on many hosts through one database.

* Appends are group-committed by one writer thread per backend (``_writer``):
  many appends, one transaction; under load one round trip per transaction.
* Positions are assigned under a row lock on one counter row, taken as the
  last statement before COMMIT: writers commit one at a time in position
  order, so positions are dense and a reader never skips an event that
  commits later (docs/how-to/eventstore-postgres.md says why this design).
* Reads run on a small connection pool; waiting for new events uses
  LISTEN/NOTIFY (``_notify``), with a polling fallback.
* Idempotency keys (``_idempotency``): one statement per transition; the
  effects of a request commit with its result, event appends included.
* Units of work (``_unit``): those holding only events, idempotency
  results or phases and key-value changes are group-committed by the
  writer with the appends (``_unit_stage``); those with SQL or effects run
  one transaction each on a pooled connection.
* The linearizable key-value store (``_kv``): one statement per operation,
  compare-and-set as a conditional UPDATE; linearizable on one primary.

* The log (``_log``, ``_log_groups``): records group-committed by a writer
  thread of its own (``_log_writer``), offsets per partition dense and in
  commit order under the partition row's lock (``_log_stage``), idempotent
  producers, consumer groups with leases and generations, committed offsets
  fenced in the same transaction as the records, retention and compaction
  (``_log_maintain``), LISTEN/NOTIFY to wake tailing readers. Units of work
  with records or offsets commit them with their other parts in one
  transaction (``_unit``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..._ground import SyncLevel, now_ms
from ...errors import UsageError
from ._destroy import destroy
from ._events import PostgresEvents
from ._idempotency import PostgresIdempotency
from ._kv import PostgresKV
from ._log import PostgresLog
from ._log_groups import PostgresLogGroups
from ._notify import Notifier
from ._projections import PostgresProjections
from ._schema import (
    SYNCHRONOUS_COMMIT,
    Conn,
    Pool,
    connect,
    create_schema,
    display_url,
    parse_url,
)
from ._unit import PostgresUnit
from ._writer import Writer

POOL_SIZE_DEFAULT = 4


class PostgresBackend(
    PostgresLog,
    PostgresLogGroups,
    PostgresEvents,
    PostgresProjections,
    PostgresIdempotency,
    PostgresKV,
    PostgresUnit,
):
    """The log, the event store, idempotency keys and the key-value store in
    one PostgreSQL schema.

    ``url`` is ``postgresql://user@host:port/db?schema=name`` (any libpq
    parameters may follow; ``schema`` defaults to ``unbundled`` and is
    created with its tables if missing). ``sync`` sets durability:

    * ``"full"`` (default): ``synchronous_commit = on``; an append returns
      after its commit is flushed to the server's WAL.
    * ``"normal"`` / ``"off"``: ``synchronous_commit = off``; a server crash
      may lose the last fraction of a second of appends (never corrupt them).

    ``pool_size`` bounds the connections used for reads and other writes;
    the event writer, the log writer (from the first append) and the
    listener have one each.
    """

    def __init__(
        self,
        url: str,
        *,
        sync: SyncLevel = "full",
        clock: Callable[[], int] = now_ms,
        pool_size: int = POOL_SIZE_DEFAULT,
    ) -> None:
        if sync not in SYNCHRONOUS_COMMIT:
            raise UsageError(f"sync must be 'full', 'normal' or 'off', got {sync!r}", sync=sync)
        conninfo, schema = parse_url(url)
        self.url = url
        self.schema = schema
        self.sync = sync
        self.clock = clock
        self.channel = f"unbundled_{schema}"[:63]
        self._where = display_url(url)
        self._closed = False
        self._handling = threading.local()

        def connect_new() -> Conn:
            return connect(conninfo, sync, self._where, schema)

        conn = connect_new()
        try:
            create_schema(conn, schema, self._where)
        except BaseException:
            conn.close()
            raise
        self._connect_new = connect_new
        self._pool = Pool(connect_new, self._where, pool_size)
        self._notifier = Notifier(connect_new, self.channel, self.safe_position)
        self._writer = Writer(
            conn,
            connect_new,
            schema,
            self.channel,
            self._where,
            clock,
            self._notifier.bump,
            self._notifier.bump_keys,
            self._notifier.bump_log,
        )

    def __repr__(self) -> str:
        return f"PostgresBackend({self._where!r})"

    def close(self) -> None:
        """Commit the appends already queued, then close every connection. Idempotent."""
        if self._closed:
            return
        self._writer.close()
        self._close_log()
        self._close_units()  # the asyncio callers' transactions running now finish first
        self._closed = True
        self._notifier.close()
        self._pool.close()


__all__ = ["PostgresBackend", "destroy"]
