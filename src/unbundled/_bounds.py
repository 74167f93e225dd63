"""Checks of the numbers a user sets, against the bounds in :mod:`unbundled.limits`.

One place for all of them, shared by every facade (and so by the CLI): a
count, offset or duration in milliseconds is an ``int`` (never a ``bool``);
a duration in seconds is a finite ``int`` or ``float``; each lies within its
range. Anything else raises :class:`~unbundled.errors.UsageError` naming the
parameter and the value, before anything is written, so no out-of-range
number reaches a backend (where it used to overflow SQLite's INTEGER inside
the writer thread).
"""

from __future__ import annotations

from . import limits
from .errors import UsageError

__all__ = ["check_int", "check_optional_int", "check_optional_seconds", "check_seconds"]


def check_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an ``int`` in ``low..high``; else ``UsageError``."""
    if type(value) is not int or not low <= value <= high:
        raise UsageError(f"{name} must be an int {low}..{high}, got {value!r}", **{name: value})
    return value


def check_optional_int(name: str, value: object, low: int, high: int) -> int | None:
    """Like :func:`check_int`, and ``None`` passes (it means "no limit" or "not set")."""
    return None if value is None else check_int(name, value, low, high)


def check_seconds(
    name: str,
    value: object,
    low: float = 0.0,
    high: float = limits.wait_s_max,
    *,
    positive: bool = False,
) -> float:
    """``value`` as a float if it is a number of seconds in ``low..high``
    (above ``low`` if ``positive``); else ``UsageError``. NaN and the
    infinities fail every comparison here, so they never pass."""
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and low <= value <= high
        and not (positive and value <= low)
    ):
        return float(value)
    bound = f"> {low:g} and <= {high:g}" if positive else f"{low:g}..{high:g}"
    raise UsageError(f"{name} must be a number of seconds {bound}, got {value!r}", **{name: value})


def check_optional_seconds(name: str, value: object, *, positive: bool = False) -> float | None:
    """Like :func:`check_seconds` with the default range, and ``None``
    passes (it means "no timeout" or "never")."""
    return None if value is None else check_seconds(name, value, positive=positive)
