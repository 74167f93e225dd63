"""Derived views fed by a connector's topics, exactly once in effect.

`follow(log, view, topics)` reads each topic-partition from the offset the view stored
and applies every change event (c/u/r put the row, d deletes it, t clears the table; a
column the source marked unavailable keeps the value the view holds). Each batch and its
offset are written atomically in the view's own store, so a restart after a crash
resumes exactly where it stopped: no change lost, none applied twice.

- `FtsView`: a full-text index in SQLite FTS5 (offsets in the same file).
- `PostgresReadModel`: a read-model table in PostgreSQL (offsets in the same database).
- `RedisCache`: hashes in Redis, each batch one Lua script with its offsets, and dedupe
  by source position per row.
"""

from __future__ import annotations

from ._base import View as View
from ._base import follow as follow
from ._fts import FtsView as FtsView
from ._pg import PostgresReadModel as PostgresReadModel
from ._redis import RedisCache as RedisCache

__all__ = ["FtsView", "PostgresReadModel", "RedisCache", "View", "follow"]
