"""SQLite URLs: ``sqlite:///relative.db``, ``sqlite:////absolute.db``, a plain
path, ``?mode=ro`` for read-only; and the clear errors for a path SQLite
cannot open."""

from __future__ import annotations

import os

from ..._registry import url_scheme
from ...errors import NotFound, UsageError

_SQLITE_OPTIONS = {"mode": ("ro", "rw")}


def sqlite_target(url: str) -> tuple[str, bool]:
    """The file path of a ``sqlite:///...`` URL (``sqlite:////abs`` for
    absolute) or of a plain path, and whether it asks to be read-only
    (``?mode=ro``; only a ``sqlite:///`` URL takes options)."""
    if not url.startswith("sqlite://"):
        return url, False
    if not url.startswith("sqlite:///"):
        raise UsageError(
            f"bad SQLite URL {url!r}: write sqlite:///relative.db or sqlite:////absolute.db",
            url=url,
        )
    path, sep, query = url[len("sqlite:///") :].rpartition("?")
    if not sep:
        return query, False
    options = dict(item.partition("=")[::2] for item in query.split("&"))
    for name, value in options.items():
        if value not in _SQLITE_OPTIONS.get(name, ()):
            raise UsageError(
                f"bad SQLite URL {url!r}: the only option is mode=ro (read-only) or mode=rw",
                url=url,
            )
    return path, options.get("mode") == "ro"


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///...`` URL (``sqlite:////abs`` for absolute),
    or of a plain path."""
    return sqlite_target(url)[0]


def read_only_url(url: str) -> str:
    """``url`` opened read-only: for a SQLite file, ``sqlite:///PATH?mode=ro``;
    other URLs unchanged (a server's permissions are its own)."""
    if url_scheme(url) != "sqlite":
        return url
    path, _ = sqlite_target(url)
    return f"sqlite:///{path}?mode=ro"


def check_sqlite_path(path: str, *, must_exist: bool) -> None:
    """A clear error for a path SQLite cannot open, instead of its "unable to
    open database file": a directory, a file in a missing directory, or (when
    ``must_exist``) a file that is not there."""
    if os.path.isdir(path):
        raise UsageError(
            f"{path!r} is a directory, not a database file: name a file, "
            f"e.g. {os.path.join(path, 'unbundled.db')!r}",
            path=path,
        )
    if os.path.exists(path):
        return
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        what = f"no database at {path!r}" if must_exist else f"cannot create {path!r}"
        raise NotFound(f"{what}: there is no directory {directory!r}", path=path)
    if must_exist:
        raise NotFound(f"no database at {path!r}", path=path)


def _writable(path: str) -> bool:
    """Whether SQLite can write ``path`` (the file, and its directory for the
    write-ahead log beside it)."""
    directory = os.path.dirname(path) or "."
    return os.access(directory, os.W_OK) and (not os.path.exists(path) or os.access(path, os.W_OK))
