"""``python -m tests.threads._child <unbundled CLI arguments>``: the CLI with a
maintenance pass that fails (after touching ``$UNBUNDLED_FAULT_MARKER``) and
runs every 50 ms, for the thread-failure tests."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from unbundled.backends.sqlite import _log
from unbundled.cli import main


def _failing_maintain(conn: sqlite3.Connection, now: int, path: str) -> dict[str, int]:
    Path(os.environ["UNBUNDLED_FAULT_MARKER"]).touch()
    raise OverflowError("injected fault: Python int too large to convert to SQLite INTEGER")


if __name__ == "__main__":
    _log._maintain = _failing_maintain  # type: ignore[attr-defined]
    defaults = _log.SqliteLog.__init__.__kwdefaults__
    assert defaults is not None
    defaults["maintenance_interval_s"] = 0.05
    main()
