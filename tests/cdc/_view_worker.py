"""The worker of the derived-view crash test (tests/cdc/test_views.py).

``python -m tests.cdc._view_worker <kind> <log.db> <target> <name> <topic>`` follows the
topic into the view in small batches, slowly (a pause inside each view transaction, so a
SIGKILL often lands between apply and commit), printing ``started`` first.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import unbundled
from tests.crash._children import exit_with_parent, guarded, say
from unbundled.cdc.views import FtsView, PostgresReadModel, RedisCache, View, follow


def open_view(kind: str, target: str, name: str) -> View:
    if kind == "fts":
        return FtsView(target, name=name)
    if kind == "pg":
        url, _, schema = target.rpartition("#")
        return PostgresReadModel(url, schema=schema, name=name)
    return RedisCache(target, name=name)


def main(kind: str, path: str, target: str, name: str, topic: str) -> None:
    exit_with_parent()
    db = unbundled.open(path, sync="normal")
    view = open_view(kind, target, name)
    if isinstance(view, FtsView | PostgresReadModel):
        view.before_commit = lambda: time.sleep(0.01)
    else:  # one script per batch: a kill lands between batches, or before a script
        apply = view.apply

        def slow_apply(*args: Any) -> None:
            time.sleep(0.01)
            apply(*args)

        view.apply = slow_apply  # type: ignore[method-assign,assignment]
    say("started")
    follow(db.log, view, [topic], batch=5, until_idle=False)


if __name__ == "__main__":
    guarded(lambda: main(*sys.argv[1:6]))()
