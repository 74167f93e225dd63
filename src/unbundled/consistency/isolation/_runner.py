"""Run one script against one database at one level, the way Hermitage is run by hand.

Each connection has its own thread, as each of Hermitage's connections has its
own terminal. The steps are issued in script order. A step that has not
returned within ``step_timeout_s`` is *blocked* (waiting on a lock); the script
goes on with the other connections, and later steps of the blocked connection
queue behind it, as they would behind a terminal that has not returned. When a
step returns while others are blocked, the runner waits up to ``settle_s`` for
them to move, so that a statement released by a ``COMMIT`` finishes before the
next step is issued (Hermitage's "this unblocks T2").

Nothing waits forever: each connection is opened with a lock timeout
(``lock_timeout_s``), which the database turns into an abort (a lock wait
timeout prevents the anomaly just as a deadlock abort does). A statement still
running after every step was issued and that timeout passed is interrupted.

When a statement fails with an abort, the runner rolls its transaction back and
skips the connection's remaining steps, as Hermitage does ("There's nothing
else we can do, this transaction has failed"). Any other error is a bug in the
script or the setup and is raised.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ...errors import BackendError, Timeout
from ._drivers import Connection, Fixture, Rows, Variant
from ._scripts import Results, Script, Step, Verdict


@dataclass(frozen=True)
class Entry:
    """One step of a transcript: who ran what, what came back, and whether it blocked.

    ``completed_after`` is the (1-based) number of the last step issued when
    this one returned: a blocked ``UPDATE`` at step 4 with ``completed_after=6``
    was released by step 6. ``queued`` means the step was issued while its
    connection was still blocked, so it ran when that returned. ``skipped``
    means its transaction had already been aborted.
    """

    step: int
    connection: str
    statement: str
    rows: Rows | None = None
    rowcount: int | None = None
    error: str | None = None
    blocked: bool = False
    queued: bool = False
    skipped: bool = False
    completed_after: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict (rows as lists), for ``--json`` output."""
        return {
            "step": self.step,
            "connection": self.connection,
            "statement": self.statement,
            "rows": None if self.rows is None else [list(r) for r in self.rows],
            "rowcount": self.rowcount,
            "error": self.error,
            "blocked": self.blocked,
            "queued": self.queued,
            "skipped": self.skipped,
            "completed_after": self.completed_after,
        }

    def describe(self) -> str:
        """One line for a human: ``T2: UPDATE ... -> blocked, then 1 row (after step 6)``."""
        if self.skipped:
            outcome = "skipped (transaction aborted)"
        elif self.error is not None:
            outcome = f"error {self.error}"
        elif self.rows is not None:
            outcome = ", ".join(f"{k} => {v}" for k, v in self.rows) or "no rows"
        elif self.rowcount is not None:
            outcome = f"{self.rowcount} row(s)"
        else:
            outcome = "ok"
        if self.blocked:
            outcome = f"BLOCKED, then {outcome} (after step {self.completed_after})"
        elif self.queued:
            outcome = f"queued, then {outcome} (after step {self.completed_after})"
        return f"{self.step:>2} {self.connection}: {self.statement}  ->  {outcome}"


@dataclass(frozen=True)
class Timing:
    """How long the runner waits. ``step_timeout_s`` decides "blocked"; the
    databases' own lock timeouts are ``lock_timeout_s``, long enough that a
    statement the script will release is never timed out first."""

    step_timeout_s: float = 1.0
    settle_s: float = 0.3
    lock_timeout_s: float = 5.0


@dataclass
class _Done:
    rows: Rows | None = None
    rowcount: int | None = None
    error: str | None = None
    skipped: bool = False
    after: int = 0


@dataclass
class _Session:
    name: str
    jobs: queue.Queue[Callable[[], None] | None] = field(default_factory=queue.Queue)
    conn: Connection | None = None
    outstanding: int = 0
    aborted: bool = False
    committed: bool = False
    ended_at: int | None = None  # script index of the step that ended its transaction
    abort: str | None = None  # the database's error, when it aborted the transaction
    thread: threading.Thread | None = None


class _Run:
    def __init__(self, script: Script, fixture: Fixture, variant: Variant, timing: Timing):
        self.script = script
        self.fixture = fixture
        self.variant = variant
        self.timing = timing
        self.cond = threading.Condition()
        self.issued = -1  # index of the last step issued
        self.completions = 0
        self.done: dict[int, _Done] = {}
        self.blocked: set[int] = set()
        self.queued: set[int] = set()
        self.failures: list[BaseException] = []
        self.sessions = {name: _Session(name) for name in script.connections}

    # --- the session threads ----------------------------------------------------

    def _serve(self, session: _Session) -> None:
        while True:
            job = session.jobs.get()
            if job is None:
                return
            job()

    def _submit(self, session: _Session, job: Callable[[], None]) -> None:
        def wrapped() -> None:
            try:
                job()
            except BaseException as exc:  # reported by the main thread, never lost
                with self.cond:
                    self.failures.append(exc)
            finally:
                with self.cond:
                    session.outstanding -= 1
                    self.completions += 1
                    self.cond.notify_all()

        with self.cond:
            session.outstanding += 1
        session.jobs.put(wrapped)

    def _statements(self, session: _Session, step: Step) -> list[str]:
        if step.kind == "begin":
            assert session.conn is not None
            return session.conn.begin(self.variant)
        if step.kind == "commit":
            return ["COMMIT"]
        if step.kind == "rollback":
            return ["ROLLBACK"]
        return [step.sql.format(t=self.fixture.table)]

    def _execute(self, session: _Session, index: int, step: Step) -> None:
        conn = session.conn
        assert conn is not None
        result = _Done()
        if session.aborted:
            result.skipped = True
        else:
            try:
                for sql in self._statements(session, step):
                    result.rows, result.rowcount = conn.execute(sql)
            except Exception as exc:
                reason = conn.abort_reason(exc)
                if reason is None:
                    raise
                result.error = reason
                session.abort = reason
                session.aborted = True
                session.ended_at = index
                conn.rollback_quietly()
            else:
                if step.kind != "sql":
                    result.rows = result.rowcount = None  # a driver's count for BEGIN means nothing
                if step.kind in ("commit", "rollback"):
                    session.committed = step.kind == "commit"
                    session.ended_at = index
        with self.cond:
            result.after = self.issued
            self.done[index] = result

    # --- the main thread ----------------------------------------------------------

    def _outstanding(self) -> bool:
        return any(s.outstanding for s in self.sessions.values())

    def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout=timeout)

    def _moved_since(self, completions: int) -> bool:
        return self.completions != completions or not self._outstanding()

    def _settle(self) -> None:
        """Let statements released by the last step finish before the next one."""
        with self.cond:
            while self._outstanding():
                moved = self.cond.wait_for(
                    partial(self._moved_since, self.completions), timeout=self.timing.settle_s
                )
                if not moved:
                    return

    def start(self) -> None:
        def connect(session: _Session) -> Callable[[], None]:
            def job() -> None:
                session.conn = self.fixture.connect(self.variant)

            return job

        for session in self.sessions.values():
            session.thread = threading.Thread(
                target=self._serve, args=(session,), name=f"hermitage-{session.name}", daemon=True
            )
            session.thread.start()
            self._submit(session, connect(session))
        if not self._wait(lambda: not self._outstanding(), 30.0):
            raise Timeout("could not connect to the database within 30 s")
        self._raise_failures()

    def play(self) -> None:
        for index, step in enumerate(self.script.steps):
            session = self.sessions[step.connection]
            with self.cond:
                busy = session.outstanding > 0
                self.issued = index
            self._submit(session, partial(self._execute, session, index, step))
            if busy:
                self.queued.add(index)
                continue
            if self._wait(partial(self.done.__contains__, index), self.timing.step_timeout_s):
                self._settle()
            else:
                self.blocked.add(index)
        self._drain()

    def _drain(self) -> None:
        limit = self.timing.lock_timeout_s + self.timing.step_timeout_s * 2
        if self._wait(lambda: not self._outstanding(), limit):
            return
        # The database's lock timeout should have fired: interrupt what is left.
        for session in self.sessions.values():
            if session.outstanding and session.conn is not None:
                session.conn.interrupt()
        if not self._wait(lambda: not self._outstanding(), 10.0):
            raise Timeout(
                f"{self.script.name}: statements still running after the lock timeout "
                "and an interrupt",
                test=self.script.name,
            )

    def _raise_failures(self) -> None:
        if self.failures:
            first = self.failures[0]
            raise BackendError(
                f"{self.script.name} at {self.variant.label}: unexpected error: {first}",
                test=self.script.name,
            ) from first

    def stop(self) -> None:
        for session in self.sessions.values():

            def close(s: _Session = session) -> None:
                if s.conn is not None:
                    s.conn.close()

            self._submit(session, close)
            session.jobs.put(None)
        for session in self.sessions.values():
            if session.thread is not None:
                session.thread.join(timeout=10.0)

    # --- the record -----------------------------------------------------------------

    def transcript(self) -> tuple[Entry, ...]:
        entries = []
        for index, step in enumerate(self.script.steps):
            session = self.sessions[step.connection]
            statement = (
                "; ".join(self._statements(session, step))
                if session.conn is not None
                else step.kind.upper()
            )
            done = self.done.get(index)
            entries.append(
                Entry(
                    step=index + 1,
                    connection=step.connection,
                    statement=statement,
                    rows=done.rows if done else None,
                    rowcount=done.rowcount if done else None,
                    error=done.error if done else "never completed",
                    blocked=index in self.blocked,
                    queued=index in self.queued,
                    skipped=done.skipped if done else False,
                    completed_after=(done.after + 1) if done else None,
                )
            )
        return tuple(entries)

    def results(self, final: dict[int, int]) -> Results:
        reads: dict[str, dict[int, int] | None] = {}
        rowcounts: dict[str, int | None] = {}
        succeeded: dict[str, int] = {}
        for index, step in enumerate(self.script.steps):
            if step.label is None:
                continue
            done = self.done.get(index)
            good = done is not None and done.error is None and not done.skipped
            reads[step.label] = dict(done.rows) if good and done and done.rows is not None else None
            rowcounts[step.label] = done.rowcount if good and done else None
            if good and done:
                succeeded[step.label] = done.after
        committed = frozenset(s.name for s in self.sessions.values() if s.committed)
        ended = {s.name: s.ended_at for s in self.sessions.values() if s.ended_at is not None}
        aborts = {s.name: s.abort for s in self.sessions.values() if s.abort is not None}
        return Results(reads, rowcounts, succeeded, committed, ended, final, aborts)


def run_script(
    script: Script, fixture: Fixture, variant: Variant, timing: Timing
) -> tuple[Verdict, tuple[Entry, ...]]:
    """Play ``script`` on ``fixture``'s table at ``variant``; judge what happened."""
    run = _Run(script, fixture, variant, timing)
    try:
        run.start()
        run.play()
        run._raise_failures()
        final = fixture.final_state()
    finally:
        run.stop()
    return script.judge(run.results(final)), run.transcript()
