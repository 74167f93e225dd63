"""A linearizability checker (Porcupine's algorithm, in Python).

Linearizable means: every operation appears to take effect at one instant
between its call and its return, in an order a single sequential copy of the
object (the *model*) would accept. This package decides that for a recorded
history, or says ``unknown`` if its time budget runs out: it never answers
``linearizable`` without a proof.

Python API (stable; other parts of unbundled record histories with it)::

    from unbundled.consistency.checker import Recorder, check, register, Verdict

    rec = Recorder()                       # thread-safe; stamps a logical clock
    rec.invoke(client, ("write", 1))       # just before the request
    rec.ok(client, None)                   # just after the answer
    rec.invoke(client, ("cas", 1, 2)); rec.ok(client, True)    # swapped
    rec.invoke(client, ("read",));     rec.info(client)        # no answer: unknown outcome
    with rec.call(other, ("read",)) as call:                   # exception -> unknown outcome
        call.ok(store.read())

    result = check(rec.history(), register(), budget_s=10)
    result.verdict        # Verdict.LINEARIZABLE | NOT_LINEARIZABLE | UNKNOWN
    result.ok             # True only if proved linearizable
    result.violation      # for NOT_LINEARIZABLE: shortest failing prefix, culprit op
    result.write_html("violation.html")   # clients as lanes, ops as bars

* :class:`Operation` (client, input, output,
  call_time, return_time; ``return_time=None`` and ``output=UNKNOWN`` for an
  operation that never returned) and ``History.of(operations)`` build a
  history directly, e.g. from times recorded in several processes
  (``time.monotonic_ns()`` is one clock for all processes on Linux).
* Built-in models (input tuples; see each function): :func:`register`
  (``("read",)``, ``("write", v)``, ``("cas", expected, new)`` -> bool,
  ``("delete",)``), :func:`kv` (the same with a key: ``("get", k)``,
  ``("put", k, v)``, ``("append", k, s)``, ``("cas", k, expected, new)``,
  ``("delete", k)``; partitioned per key), :func:`queue`
  (``("enqueue", v)``, ``("dequeue",)`` -> value or None), and
  :func:`append_log` (``("append", v)`` -> offset, ``("read",)`` -> all).
* Your own model: ``Model(name, init, step, partition=None, state_key=None)``
  with ``step(state, input, output) -> (ok, new_state)``; see :class:`Model`.
* Files: :func:`parse_history` reads ``jepsen`` (etcd register logs),
  ``porcupine-kv`` (EDN maps) and ``jsonl`` (documented in
  :mod:`unbundled.consistency.checker._formats`), told apart by their first
  line unless a format is given; errors name file and line. :func:`to_jsonl`
  writes a recorded history in the ``jsonl`` format, to check it later
  (``unbundled check linearizable FILE``) or keep it beside a failing test.
* :func:`generate_history`: linearizable histories (get/put/cas/append) from
  a simulated real execution with random overlap and crashes; for tests.
* CLI: ``unbundled check linearizable HISTORY [--model register|kv]
  [--format jepsen|porcupine-kv|jsonl] [--html out.html] [--budget SECONDS]``.
"""

from __future__ import annotations

from ..history import UNKNOWN as UNKNOWN
from ..history import Call as Call
from ..history import History as History
from ..history import Operation as Operation
from ..history import Recorder as Recorder
from ._check import Result as Result
from ._check import Verdict as Verdict
from ._check import Violation as Violation
from ._check import check as check
from ._formats import FORMATS as FORMATS
from ._formats import parse_history as parse_history
from ._formats import to_jsonl as to_jsonl
from ._generate import generate_history as generate_history
from ._model import Model as Model
from ._model import append_log as append_log
from ._model import kv as kv
from ._model import partition_by as partition_by
from ._model import queue as queue
from ._model import register as register

__all__ = [
    "FORMATS",
    "UNKNOWN",
    "Call",
    "History",
    "Model",
    "Operation",
    "Recorder",
    "Result",
    "Verdict",
    "Violation",
    "append_log",
    "check",
    "generate_history",
    "kv",
    "parse_history",
    "partition_by",
    "queue",
    "register",
    "to_jsonl",
]
