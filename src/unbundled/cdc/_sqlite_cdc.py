"""SQLite as a capture source: the change table's rows after a snapshot of the tables.

`SqliteSource` (triggers, change table, snapshot) does the work; this adapts it to the
runner's `Source` contract. The snapshot's rows are placed at (S, 1..n), where S is the
last change id the snapshot's read transaction saw; the stream then starts with the
change ids after S, whose positions (id, 0) are all greater. Confirming prunes the change
rows up to the confirmed id, so the change table holds only what is not yet stored.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from ._change import Change, SourcePosition
from ._sqlite_source import SqliteSource

IDLE_SLEEP_S = 0.02


class SqliteCapture:
    """The `Source` of a connector on a SQLite file."""

    def __init__(self, path: str, *, connector: str, tables: list[str] | None = None) -> None:
        self.source = SqliteSource(path, name=connector, tables=tables)
        self._after: SourcePosition | None = None
        self._rows: Iterator[Change] | None = None
        self._ahead: Change | None = None
        self._snapshot_at: SourcePosition | None = None
        self._index = 0
        self._snapshot_done = True

    def install(self) -> None:
        self.source.install()

    def remove(self) -> None:
        self.source.remove()

    def open(self, after: SourcePosition | None, *, snapshot: bool) -> None:
        self._after = after
        self._snapshot_done = not snapshot
        if snapshot:
            self.source.install()  # idempotent; picks up tables changed since `add`
            # Rows of a snapshot a crash cut short are in the log: clear them first.
            at, rows = self.source.snapshot(truncate_first=after is not None)
            self._snapshot_at = SourcePosition(at.commit, 0)
            self._rows = iter(rows)
            self._ahead = next(self._rows, None)
            self._index = 0
            if self._ahead is None:
                self._finish_snapshot()

    def _finish_snapshot(self) -> None:
        self._snapshot_done = True
        self._rows = None
        assert self._snapshot_at is not None
        if self._after is None or self._after < self._snapshot_at:
            self._after = self._snapshot_at

    def snapshot_done(self) -> bool:
        return self._snapshot_done

    def _snapshot_rows(self, limit: int) -> list[Change]:
        assert self._rows is not None and self._snapshot_at is not None
        out: list[Change] = []
        while len(out) < limit and self._ahead is not None:
            change = self._ahead
            self._ahead = next(self._rows, None)
            self._index += 1
            out.append(
                replace(
                    change,
                    position=SourcePosition(self._snapshot_at.commit, self._index),
                    snapshot="last" if self._ahead is None else "true",
                )
            )
        if self._ahead is None:
            self._finish_snapshot()
        return out

    def poll(self, timeout_s: float, limit: int) -> list[Change]:
        if not self._snapshot_done:
            return self._snapshot_rows(limit)
        deadline = time.monotonic() + timeout_s
        while True:
            changes = self.source.changes(self._after, limit)
            if changes:
                self._after = changes[-1].position
                return changes
            if time.monotonic() >= deadline:
                return []
            time.sleep(IDLE_SLEEP_S)

    def confirm(self, position: SourcePosition) -> None:
        self.source.prune(position)

    def status(self) -> dict[str, Any]:
        pending = self.source.pending()
        return {"pending": pending.changes, "pending_bytes": pending.bytes}

    def close(self) -> None:
        self._rows = None
        close = getattr(self.source, "close", None)
        if close is not None:
            close()
