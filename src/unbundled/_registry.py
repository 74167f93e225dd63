"""Which backend serves a URL: the backends register their schemes here, and
every part opens its backend through :func:`open`.

The parts (the log, the event store, idempotency keys, the key-value store)
sit below the backends: a facade never imports a backend, or the layers
would point up (docs/explanation/design-rules.md, rule 4). So each backend
says which URL schemes it serves with :func:`register`, and :func:`open`
imports :mod:`unbundled.backends` by name the first time a URL is opened,
which registers them all. The static import graph points down; only this
one name is looked up at run time.

A scheme names what it serves (:data:`LOG`, :data:`EVENTS`,
:data:`IDEMPOTENCY`, :data:`KV`): :func:`open` refuses a part that its URL does
not serve with ``NotSupported``, naming what the URL serves and which URLs
serve the part, never a silent fallback.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ._ground import SyncLevel, now_ms
from .errors import NotSupported, UsageError

__all__ = [
    "EVENTS",
    "IDEMPOTENCY",
    "KV",
    "LOG",
    "SERVES",
    "URL_FORMS",
    "Opener",
    "listed",
    "open",
    "refuse",
    "register",
    "url_scheme",
    "urls_serving",
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

# The module whose import registers every backend this package ships.
_BACKENDS = "unbundled.backends"


class Opener(Protocol):
    """Opens a backend for a URL of its scheme (the URL as given, aliases
    and all). ``clock`` is :func:`~unbundled._ground.now_ms` unless the caller
    chose another; an opener that cannot use one refuses it."""

    def __call__(
        self, url: str, *, sync: SyncLevel, clock: Callable[[], int], **options: Any
    ) -> Any: ...


@dataclass(frozen=True)
class _Scheme:
    opener: Opener
    serves: tuple[str, ...]
    # Refuses a part this scheme does not serve before connecting (the
    # message the backend wants said); None: open, then refuse with refuse().
    refuse_early: Callable[[str], NotSupported] | None


#: What each URL scheme serves, in the order the schemes were registered
#: (aliases not repeated). The CLI's ``--db`` help and its errors are made from it.
SERVES: dict[str, tuple[str, ...]] = {}
#: How to write a URL of each scheme, for messages and help.
URL_FORMS: dict[str, str] = {}
_SCHEMES: dict[str, _Scheme] = {}
_ALIASES: dict[str, str] = {}
_loaded = False


def register(
    scheme: str,
    opener: Opener,
    serves: tuple[str, ...],
    *,
    form: str,
    aliases: tuple[str, ...] = (),
    refuse_early: Callable[[str], NotSupported] | None = None,
) -> None:
    """Say that ``opener`` opens URLs of ``scheme`` (and of ``aliases``; ``""``
    is a plain path), which serve the parts ``serves``; ``form`` shows how
    to write one. Registering a scheme again replaces it."""
    unknown = [part for part in serves if part not in (LOG, EVENTS, IDEMPOTENCY, KV)]
    if unknown or not serves:
        raise UsageError(f"scheme {scheme!r} must serve some of the parts, got {serves!r}")
    _SCHEMES[scheme] = _Scheme(opener, serves, refuse_early)
    SERVES[scheme] = serves
    URL_FORMS[scheme] = form
    for alias in aliases:
        _ALIASES[alias] = scheme


def _load() -> None:
    """Import the backends, which register their schemes. The import system
    makes a concurrent first call wait for the import to finish; the flag
    only skips the lookup afterwards."""
    global _loaded
    if not _loaded:
        importlib.import_module(_BACKENDS)
        _loaded = True


def url_scheme(url: str) -> str:
    """The scheme of a backend URL, aliases resolved (a plain path is ``sqlite``)."""
    _load()
    scheme = url.split("://", 1)[0] if "://" in url else ""
    return _ALIASES.get(scheme, scheme)


def listed(items: tuple[str, ...], conjunction: str = "and") -> str:
    """``items`` as prose: ``a, b and c``."""
    if len(items) < 2:
        return items[0]
    return ", ".join(items[:-1]) + f" {conjunction} {items[-1]}"


def urls_serving(what: str) -> str:
    """The URL forms that serve ``what`` (one of :data:`SERVES`' values), as prose."""
    _load()
    forms = [URL_FORMS[scheme] for scheme, serves in SERVES.items() if what in serves]
    return ", ".join(forms[:-1]) + f" or {forms[-1]}" if len(forms) > 1 else forms[0]


def refuse(backend: Any, what: str) -> NotSupported:
    """Close ``backend`` (opened for ``what``, which it does not serve) and
    say what it serves and which URLs serve ``what``."""
    backend.close()
    serves = SERVES.get(url_scheme(backend.url), ())
    return NotSupported(
        f"the backend at {backend.url!r} serves {listed(serves) if serves else 'other parts'}, "
        f"not {what}; open {what} on {urls_serving(what)}",
        url=backend.url,
    )


def open(
    url: str | os.PathLike[str],
    *,
    serving: str | tuple[str, ...] | None = None,
    sync: SyncLevel = "full",
    clock: Callable[[], int] = now_ms,
    **options: Any,
) -> Any:
    """Open the backend a URL names (a plain path means SQLite), for any
    part, or for ``serving``: one part, or a tuple of parts of which it must
    serve at least one. A URL that serves none of them raises
    ``NotSupported`` (before connecting, where its backend says so; else the
    backend is opened, closed and refused, the message naming what it does
    serve). An unknown scheme or an empty URL is a ``UsageError``."""
    text = os.fspath(url)
    if not isinstance(text, str) or not text:
        raise UsageError(f"a backend URL or path is required, got {url!r}", url=url)
    scheme = url_scheme(text)
    entry = _SCHEMES.get(scheme)
    if entry is None:
        raise UsageError(f"unknown backend URL scheme {scheme!r} in {text!r}", url=text)
    wanted = (serving,) if isinstance(serving, str) else serving
    served = wanted is None or any(part in entry.serves for part in wanted)
    if not served and entry.refuse_early is not None:
        raise entry.refuse_early(text)
    backend = entry.opener(text, sync=sync, clock=clock, **options)
    if not served:
        assert wanted is not None  # served is True when nothing is wanted
        raise refuse(backend, listed(wanted, "or"))
    return backend
