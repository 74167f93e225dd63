"""What the runner needs of a capture source (PostgreSQL's stream, SQLite's change table)."""

from __future__ import annotations

from typing import Any, Protocol

from ._change import Change, SourcePosition


class Source(Protocol):
    """A stream of committed changes of one database, replayable from a confirmed point.

    Contract: `open` starts after `after` (None: from the beginning, with a snapshot if
    `snapshot` is true); `poll` returns changes in commit order, each with a position
    greater than the one before; a change may be returned again after a restart (the
    sink drops it by position), never skipped. `confirm(p)` says every change up to p is
    durably stored: the source may then free what it kept for them (PostgreSQL: advance
    the slot's confirmed flush LSN; SQLite: prune the change table). It must never free
    anything after p.
    """

    def install(self) -> None:
        """Create what capture needs on the source (idempotent)."""

    def remove(self) -> None:
        """Drop everything `install` and `open` created on the source (idempotent)."""

    def open(self, after: SourcePosition | None, *, snapshot: bool) -> None:
        """Start reading after `after`; with `snapshot`, first the rows as they are now."""

    def poll(self, timeout_s: float, limit: int) -> list[Change]:
        """Up to `limit` changes (or none once `timeout_s` passed without any)."""

    def snapshot_done(self) -> bool:
        """True once the snapshot's last row was returned (or none was asked for)."""

    def confirm(self, position: SourcePosition) -> None:
        """Everything up to `position` is stored: free it on the source."""

    def status(self) -> dict[str, Any]:
        """Numbers for `cdc status`: lag, retained WAL or pending change rows."""

    def close(self) -> None:
        """Let go of connections (idempotent)."""
