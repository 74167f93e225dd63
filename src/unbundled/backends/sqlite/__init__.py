"""The SQLite backend: the embedded default. One database file in WAL mode
serves the log and the event store, so an event append, a log append and a
consumer's offsets can commit in one transaction.

All writes go through one group-commit writer thread per process (see
``_writer``); reads use one connection per reading thread and never block the
writer. Other processes may open the same file: SQLite's lock serialises their
writers, and ``PRAGMA data_version`` tells waiting readers about their commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from ._events import SqliteEvents, SqliteProjections
from ._idempotency import SqliteIdempotency
from ._kv import SqliteKV
from ._log import SqliteLog
from ._log_stage import Stage
from ._unit import SqliteUnit
from ._unit_stage import WriterStages
from ._writer import ExtraStage


class SqliteBackend(
    SqliteLog, SqliteEvents, SqliteProjections, SqliteIdempotency, SqliteKV, SqliteUnit
):
    """The log and the event store in one SQLite file. ``sync`` sets durability:

    * ``"full"`` (default): each commit is fsynced before callers return;
      survives power loss.
    * ``"normal"``: no fsync at commit; survives a process crash; a power loss
      may lose the newest commits (a suffix, never one in the middle) and
      leaves the file intact (``tests/lazyfs/test_power_cut_parts.py``).
    * ``"off"``: no fsync at all; for tests and scratch data.
    """

    def _extra_stage(self) -> Callable[[sqlite3.Connection, Stage], ExtraStage] | None:
        return lambda conn, log: WriterStages(conn, log, self.clock, self.path)


__all__ = ["SqliteBackend"]
