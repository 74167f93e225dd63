"""``sqlite3`` errors as unbundled's typed ones: a damaged file is
``CorruptionError``, a lock held too long ``Unavailable``, the rest
``BackendError``."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from ...errors import BackendError, CorruptionError, Error, Unavailable

# SQLite's primary result codes that mean the file is damaged: CORRUPT,
# NOTADB, and TOOBIG (a length no record we write has, read from a damaged cell).
_DAMAGED_CODES = {11, 18, 26}
# Errors without such a code that only a damaged file causes: text that is not
# the UTF-8 we wrote, a schema SQLite cannot parse, a header field out of range.
_DAMAGED_TEXTS = (
    "malformed",
    "not a database",
    "corrupt",
    "could not decode to utf-8",
    "unsupported file format",
    # Every statement we run names tables and columns that the file's format
    # version has: that SQLite cannot find one means the schema was damaged.
    "no such table",
    "no such column",
    "no such index",
)


def translate(exc: sqlite3.Error, path: str) -> Error:
    """Map a ``sqlite3`` error to a typed one (the caller chains ``from exc``)."""
    text = str(exc)
    lowered = text.lower()
    code = getattr(exc, "sqlite_errorcode", None)
    if (code is not None and code & 0xFF in _DAMAGED_CODES) or any(
        damaged in lowered for damaged in _DAMAGED_TEXTS
    ):
        return CorruptionError(f"{path}: the database file is damaged: {text}", path=path)
    if "locked" in lowered or "busy" in lowered:
        return Unavailable(f"{path}: the database stayed locked: {text}", path=path)
    return BackendError(f"{path}: SQLite failed: {text}", path=path)


@contextmanager
def translated(path: str) -> Iterator[None]:
    """``sqlite3`` errors become typed ones; so does the ``UnicodeDecodeError``
    that the sqlite3 module raises instead of an error whose message quotes
    damaged schema text (bytes that are not UTF-8)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise translate(exc, path) from exc
    except UnicodeDecodeError as exc:
        raise CorruptionError(
            f"{path}: the database file is damaged: SQLite reported an error about text "
            "that is not UTF-8 (a damaged schema)",
            path=path,
        ) from exc
