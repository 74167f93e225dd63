"""The log part of the SQLite backend. One database file in WAL mode.

All writes go through one group-commit writer thread per process (see
``_writer``); reads use one connection per reading thread and never block the
writer. Other processes may open the same file: SQLite's lock serialises their
writers, and ``PRAGMA data_version`` tells waiting readers about their commits.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import msgspec

from ... import limits
from ..._bounds import check_optional_seconds
from ..._ground import SyncLevel, Waiter
from ..._ground.waiters import SyncWaiter
from ...errors import (
    Closed,
    CorruptionError,
    Error,
    LimitExceeded,
    NotFound,
    TopicExists,
    Unavailable,
    UsageError,
)
from ...log import _core, _groups
from ...log._protocol import (
    GroupInfo,
    MaintenanceReport,
    MemberView,
    Position,
    Record,
    TopicConfig,
    TopicInfo,
    TopicPartition,
    WriteBatch,
)
from . import _group_rows, _log_read
from ._errors import translate, translated
from ._integrity import row_crc
from ._log_stage import Stage
from ._maintain import maintain as _maintain
from ._readonly import ReadOnlyWriter, check_read_only_file, read_only_connector
from ._schema import (
    connect,
    open_file,
    records_ddl,
    records_format,
    records_table,
)
from ._writer import ExtraStage, Request, Writer

_decode_positions = msgspec.json.Decoder(list[tuple[str, int, int]]).decode
_WATCH_INTERVAL_S = 0.05


class _Read:
    """The context manager of ``SqliteLog._reading``: a class, not a
    generator, because every read goes through it."""

    __slots__ = ("_log",)

    def __init__(self, log: SqliteLog) -> None:
        self._log = log

    def __enter__(self) -> sqlite3.Connection:
        log = self._log
        with log._reads_lock:
            if log._closed:
                raise Closed(f"the log at {log.path} is closed")
            log._reads += 1
        try:
            return log._reader()
        except BaseException:
            self._done()
            raise

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        self._done()
        if isinstance(error, sqlite3.Error):
            raise translate(error, self._log.path) from error
        if isinstance(error, UnicodeDecodeError):
            with translated(self._log.path):
                raise error

    def _done(self) -> None:
        log = self._log
        with log._reads_lock:
            log._reads -= 1
            if not log._reads:
                log._reads_lock.notify_all()


# How long close() lets the reads in progress finish before interrupting them.
_READS_WAIT_S = 5.0


class SqliteLog:
    """A log stored in one SQLite file. ``sync`` sets durability:

    * ``"full"`` (default): each commit is fsynced before callers return;
      survives power loss.
    * ``"normal"``: no fsync at commit; survives a process crash; a power loss
      may lose the newest commits (a suffix, never one in the middle) and
      leaves the file intact (``tests/lazyfs/test_power_cut_parts.py``).
    * ``"off"``: no fsync at all; for tests and scratch data.

    ``maintenance_interval_s`` (0 < seconds <= ``limits.wait_s_max``): how
    often the idle writer applies retention and compaction; ``None``: never
    (call :meth:`maintain`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: SyncLevel = "full",
        clock: Callable[[], int] = _core.now_ms,
        maintenance_interval_s: float | None = 60.0,
        read_only: bool = False,
    ) -> None:
        if sync not in ("full", "normal", "off"):
            raise UsageError(f"sync must be 'full', 'normal' or 'off', got {sync!r}", sync=sync)
        check_optional_seconds("maintenance_interval_s", maintenance_interval_s, positive=True)
        self.path = os.fspath(path)
        self.url = f"sqlite:///{self.path}"
        self.sync = sync
        self.clock = clock
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._reads = 0  # reads in progress (see _reading)
        self._reads_lock = threading.Condition()
        self._read_guard = _Read(self)
        self._changed = threading.Condition()
        self._token = 0
        self._closed = False
        self.read_only = read_only
        if read_only:  # nothing created, migrated or written (see _readonly)
            self._connect_reader = read_only_connector(self.path, sync)
            self._watch = self._connect_reader()
            check_read_only_file(self._watch, self.path)
            self._watch_version = self._data_version()
            self._maintenance_interval_s = None
            self._writer = cast(Writer, ReadOnlyWriter(self._connect_reader(), self.path))
            return
        conn = connect(self.path, sync)
        try:
            open_file(conn, self.path, clock)
        except BaseException:
            conn.close()
            raise
        self._connect_reader = lambda: connect(self.path, sync, readonly=True)
        self._watch = self._connect_reader()
        self._watch_version = self._data_version()
        self._maintenance_interval_s = maintenance_interval_s
        self._last_maintenance = time.monotonic()
        self._writer = Writer(
            conn,
            self.path,
            self._apply_full,
            self._on_commit,
            idle=self._auto_maintain if maintenance_interval_s else None,
            extra_stage=self._extra_stage(),
        )

    def _extra_stage(self) -> Callable[[sqlite3.Connection, Stage], ExtraStage] | None:
        """A second stage for the writer's transactions; the full backend adds
        the event store's."""
        return None

    # --- plumbing -------------------------------------------------------------

    def _reading(self) -> _Read:
        """This thread's reader connection, for one read (``with
        self._reading() as conn:``), driver errors translated. ``close``
        waits for the reads in progress before it closes their connections:
        closing a connection another thread is stepping a statement on
        crashes the process (CPython's sqlite3)."""
        return self._read_guard

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise Closed(f"the log at {self.path} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect_reader()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _call(self, fn: Callable[[sqlite3.Connection, Stage], Any]) -> Any:
        """Run ``fn`` in the writer's transaction (atomic, group-committed)."""
        waiter = SyncWaiter()
        self._writer.submit(Request(None, fn, waiter))
        return waiter.wait()

    def _on_commit(self) -> None:
        with self._changed:
            self._token += 1
            self._changed.notify_all()

    def _data_version(self) -> int:
        with self._reading():  # counted as a read, so close() waits for it too
            return int(self._watch.execute("PRAGMA data_version").fetchone()[0])

    def _auto_maintain(self) -> None:
        interval = self._maintenance_interval_s
        if interval is None or time.monotonic() - self._last_maintenance < interval:
            return
        self._last_maintenance = time.monotonic()
        self._writer_maintain_inline()

    def _writer_maintain_inline(self) -> None:
        # Runs on the writer thread itself, between batches. Another process
        # holding the write lock only postpones it; any other failure stops
        # the writer (it rolls back and tells every caller: ThreadFailed).
        conn = self._writer._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            removed = _maintain(conn, self.clock(), self.path)
            conn.execute("COMMIT")
        except (sqlite3.Error, Error) as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = translate(exc, self.path) if isinstance(exc, sqlite3.Error) else exc
            if isinstance(error, Unavailable | CorruptionError):
                # Busy: the next idle pass tries again. Damaged: the next read
                # or an explicit maintain() reports it to a caller; the writer
                # goes on serving the parts of the file that are sound.
                return
            if error is exc:
                raise
            raise error from exc
        if removed:
            self._on_commit()

    # --- topics ---------------------------------------------------------------

    def create_topic(self, name: str, config: TopicConfig) -> None:
        def create(conn: sqlite3.Connection, stage: Stage) -> None:
            if conn.execute("SELECT 1 FROM topics WHERE name = ?", (name,)).fetchone():
                raise TopicExists(f"topic {name!r} already exists", topic=name)
            count = conn.execute("SELECT count(*) FROM topics").fetchone()[0]
            if count >= limits.topics_max:
                raise LimitExceeded(f"at most {limits.topics_max} topics", topic=name)
            compact = config.cleanup_policy == "compact"
            raw, created = msgspec.json.encode(config).decode(), self.clock()
            fmt = records_format(compact)
            cur = conn.execute(
                "INSERT INTO topics(name, partitions, config, created_ms, records_format) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, config.partitions, raw, created, fmt),
            )
            tid = int(cur.lastrowid or 0)
            crc = row_crc("topics", tid, name, config.partitions, raw, created, fmt)
            conn.execute("UPDATE topics SET crc = ? WHERE id = ?", (crc, tid))
            for p in range(config.partitions):
                for ddl in records_ddl(tid, p, compact):
                    conn.execute(ddl)
                conn.execute("INSERT INTO partitions VALUES (?, ?, 0, 0, 0, 0)", (tid, p))
            stage.forget_topics()

        self._call(create)

    def delete_topic(self, name: str) -> None:
        def delete(conn: sqlite3.Connection, stage: Stage) -> None:
            stage.flush()
            tid, config = stage.topic(name)
            for p in range(config.partitions):
                conn.execute(f"DROP TABLE {records_table(tid, p)}")
            conn.execute("DELETE FROM partitions WHERE topic_id = ?", (tid,))
            conn.execute("DELETE FROM removed_ranges WHERE topic_id = ?", (tid,))
            conn.execute("DELETE FROM topics WHERE id = ?", (tid,))
            conn.execute("DELETE FROM group_offsets WHERE topic = ?", (name,))
            stage.forget_topics()

        self._call(delete)

    def list_topics(self) -> list[str]:
        with self._reading() as conn:
            conn.execute("BEGIN")
            try:
                return [topic.name for topic in _log_read.all_topics(conn, self.path)]
            finally:
                conn.execute("COMMIT")

    def _topic_row(self, conn: sqlite3.Connection, name: str) -> tuple[int, TopicConfig]:
        topic = _log_read.topic_row(conn, self.path, name)
        return topic.id, topic.config

    def topic_config(self, name: str) -> TopicConfig:
        with self._reading() as conn:
            return self._topic_row(conn, name)[1]

    def describe_topic(self, name: str) -> TopicInfo:
        with self._reading() as conn:
            conn.execute("BEGIN")
            try:
                tid, config = self._topic_row(conn, name)
                infos = _log_read.partition_infos(conn, self.path, tid, name, config.partitions)
            finally:
                conn.execute("COMMIT")
        return TopicInfo(name, config, infos)

    def offset_bounds(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        out: dict[TopicPartition, tuple[int, int]] = {}
        with self._reading() as conn:
            conn.execute("BEGIN")
            try:
                ids: dict[str, tuple[int, TopicConfig]] = {}
                for tp in tps:
                    if tp.topic not in ids:
                        ids[tp.topic] = self._topic_row(conn, tp.topic)
                    tid, config = ids[tp.topic]
                    _core.check_partition(tp.topic, tp.partition, config.partitions)
                    row = _log_read.partition_row(conn, self.path, tid, tp.topic, tp.partition)
                    out[tp] = row[:2]
            finally:
                conn.execute("COMMIT")
        return out

    # --- writing --------------------------------------------------------------

    def submit(self, batch: WriteBatch, done: Waiter) -> None:
        self._writer.submit(Request(batch, None, done))

    def _apply_full(self, conn: sqlite3.Connection, stage: Stage, batch: WriteBatch) -> object:
        """A batch with a producer stamp or offset commits, inside a SAVEPOINT."""
        stamp = batch.producer
        if stamp is not None:
            row = conn.execute(
                "SELECT epoch, last_sequence FROM producers WHERE producer_id = ?",
                (stamp.producer_id,),
            ).fetchone()
            epoch, last = (row[0], row[1]) if row is not None else (None, -1)
            window: dict[int, list[Position]] = {}
            if stamp.sequence <= last:
                seen = conn.execute(
                    "SELECT positions FROM producer_window WHERE producer_id = ? AND sequence = ?",
                    (stamp.producer_id, stamp.sequence),
                ).fetchone()
                if seen is not None:
                    window[stamp.sequence] = [Position(*p) for p in _decode_positions(seen[0])]
            duplicate = _core.check_sequence(stamp, epoch, last, window)
            if duplicate is not None:
                return duplicate
        now = self.clock()
        for commit in batch.commits:
            _groups.check_commit(_group_rows.load(conn, commit.group), commit)
            for tp, offset in commit.offsets.items():
                _, config = stage.topic(tp.topic)
                _core.check_partition(tp.topic, tp.partition, config.partitions)
                conn.execute(
                    "INSERT INTO group_offsets VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(grp, topic, partition) DO UPDATE SET "
                    "next_offset = excluded.next_offset, committed_ms = excluded.committed_ms",
                    (commit.group, tp.topic, tp.partition, offset, now),
                )
        positions = stage.stage(batch)
        if stamp is not None:
            conn.execute(
                "UPDATE producers SET last_sequence = ? WHERE producer_id = ?",
                (stamp.sequence, stamp.producer_id),
            )
            conn.execute(
                "INSERT INTO producer_window VALUES (?, ?, ?)",
                (
                    stamp.producer_id,
                    stamp.sequence,
                    msgspec.json.encode([(p.topic, p.partition, p.offset) for p in positions]),
                ),
            )
            conn.execute(
                "DELETE FROM producer_window WHERE producer_id = ? AND sequence <= "
                "(SELECT sequence FROM producer_window WHERE producer_id = ? "
                "ORDER BY sequence DESC LIMIT 1 OFFSET ?)",
                (stamp.producer_id, stamp.producer_id, limits.producer_window_requests_max),
            )
        return positions

    # --- reading --------------------------------------------------------------

    def read(
        self, topic: str, partition: int, offset: int, records_max: int, bytes_max: int
    ) -> list[Record]:
        with self._reading() as conn:
            conn.execute("BEGIN")  # one snapshot: the rows and what they are checked against
            try:
                return _log_read.read_partition(
                    conn, self.path, topic, partition, offset, records_max, bytes_max
                )
            finally:
                conn.execute("COMMIT")

    def change_token(self) -> int:
        self._poll_watch()
        with self._changed:
            return self._token

    def _poll_watch(self) -> None:
        with self._changed:
            if self._closed:
                return
            version = self._data_version()
            if version != self._watch_version:
                self._watch_version = version
                self._token += 1
                self._changed.notify_all()

    def wait_for_change(self, token: int, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._changed:
                if self._token != token or self._closed:
                    return self._token
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self._token
                # Local commits notify at once; other processes' commits are
                # seen by polling data_version, a cheap in-memory check.
                self._changed.wait(min(remaining, _WATCH_INTERVAL_S))
            self._poll_watch()

    # --- producers ------------------------------------------------------------

    def init_producer(self, producer_id: str) -> tuple[int, int]:
        def init(conn: sqlite3.Connection, stage: Stage) -> tuple[int, int]:
            row = conn.execute(
                "SELECT epoch, last_sequence FROM producers WHERE producer_id = ?", (producer_id,)
            ).fetchone()
            epoch, last = (row[0] + 1, row[1]) if row is not None else (1, -1)
            conn.execute(
                "INSERT INTO producers VALUES (?, ?, ?) ON CONFLICT(producer_id) "
                "DO UPDATE SET epoch = excluded.epoch",
                (producer_id, epoch, last),
            )
            return epoch, last

        result: tuple[int, int] = self._call(init)
        return result

    # --- consumer groups ------------------------------------------------------

    def _partition_counts(
        self, conn: sqlite3.Connection, state: _groups.GroupState, extra: tuple[str, ...] = ()
    ) -> dict[str, int]:
        topics = {t for m in state.members.values() for t in m.topics} | set(extra)
        counts = {}
        for name in topics:
            row = conn.execute("SELECT partitions FROM topics WHERE name = ?", (name,)).fetchone()
            if row is not None:
                counts[name] = row[0]
        return counts

    def group_join(
        self,
        group: str,
        member_id: str,
        topics: tuple[str, ...],
        lease_ms: int,
        instance_id: str | None = None,
        replace: bool = False,
    ) -> MemberView:
        def join(conn: sqlite3.Connection, stage: Stage) -> MemberView:
            for t in topics:
                stage.topic(t)
            state = _group_rows.load(conn, group)
            view = _groups.join(
                state,
                member_id,
                topics,
                lease_ms,
                self.clock(),
                self._partition_counts(conn, state, topics),
                instance_id,
                replace,
            )
            _group_rows.save(conn, state)
            return view

        result: MemberView = self._call(join)
        return result

    def group_heartbeat(self, group: str, member_id: str, acked_generation: int) -> MemberView:
        def beat(conn: sqlite3.Connection, stage: Stage) -> MemberView:
            state = _group_rows.load(conn, group)
            view = _groups.heartbeat(
                state,
                member_id,
                acked_generation,
                self.clock(),
                self._partition_counts(conn, state),
            )
            _group_rows.save(conn, state)
            return view

        result: MemberView = self._call(beat)
        return result

    def group_version(self, group: str) -> int:
        with self._reading() as conn:
            row = conn.execute("SELECT version FROM groups WHERE name = ?", (group,)).fetchone()
        return int(row[0]) if row is not None else 0

    def group_leave(self, group: str, member_id: str) -> None:
        def leave(conn: sqlite3.Connection, stage: Stage) -> None:
            state = _group_rows.load(conn, group)
            _groups.leave(state, member_id, self._partition_counts(conn, state))
            _group_rows.save(conn, state)

        self._call(leave)

    def committed(self, group: str) -> dict[TopicPartition, int]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT topic, partition, next_offset FROM group_offsets WHERE grp = ? "
                "ORDER BY topic, partition",
                (group,),
            ).fetchall()
        return {TopicPartition(t, p): o for t, p, o in rows}

    def list_groups(self) -> list[str]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT grp FROM group_members UNION SELECT grp FROM group_offsets ORDER BY 1"
            ).fetchall()
        return [r[0] for r in rows]

    def describe_group(self, group: str) -> GroupInfo:
        with self._reading() as conn:
            conn.execute("BEGIN")
            try:
                state = _group_rows.load(conn, group)
                committed = self.committed(group)
            finally:
                conn.execute("COMMIT")
        if not state.members and not committed and state.generation == 0:
            raise NotFound(f"group {group!r} does not exist", group=group)
        return _groups.describe(state, committed)

    # --- maintenance and lifecycle --------------------------------------------

    def maintain(self) -> MaintenanceReport:
        result: dict[str, int] = self._call(
            lambda conn, stage: _maintain(conn, self.clock(), self.path)
        )
        return MaintenanceReport(result)

    def close(self) -> None:
        if self._closed:
            return
        self._writer.close()
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._writer._conn.close()
        with self._reads_lock:
            self._closed = True  # (set above too) no new read starts from here
            # A read is a statement or two; one stuck longer is interrupted.
            if not self._reads_lock.wait_for(lambda: not self._reads, _READS_WAIT_S):
                with self._readers_lock:
                    for conn in self._readers:
                        conn.interrupt()
                self._reads_lock.wait_for(lambda: not self._reads)
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._watch.close()
