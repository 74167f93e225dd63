"""Rebuilding a projection ends exactly where a fresh one would (issue 9,
item 1), for every kind of read model (typed documents, documents of a
collection the projection never declared, SQL tables), from the API and the
CLI, on every backend; and a rebuild that could not do that is refused with
nothing changed.

"Fresh" is measured, not computed: the same projection class runs from
scratch on a copy of the events in a store of its own, and the two read
models are compared.
"""

from __future__ import annotations

import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli.test_cli import console_script
from unbundled import UsageError
from unbundled.cli import cli
from unbundled.eventstore import (
    Documents,
    EventStore,
    NewEvent,
    Projection,
    ProjectionTxn,
    StoredEvent,
)
from unbundled.eventstore import projections as _projections
from unbundled.eventstore.read_models import raw_documents

from ._helpers import EVENTS, Deposited, Withdrawn, append_in_thread
from .conftest import BACKENDS, fresh_url

DEADLINE_S = 30.0


class Total(msgspec.Struct):
    amount: int = 0
    events: int = 0


TOTALS = Documents("rb_totals", Total)


def change(event: StoredEvent) -> int:
    if isinstance(event.event, Deposited):
        return event.event.amount
    if isinstance(event.event, Withdrawn):
        return -event.event.amount
    return 0


class TypedTotals(Projection):
    """Typed documents of a declared collection; adds to what is there, so
    anything left over from before a rebuild would show."""

    name = "typed"
    categories = ("account",)
    collections = ("rb_totals",)

    def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
        old = TOTALS.get(txn, event.stream) or Total()
        TOTALS.put(txn, event.stream, Total(old.amount + change(event), old.events + 1))


class UndeclaredCounts(Projection):
    """Raw documents in a collection it never declared in ``collections``."""

    name = "undeclared"

    def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
        old = int(txn.get("rb_counts", event.type) or b"0")
        txn.put("rb_counts", event.type, b"%d" % (old + 1))


class SqlTotals(Projection):
    """A SQL table of its own, created and emptied by ``reset()``."""

    name = "sql"
    categories = ("account",)

    def __init__(self, table: str, mark: str) -> None:
        self.table = table
        self.mark = mark  # the driver's placeholder: ? (sqlite3) or %s (psycopg)

    def reset(self, txn: ProjectionTxn) -> None:
        txn.sql.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} "
            "(stream TEXT PRIMARY KEY, amount BIGINT NOT NULL, events BIGINT NOT NULL)"
        )
        txn.sql.execute(f"DELETE FROM {self.table}")

    def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
        m = self.mark
        txn.sql.execute(
            f"INSERT INTO {self.table} AS t VALUES ({m}, {m}, 1) ON CONFLICT (stream) "
            "DO UPDATE SET amount = t.amount + excluded.amount, events = t.events + 1",
            (event.stream, change(event)),
        )


class SqlWithoutReset(SqlTotals):
    """Writes its table (made elsewhere, as by a migration) with no reset()."""

    name = "sql_no_reset"
    reset = Projection.reset


def table_name(store: EventStore, table: str) -> tuple[str, str]:
    """The table's qualified name and the driver's placeholder on ``store``."""
    schema = getattr(store.backend, "schema", None)
    return (f'"{schema}".{table}', "%s") if schema is not None else (table, "?")


def make(kind: str, store: EventStore) -> Projection:
    if kind == "typed":
        return TypedTotals()
    if kind == "undeclared":
        return UndeclaredCounts()
    return SqlTotals(*table_name(store, "rb_sql"))


def read_model(store: EventStore, projection: Projection) -> dict[str, Any]:
    """Everything the projection's read model holds, comparable across stores."""
    if isinstance(projection, SqlTotals):
        return {"rows": sql_rows(store, projection.table)}
    collection = "rb_counts" if isinstance(projection, UndeclaredCounts) else "rb_totals"
    documents = raw_documents(store, collection)
    return {collection: documents} if documents else {}


def sql_rows(store: EventStore, table: str) -> list[tuple[Any, ...]]:
    url = store.backend.url
    query = f"SELECT stream, amount, events FROM {table} ORDER BY stream"
    if url.startswith("postgresql"):
        import psycopg

        from unbundled.backends.postgres._schema import parse_url

        with psycopg.connect(parse_url(url)[0]) as server:
            return [tuple(r) for r in server.execute(query).fetchall()]
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def fill(store: EventStore, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        stream = f"account-{i % 5}" if i % 4 else f"order-{i % 3}"
        event = Withdrawn(amount=i % 3) if i % 3 == 0 else Deposited(amount=i)
        store.append(stream, [event])


@contextmanager
def fresh_copy(store: EventStore, url: str, tmp_path: Path) -> Iterator[EventStore]:
    """A new store on the same kind of backend holding the same events at
    the same positions: where a from-scratch run of a projection is made."""
    backend = "memory" if url.startswith("memory") else "sqlite"
    if url.startswith("postgresql"):
        backend = "postgres"
    with (
        fresh_url(backend, tmp_path, "fresh") as copy_url,
        EventStore.open(copy_url, sync="normal", events=EVENTS) as copy,
    ):
        for event in store.read_all_raw(limit=100_000):
            raw = NewEvent(event.id, event.type, event.data, event.metadata, event.schema_version)
            copy.append(event.stream, [raw])
        yield copy


@contextmanager
def server_store(backend: str, tmp_path: Path) -> Iterator[tuple[str, EventStore]]:
    """A new store on ``backend`` and its URL (the CLI and fresh copies need it)."""
    with (
        fresh_url(backend, tmp_path) as url,
        EventStore.open(url, sync="normal", events=EVENTS) as store,
    ):
        yield url, store


def from_scratch(store: EventStore, url: str, tmp_path: Path, kind: str) -> dict[str, Any]:
    with fresh_copy(store, url, tmp_path) as copy:
        projection = make(kind, copy)
        copy.projections(projection).catch_up()
        return read_model(copy, projection)


KINDS = ["typed", "undeclared", "sql"]
SQL_BACKENDS = [b for b in BACKENDS if b != "memory"]
# Every backend with every kind of read model it can hold (memory has no SQL).
CASES = [pytest.param("memory", kind, id=f"memory-{kind}") for kind in KINDS if kind != "sql"] + [
    pytest.param(*getattr(b, "values", (b,)), kind, marks=getattr(b, "marks", ()))
    for b in SQL_BACKENDS
    for kind in KINDS
]


def cli_rebuild(url: str, name: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["--db", url, "projections", "rebuild", name, "--yes"])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr


# --- the API and the CLI, each kind ---------------------------------------------------


@pytest.mark.parametrize(("backend", "kind"), CASES)
def test_a_rebuild_from_the_api_equals_a_fresh_run(tmp_path: Path, backend: str, kind: str) -> None:
    with server_store(backend, tmp_path) as (url, store):
        check_api_rebuild(store, url, tmp_path, kind)


def check_api_rebuild(store: EventStore, url: str, tmp_path: Path, kind: str) -> None:
    projection = make(kind, store)
    runner = store.projections(projection, batch_size=7)
    fill(store, 40)
    runner.catch_up()
    fill(store, 15, start=40)
    runner.catch_up()
    runner.rebuild(projection.name)
    assert read_model(store, projection) == ({"rows": []} if kind == "sql" else {})
    assert store.backend.checkpoints()[projection.name] == 0
    runner.catch_up()
    assert read_model(store, projection) == from_scratch(store, url, tmp_path, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_a_rebuild_from_the_cli_equals_a_fresh_run(tmp_path: Path, backend: str, kind: str) -> None:
    with server_store(backend, tmp_path) as (url, store):
        projection = make(kind, store)
        runner = store.projections(projection, batch_size=9)
        fill(store, 45)
        runner.catch_up()
        built = read_model(store, projection)
        said = cli_rebuild(url, projection.name)
        assert "reset to 0 (was 45)" in said
        if kind != "sql":  # documents are emptied at once; tables by reset() on replay
            assert read_model(store, projection) == {}
        runner.catch_up()
        assert read_model(store, projection) == built
        assert built == from_scratch(store, url, tmp_path, kind)


@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_sql_tables_without_reset_are_refused_with_nothing_changed(
    tmp_path: Path, backend: str
) -> None:
    with server_store(backend, tmp_path) as (url, store):
        table, mark = table_name(store, "rb_plain")
        projection = SqlWithoutReset(table, mark)
        create = SqlTotals(table, mark).reset
        store.backend.project("setup", 0, 0, create)  # its table, made outside the projection
        runner = store.projections(projection)
        fill(store, 20)
        runner.catch_up()
        rows = sql_rows(store, table)
        with pytest.raises(UsageError, match=r"has no reset\(\).*nothing was changed") as caught:
            runner.rebuild(projection.name)
        assert caught.value.details == {"projection": "sql_no_reset"}
        assert "has no reset()" in cli_rebuild(url, projection.name, code=2)
        assert store.backend.checkpoints()[projection.name] == 20
        assert sql_rows(store, table) == rows
        assert runner.catch_up() == 0, "nothing to replay: it was not reset"


# --- while runners run --------------------------------------------------------------


def test_a_rebuild_while_runners_run_in_other_threads_ends_equal(
    store: EventStore, store_url: str, tmp_path: Path
) -> None:
    """A runner keeps running while events are appended and the projection
    is rebuilt twice: by another runner object (as another process would)
    and by the running one. Its in-flight batches lose their checkpoint's
    compare-and-set; its waits are woken; it ends equal to a fresh run."""
    fill(store, 30)
    with store.projections(TypedTotals(), UndeclaredCounts(), batch_size=4) as running:
        writer = append_in_thread(store, 60, lambda i: f"account-{i % 6}", start=30)
        elsewhere = store.projections(TypedTotals(), UndeclaredCounts())
        elsewhere.rebuild("typed")
        running.rebuild("undeclared")
        writer.join()
        elsewhere.rebuild("undeclared")  # nothing is appended any more: the runner must wake
        assert running.wait_caught_up(DEADLINE_S)
        status = running.status()
        assert all(s.error is None for s in status.values()), status
    for kind in ("typed", "undeclared"):
        projection = make(kind, store)
        got = read_model(store, projection)
        assert got == from_scratch(store, store_url, tmp_path, kind), kind


def test_a_rebuild_landing_right_after_a_batch_commits_is_not_slept_through(
    store: EventStore, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild elsewhere that commits between a runner's batch and its next
    wait. The runner once read its wake-up token after that rebuild, kept its
    stale checkpoint, found nothing new and slept until the next append --
    here never (seen as a rare wait_caught_up timeout on a loaded machine)."""
    fill(store, 30)
    elsewhere = store.projections(TypedTotals())
    step = _projections._Worker.step
    rebuilt: list[int] = []
    done = threading.Event()

    def step_then_rebuild(worker: Any) -> bool:
        applied: bool = step(worker)
        if applied and not rebuilt and worker.checkpoint == store.backend.safe_position():
            rebuilt.append(worker.checkpoint)
            elsewhere.rebuild("typed")  # after this batch's commit, before the wait
            done.set()
        return applied

    monkeypatch.setattr(_projections._Worker, "step", step_then_rebuild)
    with store.projections(TypedTotals(), batch_size=100) as running:
        assert done.wait(10.0)
        assert running.wait_caught_up(10.0)
        assert rebuilt == [30]
        assert store.backend.checkpoints()["typed"] == 30
    assert read_model(store, TypedTotals()) == from_scratch(store, store_url, tmp_path, "typed")


@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_a_cli_rebuild_in_another_process_while_a_runner_runs_ends_equal(
    tmp_path: Path, backend: str
) -> None:
    with server_store(backend, tmp_path) as (url, store):
        fill(store, 40)
        table, mark = table_name(store, "rb_live")
        with store.projections(TypedTotals(), SqlTotals(table, mark), batch_size=5) as runner:
            assert runner.wait_caught_up(DEADLINE_S)
            writer = append_in_thread(store, 40, lambda i: f"account-{i % 4}", start=40)
            for name in ("typed", "sql"):
                done = subprocess.run(
                    [console_script(), "--db", url, "projections", "rebuild", name, "--yes"],
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
                assert done.returncode == 0, done.stderr
            writer.join()
            assert runner.wait_caught_up(DEADLINE_S)
            assert all(s.error is None for s in runner.status().values())
        typed = read_model(store, TypedTotals())
        rows = sql_rows(store, table)
        with fresh_copy(store, url, tmp_path) as copy:
            fresh_sql = SqlTotals(*table_name(copy, "rb_live"))
            copy.projections(TypedTotals(), fresh_sql).catch_up()
            assert typed == read_model(copy, TypedTotals())
            assert rows == sql_rows(copy, fresh_sql.table)


# --- the general law ------------------------------------------------------------------

Step = tuple[str, int]
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 12)),
        st.tuples(st.just("catch_up"), st.just(0)),
        st.tuples(st.just("rebuild"), st.sampled_from([0, 1])),
    ),
    max_size=12,
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(steps=STEPS, batch_size=st.integers(1, 9))
def test_any_interleaving_of_appends_runs_and_rebuilds_ends_as_a_fresh_run(
    steps: list[Step], batch_size: int
) -> None:
    """Whatever happened before (rebuilds before any run, two in a row,
    in the middle of catching up), the final read models equal a fresh run."""
    with EventStore.open("memory://", events=EVENTS) as store:
        names = ["typed", "undeclared"]
        runner = store.projections(TypedTotals(), UndeclaredCounts(), batch_size=batch_size)
        appended = 0
        for action, n in steps:
            if action == "append":
                fill(store, n, start=appended)
                appended += n
            elif action == "catch_up":
                runner.catch_up()
            else:
                runner.rebuild(names[n])
        runner.catch_up()
        with EventStore.open("memory://", events=EVENTS) as fresh:
            fill(fresh, appended)
            fresh.projections(TypedTotals(), UndeclaredCounts()).catch_up()
            for kind in names:
                projection = make(kind, store)
                assert read_model(store, projection) == read_model(fresh, projection), kind


# --- what a read model may be -----------------------------------------------------------


def test_collections_are_owned_by_one_projection_and_dollar_names_are_reserved(
    store: EventStore,
) -> None:
    class Also(TypedTotals):
        name = "also"

    with pytest.raises(UsageError, match="both own collection 'rb_totals'"):
        store.projections(TypedTotals(), Also())

    class Unpacked(TypedTotals):
        name = "unpacked"
        collections = "rb_totals"  # type: ignore[assignment]

    with pytest.raises(UsageError, match="got the string 'rb_totals'"):
        store.projections(Unpacked())

    class Reserved(Projection):
        name = "reserved"

        def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
            txn.put("$projections", "typed", b"{}")

    fill(store, 3)
    runner = store.projections(Reserved())
    with pytest.raises(UsageError, match="not starting with '\\$'"):
        runner.catch_up()
    assert store.backend.checkpoints().get("reserved", 0) == 0
    with pytest.raises(UsageError):
        Documents("$projections", dict)


def test_a_stale_runner_start_never_shrinks_the_description(store: EventStore) -> None:
    """What a rebuild empties is everything the projection ever wrote, even
    after a release that stopped writing a collection."""

    class Older(Projection):
        name = "evolving"
        collections = ("rb_old",)

        def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
            txn.put("rb_old", event.stream, b"1")

    class Newer(Projection):
        name = "evolving"
        collections = ("rb_new",)

        def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
            txn.put("rb_new", event.stream, b"1")

    fill(store, 4)
    store.projections(Older()).catch_up()
    newer = store.projections(Newer())
    newer.catch_up()
    newer.rebuild("evolving")
    assert raw_documents(store, "rb_old") == {} == raw_documents(store, "rb_new")
    newer.catch_up()
    assert raw_documents(store, "rb_old") == {}
    assert set(raw_documents(store, "rb_new")) == {e.stream for e in store.read_all()}
