"""Types of the CLI's numeric options. Every number an option takes is
bounded by :mod:`unbundled.limits`, so a value out of range is a usage error
(exit 2) before anything is opened or written; the library checks the same
bounds again for callers that are not the CLI."""

from __future__ import annotations

import math
from typing import Any

import click

from .. import limits

__all__ = ["PARTITION", "POSITION", "POSITIVE", "Seconds"]

# An offset, position or version (0 allowed), and a count of them (1 and up).
POSITION = click.IntRange(0, limits.position_max)
POSITIVE = click.IntRange(1, limits.position_max)
PARTITION = click.IntRange(0, limits.partitions_max - 1)


class Seconds(click.FloatRange):
    """A number of seconds in ``min..max`` (default: up to ``limits.wait_s_max``).

    ``click.FloatRange`` lets ``nan`` through (it fails no comparison); a
    timeout of NaN would never expire, so it is refused here.
    """

    def __init__(self, min: float = 0.0, max: float = limits.wait_s_max) -> None:
        super().__init__(min, max)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value} is not a number of seconds.", param, ctx)
        return seconds
