"""Backends: one module per storage engine, each implementing every concept
protocol it can serve. Choose one by construction, or by URL with :func:`open_backend`.

* ``memory://`` — :class:`MemoryBackend`, the reference model; no durability.
* ``sqlite:///path.db`` or a plain path — :class:`SqliteBackend`, the embedded
  default; ``sqlite:///path.db?mode=ro`` opens it read-only (nothing is
  created, migrated or written: it works on a read-only file system).
* ``postgresql://user@host/db?schema=name`` (or ``postgres://``) —
  :class:`~unbundled.backends.postgres.PostgresBackend`: the event store,
  idempotency keys and the key-value store (needs ``pip install
  'unbundled[postgres]'``); the log refuses it.
* ``redis://host:port/db?prefix=...`` (or ``rediss://``) —
  :class:`~unbundled.backends.redis.RedisBackend`, idempotency keys only
  (needs ``pip install 'unbundled[redis]'``); the log and the event store refuse it.
* ``nats://host:port?bucket=name`` — :class:`~unbundled.backends.nats.NatsBackend`,
  the key-value store only (needs ``pip install 'unbundled[nats]'``), opened
  by :func:`open_kv_backend`; :func:`open_backend` refuses it with
  ``NotSupported`` (the log, the event store and idempotency keys do not run
  on NATS yet), never a silent fallback.

:data:`SERVES` says the same as a table, which the CLI's ``--db`` help and
its errors are made from.

:func:`destroy` drops everything unbundled keeps under a URL (a schema, a
key prefix, a bucket, a file), after checking that it is ours and not open.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from .._ground import SyncLevel, now_ms
from ..errors import BackendError, NotFound, NotSupported, UsageError
from ..log._protocol import LogBackend
from ._destroy import DestroyReport as DestroyReport
from ._destroy import destroy as destroy
from .memory import MemoryBackend as MemoryBackend
from .sqlite import SqliteBackend as SqliteBackend

__all__ = [
    "EVENTS",
    "IDEMPOTENCY",
    "KV",
    "LOG",
    "SERVES",
    "URL_FORMS",
    "DestroyReport",
    "MemoryBackend",
    "SqliteBackend",
    "destroy",
    "open_backend",
    "open_kv_backend",
    "url_scheme",
]

# The parts of unbundled a backend may serve, as SERVES names them.
#: The log (:class:`unbundled.Log`), as :data:`SERVES` names it.
LOG = "the log"
#: The event store (:class:`unbundled.EventStore`), as :data:`SERVES` names it.
EVENTS = "the event store"
#: Idempotency keys (:class:`unbundled.Idempotency`), as :data:`SERVES` names them.
IDEMPOTENCY = "idempotency keys"
#: The key-value store (:class:`unbundled.consistency.KV`), as :data:`SERVES` names it.
KV = "the key-value store"
_EVERYTHING = (LOG, EVENTS, IDEMPOTENCY, KV)

#: What each URL scheme serves (aliases: "" and sqlite, postgres and postgresql,
#: rediss and redis). The backends' ``supports_*`` flags say the same once opened.
SERVES: dict[str, tuple[str, ...]] = {
    "sqlite": _EVERYTHING,
    "memory": _EVERYTHING,
    "postgresql": (EVENTS, IDEMPOTENCY, KV),
    "redis": (IDEMPOTENCY,),
    "nats": (KV,),
}
#: How to write a URL of each scheme, for messages and help.
URL_FORMS = {
    "sqlite": "a SQLite file (PATH or sqlite:///PATH)",
    "memory": "memory://",
    "postgresql": "postgresql://user@host/db?schema=name",
    "redis": "redis://host:port/db?prefix=name",
    "nats": "nats://host:port?bucket=name",
}
_ALIASES = {"": "sqlite", "postgres": "postgresql", "rediss": "redis"}


def url_scheme(url: str) -> str:
    """The scheme of a backend URL, aliases resolved (a plain path is ``sqlite``)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    return _ALIASES.get(scheme, scheme)


def urls_serving(what: str) -> str:
    """The URL forms that serve ``what`` (one of :data:`SERVES`' values), as prose."""
    forms = [URL_FORMS[scheme] for scheme, serves in SERVES.items() if what in serves]
    return ", ".join(forms[:-1]) + f" or {forms[-1]}" if len(forms) > 1 else forms[0]


def _listed(items: tuple[str, ...], conjunction: str = "and") -> str:
    if len(items) < 2:
        return items[0]
    return ", ".join(items[:-1]) + f" {conjunction} {items[-1]}"


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


def open_backend(
    url: str | os.PathLike[str],
    *,
    sync: SyncLevel = "full",
    clock: Callable[[], int] = now_ms,
    **options: Any,
) -> LogBackend:
    """Open the backend a URL names. A plain path means SQLite.

    A PostgreSQL URL gives a backend that serves the event store only (its
    ``supports_log`` is False): ``Log.open`` passes what this returns through
    :func:`require_log`, which refuses it with ``NotSupported``.
    """
    text = os.fspath(url)
    if not isinstance(text, str) or not text:
        raise UsageError(f"a backend URL or path is required, got {url!r}", url=url)
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme == "memory":
        return MemoryBackend(clock=clock)
    if scheme in ("", "sqlite"):
        path, read_only = sqlite_target(text)
        if path != ":memory:":
            check_sqlite_path(path, must_exist=read_only)
        if read_only:
            options = {**options, "read_only": True}
        try:
            return SqliteBackend(path, sync=sync, clock=clock, **options)
        except BackendError as exc:
            if read_only or _writable(path):
                raise
            raise BackendError(
                f"{path} cannot be written here (a read-only file system or no permission); "
                f"to read it, open it read-only: sqlite:///{path}?mode=ro",
                path=path,
            ) from exc
    if scheme in ("postgresql", "postgres"):
        postgres = _backend_class("postgres", "PostgresBackend", "psycopg 3", text)
        backend: Any = postgres(text, sync=sync, clock=clock, **options)
        return backend  # type: ignore[no-any-return]
    if scheme in ("redis", "rediss"):
        redis_backend: Any = _open_redis(text, sync, clock, options)
        return redis_backend  # type: ignore[no-any-return]
    if scheme == "nats":
        raise NotSupported(
            f"{text!r}: nats:// serves only the key-value store (KV.open, `unbundled kv`), "
            f"not {_listed(tuple(w for w in _EVERYTHING if w != KV), 'or')}",
            url=text,
        )
    raise UsageError(f"unknown backend URL scheme {scheme!r} in {text!r}", url=text)


def open_kv_backend(
    url: str | os.PathLike[str], *, sync: SyncLevel = "full", **options: Any
) -> Any:
    """Open the backend of the key-value store: :func:`open_backend`'s, and
    ``nats://`` too (which serves the key-value store only)."""
    text = os.fspath(url)
    if isinstance(text, str) and text.startswith("nats://"):
        nats = _backend_class("nats", "NatsBackend", "nats-py", text)
        return nats(text, sync=sync, **options)
    return open_backend(text, sync=sync, **options)


def _open_redis(
    text: str, sync: SyncLevel, clock: Callable[[], int], options: dict[str, Any]
) -> Any:
    if clock is not now_ms:
        raise NotSupported(
            "the redis backend keeps time with the Redis server's clock (so that app "
            "servers with skewed clocks agree on leases); it takes no clock=",
            url=text,
        )
    redis = _backend_class("redis", "RedisBackend", "redis-py", text)
    return redis(text, sync=sync, **options)


def _backend_class(extra: str, name: str, driver: str, url: str) -> Any:
    """A server backend's class, imported only when a URL names it (its
    driver is an optional extra); ``NotSupported`` saying what to install."""
    try:
        return getattr(importlib.import_module(f".{extra}", __name__), name)
    except ImportError as exc:
        raise NotSupported(
            f"the {extra} backend needs {driver}: pip install 'unbundled[{extra}]' ({exc})",
            url=url,
        ) from exc


def _refuse(backend: Any, what: str) -> NotSupported:
    """Close ``backend`` (opened for ``what``, which it does not serve) and
    say what it serves and which URLs serve ``what``."""
    backend.close()
    serves = SERVES.get(url_scheme(backend.url), ())
    return NotSupported(
        f"the backend at {backend.url!r} serves {_listed(serves) if serves else 'other parts'}, "
        f"not {what}; open {what} on {urls_serving(what)}",
        url=backend.url,
    )


def require_log(backend: Any) -> LogBackend:
    """``backend`` if it serves the log; otherwise close it and raise ``NotSupported``."""
    if getattr(backend, "supports_log", True):
        result: LogBackend = backend
        return result
    raise _refuse(backend, LOG)


def require_events(backend: Any) -> Any:
    """``backend`` if it serves the event store; otherwise close it and raise ``NotSupported``."""
    if getattr(backend, "supports_events", True):
        return backend
    raise _refuse(backend, EVENTS)
