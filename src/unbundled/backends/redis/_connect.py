"""Talking to a Redis server: its URL (``?prefix=`` is ours, the password
never shown), the names our connections go by, and redis-py's errors as
ours. Shared by the backend and by ``destroy``, below both."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    ReadOnlyError,
    RedisError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from ...errors import BackendError, Timeout, Unavailable, UsageError

#: The key prefix of a ``redis://`` URL without ``?prefix=``.
PREFIX_DEFAULT = "unbundled:idem:"
SOCKET_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0


def parse_url(url: str) -> tuple[str, str | None]:
    """``(url for redis-py, prefix or None)``: the ``prefix`` query parameter is ours."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    if len(prefixes) > 1 or (prefixes and not prefixes[0]):
        raise UsageError(f"give at most one non-empty prefix in {display_url(url)!r}")
    rest = urlencode([(name, value) for name, value in query if name != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefixes[0] if prefixes else None


def display_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def escape_glob(text: str) -> str:
    """``text`` as a literal in a ``SCAN MATCH`` pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def client_name(prefix: str) -> str:
    """The name (``CLIENT SETNAME``) of the connections of a store on
    ``prefix``: ``destroy`` finds the stores still open by it in ``CLIENT
    LIST``. A digest, as a name may not hold spaces and a prefix may."""
    return "unbundled-idem-" + hashlib.sha256(prefix.encode()).hexdigest()[:16]


@contextlib.contextmanager
def translated(where: str, what: str) -> Iterator[None]:
    """redis-py's errors as ours, chained (the message names the server, never its password)."""
    try:
        yield
    except RedisTimeoutError as exc:
        raise Timeout(
            f"Redis at {where} did not answer {what} in time; its outcome is unknown",
            url=where,
        ) from exc
    except (RedisConnectionError, ReadOnlyError) as exc:
        raise Unavailable(f"Redis at {where} is unavailable for {what}: {exc}", url=where) from exc
    except RedisError as exc:
        raise BackendError(f"Redis at {where} failed {what}: {exc}", url=where) from exc
