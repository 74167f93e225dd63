"""What a linearizability check finds: the verdict and, for a violation, why.

Plain data, below both the search (``_check``) that makes it and the page
(``_html``) that pictures it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ..history import History, Operation
from ._model import Model

__all__ = ["Outcome", "Verdict", "Violation"]


class Verdict(enum.Enum):
    """The answer. Its value is the exact text the CLI prints last."""

    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not linearizable"
    UNKNOWN = "unknown"

    @property
    def exit_status(self) -> int:
        """0 linearizable, 1 not linearizable, 2 unknown (the CLI's)."""
        return {"linearizable": 0, "not linearizable": 1, "unknown": 2}[self.value]


@dataclass(frozen=True)
class Violation:
    """Why a history is not linearizable, reduced to its shortest failing prefix.

    ``operations``: the shortest prefix (in time) of the failing partition
    that is already not linearizable. Operations in flight at its end appear
    as never returned (unknown outcome). ``culprit`` is the operation whose
    return ends the prefix: before it returned an order existed, after it none
    does. ``longest``/``states``: the longest partial linearization the search
    found (indexes into ``operations``) and the model state after each step;
    ``model`` is the model those states belong to (a part's model, for kv).
    """

    operations: tuple[Operation, ...]
    culprit: Operation
    longest: tuple[int, ...]
    states: tuple[Any, ...]
    partition_size: int
    model: Model[Any]

    @property
    def time(self) -> float:
        """The moment from which no linearization exists (the culprit's return)."""
        assert self.culprit.return_time is not None
        return self.culprit.return_time


@dataclass(frozen=True)
class Outcome:
    """What :func:`check` found, as data (:class:`Result` adds its picture)."""

    verdict: Verdict
    model: Model[Any]
    history: History
    partitions: int
    partitions_checked: int
    elapsed_s: float
    steps: int
    violation: Violation | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True only for a proved ``LINEARIZABLE``."""
        return self.verdict is Verdict.LINEARIZABLE
