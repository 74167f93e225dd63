"""The capture loop: poll the source, store in the log, then (and only then) confirm.

The order is the whole guarantee. A batch is confirmed to the source only after the
transaction that appended it and stored its position has committed; a crash anywhere in
between makes the source replay from its last confirmed point, and the sink drops what it
already holds by position. So no change is lost (the source keeps it until confirmed) and
none is stored twice (the position check), whatever the moment of the crash.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import Error
from . import _incremental as incremental
from ._change import Change, SourcePosition
from ._connector import ConnectorConfig
from ._sink import LogSink
from ._source import Source

if TYPE_CHECKING:
    from ..database import Database

POLL_S = 0.5
REQUEST_CHECK_S = 0.5  # how often an idle runner looks for a new snapshot request

_log = logging.getLogger(__name__)


@dataclass
class Progress:
    """What a runner did so far (`cdc run`'s live status)."""

    changes: int = 0  # appended to the log by this runner
    skipped: int = 0  # replays dropped by position
    batches: int = 0
    position: SourcePosition | None = None
    snapshot_done: bool = False
    lag_ms: float | None = None  # now - the source commit time of the last change stored
    started: float = field(default_factory=time.monotonic)
    source: dict[str, Any] = field(default_factory=dict)
    # The incremental snapshot under way: table, rows and chunks stored, tables waiting.
    incremental: dict[str, Any] | None = None
    incremental_rows: int = 0  # incremental snapshot rows this runner stored

    @property
    def rate(self) -> float:
        """Changes per second since the runner started."""
        elapsed = time.monotonic() - self.started
        return self.changes / elapsed if elapsed > 0 else 0.0


class CDCProducer:
    """Captures one connector's changes into the log of ``db``.

    ``run()`` loops until ``stop`` is set (or, with ``until_idle``, until the snapshot is
    stored and a poll finds nothing new). ``step()`` is one poll and store, for callers
    with their own loop. Not thread-safe: one runner per connector (a second one on the
    same connector makes the first fail with ``CompareFailed`` at its next store).
    """

    def __init__(self, db: Database, config: ConnectorConfig, *, source: Source | None = None):
        self.config = config.checked()
        self._db = db
        self._source = source if source is not None else config.source_obj()
        self._sink = LogSink(
            db,
            config.name,
            prefix=config.topic_prefix,
            partitions=config.partitions,
            outbox=config.outbox or (),
        )
        self.progress = Progress(position=self._sink.position)
        self._opened = False
        self._task: incremental.Task | None = None
        self._checked_at = 0.0  # when the request queue was last read (0: read it now)
        self._recheck = True  # the queue may hold work not read yet (for until_idle)

    def _open(self) -> None:
        done = self._sink.snapshot_done()
        self.progress.snapshot_done = done
        self._source.open(self._sink.position, snapshot=not done)
        self._opened = True

    def step(self, timeout_s: float = POLL_S) -> list[Change]:
        """Poll once; store what came (and the snapshot's end) and confirm it. Returns the
        changes polled (replays included)."""
        if not self._opened:
            self._open()
        self._feed_incremental()
        changes = self._source.poll(timeout_s, self.config.batch_max)
        finished = not self.progress.snapshot_done and self._source.snapshot_done()
        self._signals(changes)
        chunk = self._take_chunk()
        kv = None
        if chunk is not None:
            name = incremental.progress_key(self.config.name)
            kv = {name: json.dumps(chunk.next_progress()).encode()}
        if not changes and not finished and kv is None:
            return changes
        stored = self._sink.write(changes, snapshot_done=finished, kv=kv)
        if chunk is not None:
            self.progress.incremental_rows += chunk.emitted
            # The next task is read from what was just stored.
            self._task, self._checked_at, self._recheck = None, 0.0, True
        progress = self.progress
        progress.snapshot_done = progress.snapshot_done or finished
        progress.changes += stored.written
        progress.skipped += stored.skipped
        progress.batches += 1
        if stored.position is not None:
            progress.position = stored.position
            self._source.confirm(stored.position)
        if changes:
            progress.lag_ms = max(0.0, time.time() * 1000 - changes[-1].ts_ms)
        return changes

    # -- incremental snapshots -------------------------------------------------------

    def _feed_incremental(self) -> None:
        """Give the source the table to read next, once the initial snapshot is stored."""
        set_task = getattr(self._source, "set_incremental", None)
        if set_task is None or not self.progress.snapshot_done or self._task is not None:
            return
        now = time.monotonic()
        if now - self._checked_at < REQUEST_CHECK_S:
            return
        self._checked_at, self._recheck = now, False
        self._task = incremental.current_task(self._db, self.config.name)
        self.progress.incremental = incremental.status(self._db, self.config.name)
        set_task(self._task, self.config.snapshot_chunk)

    @property
    def incremental_idle(self) -> bool:
        """No incremental snapshot under way, and no request left unread."""
        if getattr(self._source, "set_incremental", None) is None:
            return True
        return self._task is None and not self._recheck

    def _take_chunk(self) -> incremental.ChunkDone | None:
        take = getattr(self._source, "take_chunk_done", None)
        return None if take is None else take()

    def _signals(self, changes: list[Change]) -> None:
        """Queue the snapshots that signal rows ask for, before the rows are stored: a
        crash in between replays the signal, which the queue recognises by its id."""
        for change in changes:
            signal = incremental.signal_tables(change, self.config.signal_table)
            if signal is None:
                continue
            ident, tables = signal
            try:
                incremental.request_snapshot(self._db, self.config, tables, signal=ident)
            except Error as exc:
                # A bad signal must not stop capture: it would fail again at each replay.
                _log.warning("cdc %s: signal %s ignored: %s", self.config.name, ident, exc)
                continue
            if self._task is None:
                self._checked_at, self._recheck = 0.0, True

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        until_idle: bool = False,
        on_progress: Callable[[Progress], None] | None = None,
        poll_s: float = POLL_S,
    ) -> Progress:
        """Capture until ``stop`` is set (or until idle); returns the totals."""
        stop = stop or threading.Event()
        status_at = 0.0
        while not stop.is_set():
            polled = self.step(poll_s)
            if on_progress is not None and time.monotonic() - status_at > 0.5:
                self.progress.source = self._source.status()
                on_progress(self.progress)
                status_at = time.monotonic()
            if until_idle and not polled and self.progress.snapshot_done and self.incremental_idle:
                break
        self.progress.source = self._source.status()
        return self.progress

    def close(self) -> None:
        """Close the source connection (the slot stays, for the next run)."""
        self._source.close()

    def __enter__(self) -> CDCProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
