"""Hypothesis: for any stream of change events (puts with TOAST placeholders, deletes, key
changes, truncates), cut into any batches, with a failure injected between apply and
commit at any batch, the views end equal to a plain model of the table and to the
replay the checker uses (`table_state`). No server but Redis; the log is in memory.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unbundled
from tests.conftest import require_server
from unbundled.cdc import UNAVAILABLE_TEXT
from unbundled.cdc._replay import key_text, table_state
from unbundled.cdc.views import FtsView, RedisCache, follow

TOPIC = "m.main.t"
KEYS = st.integers(1, 6)
VALUES = st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=8), st.just(UNAVAILABLE_TEXT))
PUT = st.tuples(st.just("put"), KEYS, st.fixed_dictionaries({"a": VALUES, "b": VALUES}))
MOVE = st.tuples(st.just("move"), KEYS, KEYS)
DELETE = st.tuples(st.just("delete"), KEYS, st.none())
CLEAR = st.tuples(st.just("clear"), st.none(), st.none())
OPS = st.lists(st.one_of(PUT, PUT, MOVE, DELETE, CLEAR), min_size=1, max_size=40)


class Injected(Exception):
    pass


def write_log(db: unbundled.Database, ops: list[Any]) -> dict[str, dict[str, Any]]:
    """Append the ops as change events; return what a table holds after them (the model)."""
    model: dict[str, dict[str, Any]] = {}
    db.log.create_topic(TOPIC, 1, exist_ok=True)
    for commit, (op, key, arg) in enumerate(ops, start=1):
        event: dict[str, Any] = {"before": None, "after": None, "source": {}}
        event["source"]["sequence"] = json.dumps([str(commit), "0"])
        record_key: Any = {"id": key}
        if op == "put":
            old = model.get(key_text(record_key))
            row = {"id": key, **arg}
            event["op"], event["after"] = ("u" if old else "c"), row
            held = old or {}  # a placeholder keeps the value held, or leaves the column out
            model[key_text(record_key)] = {
                n: (held[n] if v == UNAVAILABLE_TEXT else v)
                for n, v in row.items()
                if v != UNAVAILABLE_TEXT or n in held
            }
        elif op == "move":  # an update that changes the key from `key` to `arg`
            old = model.get(key_text(record_key))
            if old is None or key == arg:
                continue
            del model[key_text(record_key)]
            model.pop(key_text({"id": arg}), None)
            record_key = {"id": arg}
            row = {**old, "id": arg}
            event["op"], event["before"], event["after"] = "u", {**old}, row
            model[key_text(record_key)] = row
        elif op == "delete":
            event["op"] = "d"
            model.pop(key_text(record_key), None)
        else:
            event["op"], record_key = "t", None
            model.clear()
        db.log.append(
            TOPIC,
            json.dumps(event).encode(),
            key=None if record_key is None else json.dumps(record_key).encode(),
        )
    return model


def run(view: Any, db: unbundled.Database, batch: int, fail_at: int | None) -> None:
    calls = 0

    def hook() -> None:
        nonlocal calls
        calls += 1
        if calls == fail_at:
            raise Injected

    view.before_commit = hook
    try:
        follow(db.log, view, [TOPIC], batch=batch)
    except Injected:
        follow(db.log, view, [TOPIC], batch=batch)  # the restart


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS, batch=st.integers(1, 7), fail_at=st.one_of(st.none(), st.integers(1, 6)))
def test_fts_view_equals_the_model(
    tmp_path: Path, ops: list[Any], batch: int, fail_at: int | None
) -> None:
    with unbundled.open("memory://") as db:
        model = write_log(db, ops)
        view = FtsView(tmp_path / f"{uuid.uuid4().hex}.db", name="m")
        try:
            run(view, db, batch, fail_at)
            assert view.rows(TOPIC) == model == table_state(db.log, TOPIC)
        finally:
            view.close()


@pytest.mark.redis
@settings(max_examples=25, deadline=None)
@given(ops=OPS, batch=st.integers(1, 7))
def test_redis_view_equals_the_model(ops: list[Any], batch: int) -> None:
    require_server("redis")
    with unbundled.open("memory://") as db:
        model = write_log(db, ops)
        view = RedisCache(name=f"m{uuid.uuid4().hex[:12]}")
        try:
            follow(db.log, view, [TOPIC], batch=batch)
            assert view.rows(TOPIC) == model
        finally:
            view.drop()
            view.close()
