"""Concurrent histories: what clients asked for, when, and what they were told.

A history is a set of :class:`Operation`\\ s. Each one has the client that ran
it, the time it was called and the time it returned, its input and its output.
Times are numbers on one clock shared by every client (a logical sequence is
fine: only their order matters). Two kinds of operation carry less knowledge:

* returned, output unknown (``output is UNKNOWN``, ``return_time`` set): it
  took effect somewhere between its call and its return, but what it observed
  is not known (a read that timed out but is known to have finished);
* never returned (``return_time is None``, ``output is UNKNOWN``): the client
  crashed or timed out. The operation may have taken effect at any moment after
  its call, or never. This is Jepsen's ``:info``.

An operation that is known *not* to have taken effect (Jepsen's ``:fail`` for
a write) is simply left out of the history.

Record a history with :class:`Recorder` (thread-safe; it can also stamp the
times itself with a logical clock), or build operations directly::

    rec = Recorder()
    rec.invoke("c1", ("write", 1))
    rec.invoke("c2", ("read",))
    rec.ok("c1", None)
    rec.ok("c2", 1)
    rec.invoke("c3", ("cas", 1, 2))
    rec.info("c3")            # crashed: unknown outcome
    history = rec.history()

or, around a real call (an exception leaves the outcome unknown)::

    with rec.call("c1", ("write", 5)) as call:
        store.write("x", 5)
        call.ok(None)
"""

from __future__ import annotations

import enum
import itertools
import threading
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from ..errors import UsageError

__all__ = [
    "UNKNOWN",
    "Call",
    "History",
    "Operation",
    "Recorder",
    "Unknown",
]


class Unknown(enum.Enum):
    """The type of :data:`UNKNOWN` (an enum so it pickles as a singleton)."""

    UNKNOWN = "unknown"

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Literal[Unknown.UNKNOWN] = Unknown.UNKNOWN
"""The output of an operation whose result nobody saw (models accept any value)."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One call by one client: input, output, and the interval it was in flight.

    ``return_time is None`` means the call never returned (unknown outcome, may
    take effect at any later point or never); its ``output`` is then
    :data:`UNKNOWN`. ``id`` is its position in the :class:`History`.
    """

    client: Hashable
    input: Any
    output: Any
    call_time: float
    return_time: float | None
    id: int = -1

    @property
    def returned(self) -> bool:
        """Whether the call returned (so it certainly took effect before ``return_time``)."""
        return self.return_time is not None

    @property
    def known(self) -> bool:
        """Whether the output is known."""
        return self.output is not UNKNOWN


@dataclass(frozen=True)
class History:
    """An immutable set of operations, each with its ``id`` = its index here.

    Build one from operations (``History.of(ops)`` renumbers them), from a
    :class:`Recorder`, or from a file (:mod:`unbundled.consistency.checker`'s
    ``parse_history``). Raises :class:`~unbundled.UsageError` if an operation
    returns before it was called, or claims a known output without returning.
    """

    operations: tuple[Operation, ...]
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for index, op in enumerate(self.operations):
            if op.id != index:
                raise UsageError(
                    f"operation {index} has id {op.id}; build histories with History.of()",
                    index=index,
                )
            if op.return_time is not None and op.return_time < op.call_time:
                raise UsageError(
                    f"operation {index} of client {op.client!r} returns "
                    f"({op.return_time}) before it is called ({op.call_time})",
                    index=index,
                )
            if op.return_time is None and op.output is not UNKNOWN:
                raise UsageError(
                    f"operation {index} of client {op.client!r} never returned but has "
                    f"an output ({op.output!r}); use UNKNOWN",
                    index=index,
                )

    @classmethod
    def of(cls, operations: Iterable[Operation], *, source: str | None = None) -> History:
        """A history of ``operations``, renumbered 0..n-1 in the order given."""
        ops = tuple(
            Operation(op.client, op.input, op.output, op.call_time, op.return_time, index)
            for index, op in enumerate(operations)
        )
        return cls(ops, source)

    def __len__(self) -> int:
        return len(self.operations)

    def __iter__(self) -> Iterator[Operation]:
        return iter(self.operations)

    def __getitem__(self, index: int) -> Operation:
        return self.operations[index]

    @property
    def clients(self) -> list[Hashable]:
        """The clients, in order of their first call."""
        seen: dict[Hashable, None] = {}
        for op in sorted(self.operations, key=lambda o: o.call_time):
            seen.setdefault(op.client, None)
        return list(seen)

    def prefix(self, time: float) -> History:
        """The history as it looked at ``time``: only operations called by then;
        those that had not returned yet become unknown-outcome (never returned)."""
        ops: list[Operation] = []
        for op in self.operations:
            if op.call_time > time:
                continue
            if op.return_time is not None and op.return_time <= time:
                ops.append(op)
            else:
                ops.append(Operation(op.client, op.input, UNKNOWN, op.call_time, None))
        return History.of(ops, source=self.source)


class Recorder:
    """Records a history as it happens; safe to use from many threads.

    Call :meth:`invoke` just *before* sending a request and :meth:`ok` just
    *after* its answer arrives (or :meth:`info` if the answer never came, or
    :meth:`fail` if the operation certainly had no effect). Without explicit
    ``time`` arguments the recorder stamps each event with the next number of a
    logical clock under a lock, which orders events exactly as they happened in
    real time. With explicit times (e.g. ``time.monotonic_ns()`` from several
    processes, merged later with :meth:`add`), every time must come from one
    clock: don't mix both styles in one recorder.

    A client runs one operation at a time; a client id that crashed can be
    reused after :meth:`info` (Jepsen uses a fresh id; both work).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clock = itertools.count()
        self._pending: dict[Hashable, tuple[Any, float]] = {}
        self._done: list[Operation] = []

    def _now(self, time: float | None) -> float:
        return float(next(self._clock)) if time is None else time

    def invoke(self, client: Hashable, input: Any, time: float | None = None) -> None:
        """``client`` calls an operation with ``input`` now (or at ``time``)."""
        with self._lock:
            if client in self._pending:
                raise UsageError(
                    f"client {client!r} invoked an operation while one is in flight",
                    client=client,
                )
            self._pending[client] = (input, self._now(time))

    def _complete(self, client: Hashable) -> tuple[Any, float]:
        try:
            return self._pending.pop(client)
        except KeyError:
            raise UsageError(
                f"client {client!r} completed an operation it never invoked", client=client
            ) from None

    def ok(self, client: Hashable, output: Any = None, time: float | None = None) -> None:
        """``client``'s operation returned ``output`` now (or at ``time``)."""
        with self._lock:
            input, call = self._complete(client)
            self._done.append(Operation(client, input, output, call, self._now(time)))

    def info(self, client: Hashable) -> None:
        """``client``'s operation will never return: its outcome is unknown."""
        with self._lock:
            input, call = self._complete(client)
            self._done.append(Operation(client, input, UNKNOWN, call, None))

    def fail(self, client: Hashable) -> None:
        """``client``'s operation certainly had no effect: it is left out.

        Only for errors that prove nothing happened (e.g. rejected before
        being sent). A compare-and-set that ran and did not swap is an
        :meth:`ok` with output ``False``, not a failure.
        """
        with self._lock:
            self._complete(client)

    def add(self, operations: Iterable[Operation]) -> None:
        """Add operations recorded elsewhere (another process), with their times."""
        with self._lock:
            self._done.extend(operations)

    def call(self, client: Hashable, input: Any) -> Call:
        """A context manager around one operation; see :class:`Call`."""
        return Call(self, client, input)

    def history(self) -> History:
        """The history so far. Calls still in flight are included as never returned."""
        with self._lock:
            ops = list(self._done)
            ops += [Operation(c, i, UNKNOWN, t, None) for c, (i, t) in self._pending.items()]
        return History.of(sorted(ops, key=lambda o: o.call_time))


class Call:
    """``with recorder.call(client, input) as call: ...; call.ok(output)``.

    Invokes on entry. Leaving the block without :meth:`ok` or :meth:`fail`
    (say, by an exception: a timeout or a lost connection) records the
    outcome as unknown, which is the only safe assumption.
    """

    def __init__(self, recorder: Recorder, client: Hashable, input: Any) -> None:
        self._recorder = recorder
        self._client = client
        self._input = input
        self._completed = False

    def __enter__(self) -> Call:
        self._recorder.invoke(self._client, self._input)
        return self

    def ok(self, output: Any = None) -> None:
        """The call returned ``output``."""
        self._recorder.ok(self._client, output)
        self._completed = True

    def fail(self) -> None:
        """The call certainly had no effect."""
        self._recorder.fail(self._client)
        self._completed = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._completed:
            self._recorder.info(self._client)


def by_client(operations: Sequence[Operation]) -> dict[Hashable, list[Operation]]:
    """The operations of each client, in call order."""
    lanes: dict[Hashable, list[Operation]] = {}
    for op in sorted(operations, key=lambda o: o.call_time):
        lanes.setdefault(op.client, []).append(op)
    return lanes
