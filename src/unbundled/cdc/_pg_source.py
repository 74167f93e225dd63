"""PostgreSQL as a capture source: a pgoutput slot, its exported snapshot, heartbeats.

First run: the slot is created over a replication connection with ``EXPORT_SNAPSHOT``;
the tables are read in that very snapshot (so the rows and the stream meet with no gap
and no overlap) and only then is streaming started on the same connection. The snapshot's
rows are placed at (consistent point - 1, 1..n): before every streamed transaction, whose
commits lie at or after the consistent point.

Confirming: a transaction's end LSN is sent as the flushed position only once every one of
its changes is stored (`confirm`). An idle slot is kept moving by a non-transactional
logical message written every ``heartbeat_s`` seconds: when it comes back and nothing is
pending, its LSN is confirmed, so WAL written for other tables is not retained.

Incremental snapshots: given a `Task` (`set_incremental`), each poll with no chunk in
flight reads the next chunk between two watermarks (`_pg_incremental`) and returns its
rows when the high watermark comes back through the stream; `take_chunk_done` then says
what to store with them.
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
from collections import deque
from typing import Any

from ..errors import CorruptionError, NotFound, NotSupported, Unavailable, UsageError
from . import _pg_admin as admin
from . import _pgoutput as pgo
from ._change import Change, SourcePosition
from ._incremental import ChunkDone, Task
from ._pg_incremental import HIGH_PREFIX, LOW_PREFIX, Chunk, read_chunk
from ._pg_snapshot import SnapshotReader
from ._pgchanges import Relations, Transaction, insert_changes, to_changes

HEARTBEAT_PREFIX = "unbundled.heartbeat"
_log = logging.getLogger(__name__)
_PG_EPOCH_UNIX_S = 946_684_800  # 2000-01-01, PostgreSQL's timestamp epoch


_ROWS = pgo.Insert | pgo.Update | pgo.Delete | pgo.Truncate | pgo.LogicalMessage


def _now_pg_us() -> int:
    return int((time.time() - _PG_EPOCH_UNIX_S) * 1_000_000)


class PostgresSource:
    """The `Source` of a connector on a PostgreSQL database (needs ``unbundled[cdc]``)."""

    def __init__(
        self,
        url: str,
        *,
        connector: str,
        tables: list[str] | None = None,
        heartbeat_s: float = 10.0,
        status_interval_s: float = 10.0,
        attach_wait_s: float = 30.0,
    ) -> None:
        self.url = url
        self.connector = connector
        self.tables = tables
        self.heartbeat_s = heartbeat_s
        self.status_interval_s = status_interval_s
        # A runner killed a moment ago still holds the slot until the server notices.
        self.attach_wait_s = attach_wait_s
        self.slot = admin.object_name(connector)
        self._rconn: Any = None
        self._cur: Any = None
        self._relations = Relations()
        self._snapshot: SnapshotReader | None = None
        self._snapshot_done = True
        # The open transaction: protocol 1 sends a transaction only once it committed, and
        # its Begin already carries the commit LSN that places its changes.
        self._txn: Transaction | None = None
        # Transactions returned but not yet confirmed: (commit LSN, last index, end LSN).
        self._pending: deque[tuple[int, int, int]] = deque()
        self._flushed = 0
        self._heartbeat_at = 0.0
        self._hb_conn: Any = None
        self._after: SourcePosition | None = None
        self._db_name = ""
        self._task: Task | None = None
        self._chunk_size = 1024
        self._chunk: Chunk | None = None
        self._chunk_done: ChunkDone | None = None
        self._end_poll = False  # a chunk's rows came: return them now, with its progress
        self._closing: Chunk | None = None  # its high watermark's transaction is open

    # -- install / remove ------------------------------------------------------------

    def install(self) -> None:
        admin.check_source(self.url)
        tables = admin.tables_of(self.url, self.tables)
        if not tables:
            raise UsageError("the CDC source has no table to capture")
        admin.create_publication(self.url, self.connector, tables)

    def remove(self) -> None:
        self.close()
        admin.drop_slot(self.url, self.connector)
        admin.drop_publication(self.url, self.connector)

    # -- streaming -------------------------------------------------------------------

    def _replication_connection(self) -> Any:
        try:
            import psycopg2
            import psycopg2.extras
        except ImportError as exc:  # pragma: no cover - the extra is part of dev
            raise UsageError("CDC from PostgreSQL needs: pip install 'unbundled[cdc]'") from exc
        try:
            conn = psycopg2.connect(
                self.url,
                connection_factory=psycopg2.extras.LogicalReplicationConnection,
                options=admin.SESSION_OPTIONS,
                connect_timeout=10,
            )
        except psycopg2.OperationalError as exc:
            raise Unavailable(f"cannot open a replication connection: {exc}") from exc
        return conn

    def open(self, after: SourcePosition | None, *, snapshot: bool) -> None:
        self.close()
        self._after = after
        self._rconn = self._replication_connection()
        self._db_name = self._rconn.info.dbname
        self._cur = self._rconn.cursor()
        self._relations = Relations()
        for (schema, table), columns in admin.primary_keys(self.url, self.connector).items():
            self._relations.set_primary_key(schema, table, columns)
        info = admin.wait_inactive(self.url, self.connector, self.attach_wait_s)
        if info is not None and snapshot:
            # A snapshot that did not finish: its exported snapshot died with the runner.
            # Start over with a new slot (rows already stored are dropped by position if
            # nothing changed, else written again with the newer snapshot's positions).
            admin.drop_slot(self.url, self.connector)
            info = None
        if info is None:
            if after is not None and not snapshot:
                raise NotFound(
                    f"the replication slot {self.slot} of connector {self.connector!r} is gone, "
                    f"while changes after {after} were never confirmed: they may be lost; "
                    "remove the connector and add it again to start from a new snapshot"
                )
            self._create_slot(snapshot, restart=after is not None)
        self._start()

    def _create_slot(self, snapshot: bool, *, restart: bool) -> None:
        cur = self._cur
        mode = "EXPORT_SNAPSHOT" if snapshot else "NOEXPORT_SNAPSHOT"
        cur.execute(f'CREATE_REPLICATION_SLOT "{self.slot}" LOGICAL pgoutput {mode}')
        _, consistent_point, snapshot_name, _ = cur.fetchone()
        if snapshot:
            point = admin.lsn_int(consistent_point)
            assert point is not None
            reader = SnapshotReader(
                self.url,
                snapshot_name,
                admin.tables_of(self.url, self.tables),
                position=point - 1,
                db=self._db_name,
                truncate_first=restart,
            )
            self._snapshot = reader
            self._snapshot_done = False
            reader.start()

    def _start(self) -> None:
        if self._snapshot is not None and not self._snapshot_done:
            return  # streaming starts once the snapshot is read (the same connection holds it)
        self._cur.start_replication(
            slot_name=self.slot,
            decode=False,
            options={
                "proto_version": "1",
                "publication_names": self.slot,
                "messages": "true",
            },
            status_interval=self.status_interval_s,
        )

    def snapshot_done(self) -> bool:
        return self._snapshot_done

    def poll(self, timeout_s: float, limit: int) -> list[Change]:
        if self._cur is None:
            raise UsageError("the PostgreSQL source is not open")
        if self._snapshot is not None and not self._snapshot_done:
            rows = self._snapshot.read(limit)
            if self._snapshot.done:
                self._snapshot.close()
                self._snapshot = None
                self._snapshot_done = True
                self._start()
            return rows
        out: list[Change] = []
        idle = self._chunk is None and self._closing is None and self._chunk_done is None
        if self._task is not None and idle:
            self._start_chunk()
            if self._chunk_done is not None:
                return out  # the table is exhausted: only its progress to store
        self._end_poll = False
        deadline = time.monotonic() + timeout_s
        while len(out) < limit and not self._end_poll:
            self._heartbeat()
            message = self._cur.read_message()
            if message is None:
                if out and self._txn is None:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                select.select([self._cur], [], [], min(left, self.heartbeat_s))
                continue
            self._handle(bytes(message.payload), message.data_start, out)
        return out

    def _handle(self, payload: bytes, lsn: int, out: list[Change]) -> None:
        if payload[:1] == b"I" and self._txn is not None:
            # Most messages: an insert read straight into its change (None: not simple).
            changes = insert_changes(payload, self._relations, self._txn, lsn=lsn)
            if changes is not None:
                self._keep(changes, out)
                return
        message = pgo.decode(payload)
        if type(message) is pgo.Insert and self._txn is not None:
            # The commonest message first, before the isinstance chain below.
            self._keep(to_changes(message, self._relations, self._txn, lsn=lsn), out)
        elif isinstance(message, pgo.Begin):
            self._txn = Transaction(
                self._db_name, message.final_lsn, message.commit_ts, message.xid
            )
        elif isinstance(message, pgo.Commit):
            if self._txn is None:
                raise CorruptionError(f"a Commit at {lsn} without its Begin")
            txn = self._txn
            self._txn = None
            self._commit(txn, message.end_lsn, out)
        elif isinstance(message, pgo.Relation):
            self._relations.apply(message)
        elif isinstance(message, pgo.Type):
            self._relations.apply_type(message)
        elif isinstance(message, pgo.Origin):
            pass  # where a replicated transaction came from: nothing to store
        elif isinstance(message, pgo.LogicalMessage) and message.prefix in (
            LOW_PREFIX,
            HIGH_PREFIX,
        ):
            self._watermark(message, lsn, out)  # never stored, matched or not
        elif isinstance(message, pgo.LogicalMessage) and not message.transactional:
            if message.prefix == HEARTBEAT_PREFIX:
                if self._txn is None and not self._pending:
                    self._feedback(lsn)
                return
            # A message outside any transaction is a transaction of its own, placed at
            # lsn - 1: the walsender sends it with the LSN where its record ends, where a
            # commit streamed next may begin (at lsn it would share that commit's first
            # position, and the sink would drop the commit's first row as a replay).
            alone = Transaction(self._db_name, lsn - 1, _now_pg_us(), None)
            self._keep(to_changes(message, self._relations, alone, lsn=lsn), out)
            self._pending.append((lsn - 1, 0, lsn - 1))
        elif isinstance(message, _ROWS):
            if self._txn is None:
                raise CorruptionError(f"a {type(message).__name__} at {lsn} outside a transaction")
            changes = to_changes(message, self._relations, self._txn, lsn=lsn)
            if self._chunk is not None:
                for change in changes:
                    self._chunk.saw(change)
            self._keep(changes, out)
        else:
            raise CorruptionError(
                f"pgoutput sent a {type(message).__name__} at {lsn}, which protocol 1 never sends"
            )

    def _commit(self, txn: Transaction, end_lsn: int, out: list[Change]) -> None:
        last_index = txn.next_index - 1
        if self._closing is not None:  # the high watermark's transaction
            # It holds nothing else: the rows take its commit LSN with indexes 1..n, and
            # are confirmed with its commit.
            rows, self._chunk_done = self._closing.finish(txn.commit_lsn)
            self._closing = None
            self._end_poll = True
            out.extend(rows)
            last_index = len(rows) if rows else last_index
        if last_index < 0 and not self._pending:
            # Nothing in it to store (a watermark, or a chunk the stream emptied) and
            # nothing before it waits: confirmed like a heartbeat. Behind others, it is
            # confirmed with them (`confirm` passes empty ones at the head of the queue).
            self._feedback(end_lsn)
            return
        self._pending.append((txn.commit_lsn, last_index, end_lsn))

    # -- incremental snapshots -------------------------------------------------------

    def set_incremental(self, task: Task | None, chunk_size: int) -> None:
        """Read ``task``'s table chunk by chunk from the next poll on (None: stop).
        A chunk in flight for another table (or another request) is dropped."""
        self._chunk_size = chunk_size
        for chunk in (self._chunk, self._closing):
            if chunk is not None and (task is None or task.seq != chunk.task.seq):
                self._chunk = self._closing = None
        self._task = task

    def take_chunk_done(self) -> ChunkDone | None:
        """The chunk whose rows the last poll returned (or whose table was exhausted):
        its progress must be stored with them. The next chunk waits for a new task."""
        done, self._chunk_done = self._chunk_done, None
        if done is not None:
            self._task = None
        return done

    def _start_chunk(self) -> None:
        assert self._task is not None
        if self._hb_conn is None:
            self._hb_conn = admin._connect(self.url)
        try:
            chunk = read_chunk(self._hb_conn, self._task, self._chunk_size, self._db_name)
        except (NotFound, NotSupported) as exc:
            # Dropped, or its key dropped, since it was asked for: failing here would fail
            # again at every restart, so the table is passed over (and said so).
            _log.warning(
                "cdc %s: incremental snapshot of %s stopped: %s",
                self.connector,
                self._task.name,
                exc,
            )
            self._chunk_done = ChunkDone(self._task, None, 0)
            return
        if chunk.selected == 0:
            # Nothing after the last key: the watermarks just written are ignored.
            self._chunk_done = ChunkDone(self._task, None, 0)
        else:
            self._chunk = chunk

    def _watermark(self, message: pgo.LogicalMessage, lsn: int, out: list[Change]) -> None:
        chunk = self._chunk
        if chunk is None or message.content.decode(errors="replace") != chunk.mark:
            return  # an earlier runner's chunk (replayed) or a dropped one: nothing to do
        if message.prefix == LOW_PREFIX:
            chunk.in_window = True
            return
        self._chunk = None  # the window is closed
        if self._txn is not None:
            # The high watermark is a transaction of its own (its commit flushes the WAL,
            # so the stream brings it at once): the rows come at its Commit.
            self._closing = chunk
            return
        # A non-transactional mark comes with the LSN where its record ends, where a
        # commit streamed next may begin: lsn - 1 sorts between the two.
        rows, self._chunk_done = chunk.finish(lsn - 1)
        if rows:
            self._pending.append((lsn - 1, len(rows), lsn - 1))
        out.extend(rows)
        self._end_poll = True

    def _keep(self, changes: list[Change], out: list[Change]) -> None:
        """Add the changes not already stored (a replay after a restart starts earlier)."""
        after = self._after
        if after is None:
            out.extend(changes)
        else:
            out.extend(c for c in changes if c.position > after)

    def confirm(self, position: SourcePosition) -> None:
        flush = None
        while self._pending:
            commit_lsn, last_index, end_lsn = self._pending[0]
            if (commit_lsn, last_index) > (position.commit, position.index):
                break
            flush = end_lsn
            self._pending.popleft()
        if flush is not None:
            while self._pending and self._pending[0][1] < 0:  # empty: nothing to wait for
                flush = self._pending.popleft()[2]
            self._feedback(flush)

    def _feedback(self, flush: int) -> None:
        if flush > self._flushed and self._cur is not None:
            self._flushed = flush
            self._cur.send_feedback(write_lsn=flush, flush_lsn=flush, apply_lsn=flush, force=True)

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._heartbeat_at < self.heartbeat_s:
            return
        self._heartbeat_at = now
        if self._hb_conn is None:
            self._hb_conn = admin._connect(self.url)
        self._hb_conn.execute("SELECT pg_logical_emit_message(false, %s, '')", (HEARTBEAT_PREFIX,))

    def status(self) -> dict[str, Any]:
        info = admin.slot_info(self.url, self.connector)
        if info is None:
            return {"slot": None}
        return {
            "slot": info.name,
            "active": info.active,
            "confirmed_flush_lsn": None
            if info.confirmed_flush_lsn is None
            else admin.lsn_text(info.confirmed_flush_lsn),
            "lag_bytes": info.lag_bytes,
            "retained_wal_bytes": info.retained_bytes,
        }

    def close(self) -> None:
        if self._snapshot is not None:
            self._snapshot.close()
            self._snapshot = None
        for conn in (self._rconn, self._hb_conn):
            if conn is not None:
                with contextlib.suppress(Exception):  # a dead connection: nothing to free
                    conn.close()
        self._rconn = self._cur = self._hb_conn = None
        self._txn = None
        self._pending.clear()
        self._chunk = self._chunk_done = self._task = self._closing = None
