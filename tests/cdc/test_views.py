"""Derived views (SQLite FTS5, a PostgreSQL read model, a Redis cache) fed from a
connector's log: equal to the source tables after inserts, updates, deletes, a key change,
a truncate and unchanged TOASTed values; and, killed or failing between apply and commit,
equal to a fresh rebuild once restarted (no change lost, none applied twice).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cdc._pg import PG_URL, PgCase, pg
from tests.cdc.test_cdc_crash import ROOT, wait_line
from tests.conftest import require_server
from unbundled.cdc import UNAVAILABLE_TEXT
from unbundled.cdc._check import _pg_state
from unbundled.cdc._replay import events, table_state
from unbundled.cdc.views import FtsView, PostgresReadModel, RedisCache, View, follow
from unbundled.errors import ConflictError

KINDS = ["fts", "pg", "redis"]
REDIS_URL = "redis://127.0.0.1:6379/0"


class Injected(Exception):
    """The crash injected between a batch's apply and its commit."""


def stream(case: PgCase) -> None:
    """A captured table through every kind of change, all stored in the log."""
    t = case.table("doc")
    pg(f"CREATE TABLE {t} (id int PRIMARY KEY, title text, body text, n numeric)")
    pg(f"ALTER TABLE {t} ALTER COLUMN body SET STORAGE EXTERNAL")  # TOASTed, uncompressed
    pg(f"INSERT INTO {t} SELECT g, 'title ' || g, 'body', g / 3.0 FROM generate_series(1, 30) g")
    config = case.add(["doc"], heartbeat_s=0.5)
    with case.producer(config) as producer:
        producer.run(until_idle=True, poll_s=0.3)
    pg(f"INSERT INTO {t} SELECT g, 'more ' || g, NULL, NULL FROM generate_series(31, 60) g")
    pg(f"UPDATE {t} SET title = 'search me', n = n * 2 WHERE id % 4 = 0")
    pg(f"DELETE FROM {t} WHERE id % 7 = 0")
    pg(f"UPDATE {t} SET id = 500 WHERE id = 2")  # a key change
    pg(f"TRUNCATE {t}")
    pg(f"INSERT INTO {t} SELECT g, 'after truncate ' || g, 'b', 1 FROM generate_series(1, 40) g")
    big = "x" * 9000  # stored out of line: unchanged, pgoutput sends it as unavailable
    pg(f"UPDATE {t} SET body = %s WHERE id <= 5", big)
    pg(f"UPDATE {t} SET title = 'toast kept' WHERE id <= 3")
    pg(f"DELETE FROM {t} WHERE id = 40")
    with case.producer(config) as producer:
        producer.run(until_idle=True, poll_s=0.3)


def source_rows(case: PgCase) -> dict[str, dict[str, Any]]:
    """The source table now, in the change events' text forms (the checker's reader)."""
    state = _pg_state(case.config(["doc"]))
    return state.tables[(case.schema, "doc")]


@pytest.fixture
def views(pg_case: PgCase, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Factories of each kind of view (a name per call), all dropped after the test."""
    made: list[View] = []
    tag = uuid.uuid4().hex[:8]

    def target(kind: str) -> str:
        if kind == "fts":
            return str(tmp_path / "fts.db")
        if kind == "pg":
            return f"{PG_URL}#{pg_case.schema}"
        return REDIS_URL

    def make(kind: str, name: str) -> View:
        name = f"{name}_{tag}"
        if kind == "redis":
            require_server("redis")
        view: View
        if kind == "fts":
            view = FtsView(target(kind), name=name)
        elif kind == "pg":
            view = PostgresReadModel(PG_URL, schema=pg_case.schema, name=name)
        else:
            view = RedisCache(REDIS_URL, name=name)
        made.append(view)
        return view

    yield {"make": make, "target": target, "tag": tag}
    for view in made:
        if isinstance(view, RedisCache):
            view.drop()
        view.close()


@pytest.mark.parametrize("kind", KINDS)
def test_view_equals_the_source(pg_case: PgCase, views: dict[str, Any], kind: str) -> None:
    case = pg_case
    stream(case)
    placeholders = [
        e for e in events(case.db.log, case.topic("doc")) if UNAVAILABLE_TEXT in str(e.value)
    ]
    assert len(placeholders) == 3  # the title updates of rows with an unchanged TOASTed body
    view = views["make"](kind, "v")
    applied = follow(case.db.log, view, [case.topic("doc")], batch=17)
    assert applied > 100
    rows = view.rows(case.topic("doc"))
    assert rows == source_rows(case)
    assert rows['{"id":1}']["body"] == "x" * 9000  # the TOAST placeholder never written
    assert rows['{"id":1}']["title"] == "toast kept"
    assert follow(case.db.log, view, [case.topic("doc")]) == 0  # nothing applied twice
    if isinstance(view, FtsView):
        found = view.search('"toast kept"')
        assert sorted(key for _, key, _ in found) == ['{"id":1}', '{"id":2}', '{"id":3}']


@pytest.mark.parametrize("kind", ["fts", "pg"])
def test_exception_between_apply_and_commit(
    pg_case: PgCase, views: dict[str, Any], kind: str
) -> None:
    case = pg_case
    stream(case)
    topic = case.topic("doc")
    view = views["make"](kind, "crashy")
    batches = 0

    def fail_sometimes() -> None:
        nonlocal batches
        batches += 1
        if batches % 3 == 0:
            raise Injected(f"batch {batches}")

    view.before_commit = fail_sometimes
    failures = 0
    while True:
        try:
            follow(case.db.log, view, [topic], batch=9)
            break
        except Injected:
            failures += 1
    assert failures >= 5
    fresh = views["make"](kind, "fresh")
    follow(case.db.log, fresh, [topic], batch=500)
    assert view.rows(topic) == fresh.rows(topic) == source_rows(case)


def test_redis_refuses_a_stale_batch_and_dedupes_by_position(
    pg_case: PgCase, views: dict[str, Any]
) -> None:
    case = pg_case
    stream(case)
    topic = case.topic("doc")
    view = views["make"]("redis", "dedupe")
    follow(case.db.log, view, [topic], batch=50)
    want = view.rows(topic)
    assert want == table_state(case.db.log, topic)
    # A second runner that read offset 0 before the first one applied: refused whole.
    stale = views["make"]("redis", "dedupe")
    batch = list(events(case.db.log, topic))[:20]
    with pytest.raises(ConflictError):
        stale.apply(batch, {(topic, 0): 0}, {(topic, 0): 20})
    assert view.rows(topic) == want
    assert isinstance(view, RedisCache)
    view._redis.delete(f"{view.prefix}:offsets")  # offsets lost: replay the whole log
    follow(case.db.log, view, [topic], batch=13)
    assert view.rows(topic) == want  # every replayed change skipped by its position


@pytest.mark.parametrize("kind", KINDS)
def test_sigkill_and_restart_equals_a_fresh_rebuild(
    pg_case: PgCase, views: dict[str, Any], kind: str, tmp_path: Path
) -> None:
    case = pg_case
    stream(case)
    topic = case.topic("doc")
    if kind == "redis":
        require_server("redis")
    name = f"killed_{views['tag']}"
    rng = random.Random()
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cdc._view_worker", kind, str(tmp_path / "log.db"),
             views["target"](kind), name, topic],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert wait_line(proc, b"started", 30.0), "the view worker did not start"
            try:
                proc.wait(timeout=rng.uniform(0.05, 0.3))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                kills += 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert kills >= 2
    view = views["make"](kind, "killed")  # the killed one's name: same tag
    applied = follow(case.db.log, view, [topic], batch=5)
    fresh = views["make"](kind, "rebuilt")
    follow(case.db.log, fresh, [topic], batch=500)
    assert view.rows(topic) == fresh.rows(topic) == source_rows(case)
    assert applied < sum(1 for _ in events(case.db.log, topic))  # it resumed, not restarted
