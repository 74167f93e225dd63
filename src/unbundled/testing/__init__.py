"""Public test helpers: the simulated clock and the contract suites.

A backend author runs :func:`unbundled.testing.contract.all_checks` against
their backend; an application author drives time with :class:`SimClock`.
"""

from .clock import SimClock as SimClock
from .contract import LogTarget as LogTarget
from .contract import all_checks as all_checks

__all__ = [
    "LogTarget",
    "SimClock",
    "all_checks",
]
