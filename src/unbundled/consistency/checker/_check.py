"""``check(history, model)``: partition, search each part, explain a violation."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._bounds import check_optional_seconds
from ..history import History, Operation
from ._html import render
from ._model import Model
from ._result import Outcome, Verdict, Violation
from ._search import search

__all__ = ["Result", "Verdict", "Violation", "check"]


@dataclass(frozen=True)
class Result(Outcome):
    """The outcome of :func:`check`.

    ``verdict`` is never ``LINEARIZABLE`` unless every partition was proved
    linearizable; running out of ``budget_s`` gives ``UNKNOWN`` (unless a
    violation was already found, which is definite). ``violation`` is set for
    ``NOT_LINEARIZABLE``.
    """

    def html(self, title: str | None = None) -> str:
        """A self-contained HTML page picturing the result (see :mod:`._html`)."""
        return render(self, title=title)

    def write_html(self, path: str | Path, title: str | None = None) -> None:
        """Write :meth:`html` to ``path``."""
        Path(path).write_text(self.html(title), encoding="utf-8")


def _parts(history: History, model: Model[Any], partition: bool) -> list[list[Operation]]:
    ops = list(history.operations)
    if not partition or model.partition is None:
        return [ops] if ops else []
    parts = [list(part) for part in model.partition(ops)]
    return [part for part in parts if part]


def check(
    history: History | Iterable[Operation],
    model: Model[Any],
    *,
    budget_s: float | None = None,
    partition: bool = True,
    explain: bool = True,
) -> Result:
    """Is ``history`` linearizable with respect to ``model``?

    Partitions the history with ``model.partition`` (unless ``partition`` is
    false), checks the parts smallest first, and stops at the first violation.
    ``budget_s``: seconds of search after which the verdict is ``UNKNOWN``
    (``None``: no limit). ``explain``: on a violation, also find the shortest
    failing prefix and the longest partial linearization (a few more
    searches of the failing part; skipped if the budget is spent).

    Raises :class:`~unbundled.UsageError` for a negative budget, and whatever
    ``model.step`` raises for an input it does not understand (a ``ValueError``
    for the built-in models).
    """
    check_optional_seconds("budget_s", budget_s)
    if not isinstance(history, History):
        history = History.of(history)
    started = time.perf_counter()
    deadline = None if budget_s is None else started + budget_s
    parts = sorted(_parts(history, model, partition), key=len)
    searched = model
    if partition and model.partition is not None and model.part_model is not None:
        searched = model.part_model
    steps = 0
    checked = 0
    unknown = 0
    for part in parts:
        outcome = search(part, searched, deadline)
        steps += outcome.steps
        checked += 1
        if outcome.linearizable is None:
            unknown += 1
            # Keep going: a later part may still prove a violation.
            continue
        if not outcome.linearizable:
            violation = _explain(part, searched, deadline) if explain else None
            if violation is None:
                violation = Violation(tuple(part), _last_return(part), (), (), len(part), searched)
            return Result(
                Verdict.NOT_LINEARIZABLE,
                model,
                history,
                len(parts),
                checked,
                time.perf_counter() - started,
                steps,
                violation,
            )
    verdict = Verdict.UNKNOWN if unknown else Verdict.LINEARIZABLE
    notes = (f"{unknown} of {len(parts)} partitions ran out of time",) if unknown else ()
    return Result(
        verdict,
        model,
        history,
        len(parts),
        checked,
        time.perf_counter() - started,
        steps,
        notes=notes,
    )


def _last_return(ops: Sequence[Operation]) -> Operation:
    returned = [op for op in ops if op.return_time is not None]
    return max(returned, key=lambda op: (op.return_time, op.id))


def _explain(part: list[Operation], model: Model[Any], deadline: float | None) -> Violation | None:
    """The shortest failing prefix of ``part``, by binary search over return times.

    Linearizability is prefix-closed (a linearization of a longer prefix,
    cut before the ops called later, serves the shorter one), so the prefixes
    switch from linearizable to not exactly once.
    """
    sub = History.of(part)
    ends = sorted({op.return_time for op in part if op.return_time is not None})
    low, high = 0, len(ends) - 1  # ends[high] fails (the whole part does)
    while low < high:
        middle = (low + high) // 2
        outcome = search(sub.prefix(ends[middle]).operations, model, deadline)
        if outcome.linearizable is None:
            return None
        if outcome.linearizable:
            low = middle + 1
        else:
            high = middle
    prefix = sub.prefix(ends[high])
    outcome = search(prefix.operations, model, deadline, track_longest=True)
    if outcome.linearizable is None:
        return None
    culprit = _last_return(prefix.operations)
    return Violation(prefix.operations, culprit, outcome.order, outcome.states, len(part), model)
