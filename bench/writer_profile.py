"""Where one commit cycle of the SQLite group-commit writer spends its time.

Measured in the benchmark only: :func:`profiled` patches the writer's steps
(``unbundled.backends.sqlite._writer`` and the event and unit stages) with
timers for the length of a ``with`` block and restores them after; nothing
is left in the library. Each step is timed with ``time.perf_counter_ns``
(wall) and ``time.thread_time_ns`` (the writer thread's CPU), exclusively:
a step's time does not include the steps it calls. Statements the writer
runs on its own connection (BEGIN, SAVEPOINT, COMMIT, the unit's
idempotency reads and writes) are timed through a thin proxy of that
connection, put in place by the writer thread itself before it serves.

Wall minus CPU inside a step is time the writer thread was not running:
waiting for the disk (COMMIT's fsync), for the GIL (held by the event loop
or another thread), or for the OS to schedule it. The timers cost about a
microsecond each, so a profiled run is a little slower than a plain one;
the report gives both rates.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from unbundled.backends.sqlite import _events, _log_stage, _unit, _writer

_now = time.perf_counter_ns
_cpu = time.thread_time_ns


class Spans:
    """Exclusive wall nanoseconds and call counts per named step, and the
    CPU nanoseconds of the leaf steps timed with ``cpu=True``.

    Wall time is read with ``perf_counter_ns`` (about 55 ns a call); the
    thread's CPU time costs a system call (about 0.6 us), so it is read only
    around the few steps that run once per cycle and call no other step."""

    def __init__(self) -> None:
        self.wall: defaultdict[str, int] = defaultdict(int)
        self.cpu: defaultdict[str, int] = defaultdict(int)
        self.calls: defaultdict[str, int] = defaultdict(int)
        self._local = threading.local()

    def _stack(self) -> list[int]:
        stack: list[int] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def timed(
        self, name: str | Callable[..., str], fn: Callable[..., Any], *, cpu: bool = False
    ) -> Callable[..., Any]:
        """``fn`` timed as step ``name`` (or ``name(*args)``, for a statement)."""
        wall_of, cpu_of, calls = self.wall, self.cpu, self.calls

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            stack = self._stack()
            started = _now()
            used = _cpu() if cpu else 0
            stack.append(0)
            try:
                return fn(*args, **kwargs)
            finally:
                child = stack.pop()
                elapsed = _now() - started
                step = name if isinstance(name, str) else name(*args)
                if cpu:
                    cpu_of[step] += _cpu() - used
                wall_of[step] += elapsed - child
                calls[step] += 1
                if stack:
                    stack[-1] += elapsed

        return wrapper

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        return {k: (self.wall[k], self.cpu[k], self.calls[k]) for k in list(self.wall)}


def _statement(sql: str, *_: Any) -> str:
    """The step a statement on the writer's connection belongs to."""
    word = sql.lstrip()[:9].upper()
    if word.startswith("BEGIN"):
        return "BEGIN IMMEDIATE (take the write lock)"
    if word.startswith("COMMIT"):
        return "COMMIT (WAL append + fsync)"
    if word.startswith(("SAVEPOINT", "RELEASE", "ROLLBACK")):
        return "SAVEPOINT / RELEASE per request"
    return "other SQL on the writer's connection (a unit's idempotency rows)"


class _TimedConnection:
    """The writer's connection, its ``execute`` timed per statement kind."""

    def __init__(self, conn: Any, spans: Spans) -> None:
        self._conn = conn
        # COMMIT is a leaf and runs once per cycle: its CPU time is worth reading.
        timed_cpu = spans.timed(_statement, conn.execute, cpu=True)
        timed = spans.timed(_statement, conn.execute)

        def execute(sql: str, *args: Any) -> Any:
            return (timed_cpu if sql == "COMMIT" else timed)(sql, *args)

        self.execute = execute

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class _TimedEvent:
    """The writer's wake-up event, its ``wait`` timed as idle time."""

    def __init__(self, event: threading.Event, spans: Spans) -> None:
        self._event = event
        self.wait = spans.timed("wait for requests (idle)", event.wait, cpu=True)
        self.set = event.set
        self.clear = event.clear


# (owner, attribute, step): the methods timed while profiling.
_METHODS: list[tuple[Any, str, str]] = [
    (_log_stage.Stage, "begin", "PRAGMA data_version (another process wrote?)"),
    (_log_stage.Stage, "stage", "stage log records (offsets, CRCs)"),
    (_log_stage.Stage, "flush", "flush log records (INSERT + UPDATE partitions)"),
    (_events.EventStage, "prepare", "events: read stream versions and ids"),
    (_events.EventStage, "stage", "events: decide versions, CRCs"),
    (_events.EventStage, "flush", "events: INSERT"),
    (_unit.SqliteUnit, "_apply_unit", "unit: apply (Python around the parts)"),
    (_writer.Writer, "_transaction", "transaction loop (Python between steps)"),
]


@dataclass
class Profile:
    """What :func:`profiled` measured between :meth:`start` and :meth:`stop`."""

    spans: Spans
    writers: list[_writer.Writer]
    before: dict[str, tuple[int, int, int]] | None = None
    after: dict[str, tuple[int, int, int]] | None = None
    wall_ns: int = 0
    writer_cpu_ns: int = 0
    loop_cpu_ns: int = 0
    process_cpu_ns: int = 0
    cycles: int = 0
    _marks: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)

    def _writer_cpu(self) -> int:
        writer = self.writers[-1]
        ident = writer._thread.ident
        assert ident is not None
        return time.clock_gettime_ns(time.pthread_getcpuclockid(ident))

    def start(self) -> None:
        """Call on the event loop's thread, right before the timed work."""
        self.before = self.spans.snapshot()
        self._marks = (
            _now(),
            self._writer_cpu(),
            _cpu(),
            time.process_time_ns(),
            self.writers[-1].transactions,
        )

    def stop(self) -> None:
        """Call on the same thread, right after it."""
        wall, writer_cpu, loop_cpu, process_cpu, cycles = self._marks
        self.wall_ns = _now() - wall
        self.writer_cpu_ns = self._writer_cpu() - writer_cpu
        self.loop_cpu_ns = _cpu() - loop_cpu
        self.process_cpu_ns = time.process_time_ns() - process_cpu
        self.cycles = self.writers[-1].transactions - cycles
        self.after = self.spans.snapshot()

    def steps(self) -> list[tuple[str, int, int | None, int]]:
        """(step, wall ns, CPU ns or None where not read, calls) between
        start and stop, largest first. The last, the writer's own loop, is
        the rest of the wall time: what the writer did outside every step."""
        assert self.before is not None and self.after is not None
        out: list[tuple[str, int, int | None, int]] = []
        for name, (wall, cpu, calls) in self.after.items():
            w0, c0, n0 = self.before.get(name, (0, 0, 0))
            if calls - n0:
                out.append((name, wall - w0, cpu - c0 if cpu else None, calls - n0))
        out.sort(key=lambda s: -s[1])
        timed_wall = sum(w for _, w, _, _ in out)
        rest = ("writer loop (queue, locks, between steps)", self.wall_ns - timed_wall, None)
        return [*out, (*rest, self.cycles)]


@contextlib.contextmanager
def profiled() -> Iterator[Profile]:
    """Time the writer's steps of every SQLite database opened inside the block."""
    spans = Spans()
    profile = Profile(spans, [])
    saved: list[tuple[Any, str, Any]] = []
    serve = _writer.Writer._serve

    def timed_serve(self: _writer.Writer) -> None:
        # On the writer's own thread, before it serves: a submitter sets the
        # wake-up event only once the writer has said it sleeps, which it
        # does only after this swap, so no wake-up goes to the old event.
        self._conn = _TimedConnection(self._conn, spans)  # type: ignore[assignment]
        self._wake = _TimedEvent(self._wake, spans)  # type: ignore[assignment]
        self._on_commit = spans.timed("after-commit hook (readers' notice)", self._on_commit)
        if self._idle is not None:
            self._idle = spans.timed("maintenance between batches", self._idle)
        profile.writers.append(self)
        serve(self)

    try:
        announce = _writer.Writer.__dict__["_announce"]
        saved.append((_writer.Writer, "_announce", announce))
        # A leaf, once or twice per cycle: its wall time beyond its CPU time
        # is the writer waiting for the GIL while it hands results back.
        _writer.Writer._announce = spans.timed(  # type: ignore[method-assign]
            "wake callers (resolve their futures)", announce, cpu=True
        )
        for owner, attribute, step in _METHODS:
            original = owner.__dict__[attribute]
            saved.append((owner, attribute, original))
            setattr(owner, attribute, spans.timed(step, original))
        saved.append((_writer.Writer, "_serve", serve))
        _writer.Writer._serve = timed_serve  # type: ignore[method-assign]
        yield profile
    finally:
        for owner, attribute, original in reversed(saved):
            setattr(owner, attribute, original)


__all__ = ["Profile", "Spans", "profiled"]
