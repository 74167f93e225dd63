"""The event store's contract, continued: snapshots, projections (read model
and checkpoint in one transaction), subject keys, waiting for events and
reopening. :func:`unbundled.testing.eventstore_contract.all_checks` runs
these with the rest.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from ..errors import (
    NotSupported,
    ProjectionConflict,
    StreamDeleted,
    SubjectForgotten,
    UsageError,
)
from ..eventstore import NO_STREAM, ProjectionTxn, Snapshot
from ._eventstore_kit import (
    Check,
    Deposited,
    EventStoreTarget,
    durable_only,
    everything,
    new_event,
)
from ._log_kit import raises
from .clock import SimClock

__all__ = ["CHECKS"]


# --- snapshots, projections, subject keys -------------------------------------


def check_snapshots(target: EventStoreTarget) -> None:
    with target.open(SimClock()) as store:
        backend = store.backend
        assert backend.load_snapshot("acct-1") is None
        for version in (7, 3, 10):
            backend.save_snapshot(Snapshot("acct-1", version, "State", 2, b"v%d" % version, 42))
        backend.save_snapshot(Snapshot("acct-2", 1, "State", 1, b"other", 43))
        assert backend.load_snapshot("acct-1") == Snapshot("acct-1", 10, "State", 2, b"v10", 42)
        loaded = [backend.load_snapshot("acct-1", v) for v in (2, 3, 6, 7, 9, 10, 99)]
        assert [s.version if s else None for s in loaded] == [None, 3, 3, 7, 7, 10, 10]
        backend.save_snapshot(Snapshot("acct-1", 7, "State", 3, b"again", 44))
        assert backend.load_snapshot("acct-1", 8) == Snapshot("acct-1", 7, "State", 3, b"again", 44)
        assert backend.load_snapshot("acct-2") == Snapshot("acct-2", 1, "State", 1, b"other", 43)
        assert backend.load_snapshot("acct-3") is None


def _projections_refused(store: Any) -> None:
    """Without ``transactions``: a projection is refused, writing nothing."""
    backend = store.backend
    token = backend.events_change_token()
    for call in (
        lambda: backend.project("p", 0, 1, lambda txn: txn.put("c", "k", b"v")),
        lambda: backend.reset_projection("p", ["c"]),
    ):
        err = raises(NotSupported, call)
        assert "SQLite or PostgreSQL" in str(err), str(err)
    assert backend.checkpoints() == {} and backend.get_document("c", "k") is None
    assert backend.list_documents("c", "", 10) == []
    assert backend.events_change_token() == token


def check_projections(target: EventStoreTarget) -> None:
    with target.open(SimClock()) as store:
        if not target.transactions:
            _projections_refused(store)
            return
        backend = store.backend
        assert backend.checkpoints() == {}

        def first(txn: ProjectionTxn) -> None:
            assert txn.get("balances", "a") is None
            txn.put("balances", "a", b"1")
            assert txn.get("balances", "a") == b"1", "a batch reads its own writes"
            txn.put("balances", "b", b"2")
            txn.put("names", "a", b"ada")

        backend.project("balance", 0, 5, first)
        assert backend.checkpoints() == {"balance": 5}
        assert backend.list_documents("balances", "", 10) == [("a", b"1"), ("b", b"2")]
        assert backend.list_documents("balances", "a", 10) == [("b", b"2")]
        assert backend.list_documents("balances", "", 1) == [("a", b"1")]
        calls: list[str] = []

        def failing(txn: ProjectionTxn) -> None:
            txn.put("balances", "a", b"changed")
            txn.delete("balances", "b")
            calls.append("ran")
            raise KeyError("handler bug")

        raises_key = None
        try:
            backend.project("balance", 5, 9, failing)
        except KeyError as exc:
            raises_key = exc
        assert raises_key is not None and calls == ["ran"], "the handler's error propagates"
        assert backend.checkpoints() == {"balance": 5}, "a failed batch moves nothing"
        assert backend.get_document("balances", "a") == b"1"
        assert backend.get_document("balances", "b") == b"2"
        err = raises(ProjectionConflict, lambda: backend.project("balance", 4, 9, failing))
        assert err.details == {"projection": "balance", "expected": 4, "actual": 5}
        assert calls == ["ran"], "a conflicting batch does not run the handler"
        raises(ProjectionConflict, lambda: backend.project("other", 3, 4, failing))
        bad: Any = "text"
        raises(UsageError, lambda: backend.project("balance", 5, 6, lambda t: t.put("c", "k", bad)))

        def second(txn: ProjectionTxn) -> None:
            txn.delete("balances", "b")
            txn.delete("balances", "absent")
            txn.put("balances", "c", b"3")

        def appending(txn: ProjectionTxn) -> None:
            txn.put("balances", "a", b"changed")
            store.append("acct-1", [new_event()])  # would wait for itself on SQLite

        raises(UsageError, lambda: backend.project("balance", 5, 9, appending))
        assert backend.get_document("balances", "a") == b"1" and store.safe_position() == 0
        backend.project("balance", 5, 9, second)
        backend.project("other", 0, 2, lambda txn: txn.put("others", "x", b"x"))
        assert backend.list_documents("balances", "", 10) == [("a", b"1"), ("c", b"3")]
        assert backend.checkpoints() == {"balance": 9, "other": 2}
        backend.reset_projection("balance", ["balances", "names"])
        assert backend.checkpoints() == {"balance": 0, "other": 2}
        assert backend.list_documents("balances", "", 10) == []
        assert backend.get_document("names", "a") is None
        assert backend.get_document("others", "x") == b"x", "reset touches only its collections"
        backend.project("balance", 0, 1, lambda txn: txn.put("balances", "z", b"0"))
        assert backend.list_documents("balances", "", 10) == [("z", b"0")]


def check_projection_reset_runs_its_hook_in_one_transaction(target: EventStoreTarget) -> None:
    """``reset_projection`` with ``apply``: collections emptied (``clear``),
    the hook's writes and the checkpoint's 0 commit together or not at all,
    and waiting runners are woken."""
    with target.open(SimClock()) as store:
        if not target.transactions:
            _projections_refused(store)
            return
        backend = store.backend

        def build(txn: ProjectionTxn) -> None:
            txn.put("docs", "a", b"1")
            txn.put("docs", "b", b"2")
            txn.put("kept", "k", b"k")

        backend.project("p", 0, 5, build)

        def failing(txn: ProjectionTxn) -> None:
            txn.clear("docs")
            txn.put("kept", "k", b"changed")
            raise UsageError("the hook failed")

        err = raises(UsageError, lambda: backend.reset_projection("p", ["kept"], failing))
        assert str(err) == "the hook failed", "the hook's own error, as it was raised"
        assert backend.checkpoints() == {"p": 5}, "a failed hook changes nothing"
        assert backend.list_documents("docs", "", 10) == [("a", b"1"), ("b", b"2")]
        assert backend.get_document("kept", "k") == b"k"
        seen: list[bytes | None] = []

        def hook(txn: ProjectionTxn) -> None:
            txn.put("docs", "early", b"gone")
            txn.clear("docs")  # also what this transaction wrote before
            seen.append(txn.get("docs", "a"))
            txn.put("docs", "c", b"3")  # a write after the clear stays

        token = backend.events_change_token()
        backend.reset_projection("p", [], hook)
        assert seen == [None]
        assert backend.checkpoints() == {"p": 0}
        assert backend.list_documents("docs", "", 10) == [("c", b"3")]
        assert backend.get_document("kept", "k") == b"k", "only what it was told to empty"
        assert backend.wait_for_events(token, 5.0) != token, "waiting runners must look again"


def check_subject_keys(target: EventStoreTarget) -> None:
    with target.open(SimClock()) as store:
        backend = store.backend
        assert backend.find_subject_keys(["u1"]) == {}
        assert backend.subject_key("u1", b"k1") == b"k1"
        assert backend.subject_key("u1", b"k2") == b"k1", "created once"
        assert backend.subject_key("u2", b"k2") == b"k2"
        assert backend.find_subject_keys(["u1", "u2", "u3"]) == {"u1": b"k1", "u2": b"k2"}
        backend.forget_subject("u1")
        backend.forget_subject("u1")  # idempotent
        err = raises(SubjectForgotten, lambda: backend.subject_key("u1", b"k3"))
        assert err.details == {"subject": "u1"} and "u1" in str(err)
        assert backend.find_subject_keys(["u1", "u2"]) == {"u1": None, "u2": b"k2"}
        backend.forget_subject("u9")  # never had a key: it never will
        raises(SubjectForgotten, lambda: backend.subject_key("u9", b"k9"))
        assert backend.find_subject_keys(["u9"]) == {"u9": None}


def check_wait_for_events(target: EventStoreTarget) -> None:
    with target.open(SimClock()) as store:
        backend = store.backend
        token = backend.events_change_token()
        assert backend.wait_for_events(token, 0.01) == token, "no change: the same token"
        store.append("acct-1", [new_event()])
        moved = backend.events_change_token()
        assert moved != token and backend.wait_for_events(token, 5.0) == moved
        timer = threading.Timer(0.05, lambda: store.append("acct-1", [new_event()]))
        timer.start()
        try:
            woken = backend.wait_for_events(moved, 30.0)  # returns when the timer appends
        finally:
            timer.join()
        assert woken != moved and store.safe_position() == 2


@durable_only
def check_reopen_keeps_everything(target: EventStoreTarget) -> None:
    clock = SimClock()
    ids = [uuid.uuid4(), uuid.uuid4()]
    with target.open(clock) as store:
        first = store.append("acct-1", [Deposited(amount=1), Deposited(amount=2)], ids=ids)
        store.append("acct-2", [new_event()])
        store.delete("acct-2")
        store.append("acct-3", [new_event()])
        store.delete("acct-3", hard=True)
        store.backend.save_snapshot(Snapshot("acct-1", 1, "S", 1, b"s", 5))
        if target.transactions:
            store.backend.project("p", 0, 4, lambda txn: txn.put("docs", "k", b"v"))
        store.backend.subject_key("u1", b"k1")
        store.backend.forget_subject("u2")
        before = everything(store)
    with target.open(clock) as store:
        assert everything(store) == before
        assert store.append("acct-1", [Deposited(amount=1), Deposited(amount=2)], ids=ids) == first
        assert store.state("acct-2")[1:] == (0, True, False)
        raises(StreamDeleted, lambda: store.append("acct-3", [new_event()]))
        assert store.append("acct-2", [new_event()], NO_STREAM).first_version == 1
        assert store.append("acct-1", [new_event()], 1).positions == (len(before) + 2,)
        assert store.backend.load_snapshot("acct-1") == Snapshot("acct-1", 1, "S", 1, b"s", 5)
        if target.transactions:
            assert store.backend.checkpoints() == {"p": 4}
            assert store.backend.get_document("docs", "k") == b"v"
        assert store.backend.find_subject_keys(["u1", "u2"]) == {"u1": b"k1", "u2": None}


CHECKS: list[Check] = [
    check_snapshots,
    check_projections,
    check_projection_reset_runs_its_hook_in_one_transaction,
    check_subject_keys,
    check_wait_for_events,
    check_reopen_keeps_everything,
]
