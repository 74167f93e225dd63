"""Which client sent an HTTP request: the namespace that scopes its
idempotency keys (pure functions of the ASGI scope, no I/O).

An idempotency key is the client's name for one request, so it means
something only together with the client: two clients may well pick the same
key (a counter, a timestamp, a bug), and a server that keeps one global key
space would replay one client's response, with its data, to the other. The
IETF draft asks servers to scope keys per client; Stripe scopes them per
account. :func:`by_client` is the middleware's default: the authenticated
principal when there is one (``scope["user"]``, set by Starlette's
``AuthenticationMiddleware``), else a digest of the credentials the request
carries (the ``Authorization`` header by default), else no namespace, and
the middleware refuses the keyed request rather than share a key space.

The namespace is a digest, never the identity or the credential itself: the
store (and ``unbundled idempotency list``) then holds neither user names nor
tokens. Without a ``secret`` the digest is a plain (domain-separated)
SHA-256, which anyone who can read the store can test guesses against: fine
for high-entropy bearer tokens and API keys, not for Basic-auth passwords.
Pass ``secret=`` (a stable server-side secret: every app server must use the
same one, or a retry reaching another server would run again) to make the
digest a keyed HMAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from .. import limits
from ..errors import UsageError

Scope = MutableMapping[str, Any]
NamespaceFunction = Callable[[Scope], "str | None"]

# The key alphabet of ``_core.check_key`` without "/": "/" separates the
# namespace from the client's key, and a namespace holding one could make
# ``a/b`` + ``c`` and ``a`` + ``b/c`` the same stored key.
_NAMESPACE = re.compile(r"[A-Za-z0-9._:@+=~-]+")
_UNKEYED = b"unbundled idempotency namespace"
_DIGEST_BYTES = 16  # 128 bits: no two clients collide in practice


def check_namespace(namespace: object) -> str:
    """A namespace as the middleware stores it; ``UsageError`` (a bug in the
    namespace function: the server answers 500) naming the value otherwise."""
    if (
        not isinstance(namespace, str)
        or not 1 <= len(namespace) <= limits.idempotency_namespace_chars_max
        or not _NAMESPACE.fullmatch(namespace)
    ):
        raise UsageError(
            f"the idempotency namespace {namespace!r} must be a str of 1 to "
            f"{limits.idempotency_namespace_chars_max} characters from letters, digits "
            "and ._:@+=~- (no '/': it separates the namespace from the key)",
            namespace=namespace,
        )
    return namespace


def _digest(key: bytes, kind: bytes, parts: Iterable[bytes]) -> str:
    mac = hmac.new(key, kind, hashlib.sha256)
    for part in parts:
        # Length-prefixed: ("ab", "c") and ("a", "bc") must not collide.
        mac.update(len(part).to_bytes(8, "big") + part)
    raw = mac.digest()[:_DIGEST_BYTES]
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def principal(scope: Scope) -> str | None:
    """The authenticated principal's identity: ``scope["user"]`` when it says
    ``is_authenticated`` and has a non-empty ``identity`` (Starlette's
    ``BaseUser``; ``SimpleUser`` gives its user name), else None. A user
    class that does not implement ``identity`` gives None, never its
    ``display_name``: two users may share a display name."""
    user = scope.get("user")
    if user is None:
        return None
    try:
        if getattr(user, "is_authenticated", False) is not True:
            return None
        identity = user.identity
    except (AttributeError, NotImplementedError):
        return None
    return identity if isinstance(identity, str) and identity else None


def _cookies(scope: Scope, names: frozenset[str]) -> list[bytes]:
    """The values of the named cookies, in the order the request sends them."""
    found: list[bytes] = []
    for name, value in scope.get("headers", ()):
        if name.lower() != b"cookie":
            continue
        for pair in value.split(b";"):
            cookie, sep, content = pair.strip().partition(b"=")
            if sep and content.strip() and cookie.decode("latin-1") in names:
                found += [cookie, content.strip()]
    return found


def _check_names(what: str, names: Iterable[str]) -> tuple[str, ...]:
    checked = tuple(names)
    for name in checked:
        if not isinstance(name, str) or not name or not name.isascii() or " " in name:
            raise UsageError(f"{what} must be non-empty ASCII names, got {name!r}", name=name)
    return checked


def by_client(
    *,
    secret: bytes | str | None = None,
    headers: Iterable[str] = ("authorization",),
    cookies: Iterable[str] = (),
    use_principal: bool = True,
) -> NamespaceFunction:
    """A namespace function for :class:`~unbundled.idempotency.asgi.IdempotencyMiddleware`
    (its default is ``by_client()``): the client a request comes from.

    It answers, in this order: ``u:<digest>`` of the authenticated principal
    (``scope["user"]``, see :func:`principal`; skipped with
    ``use_principal=False``); ``c:<digest>`` of the request's credentials,
    the values of the ``headers`` (default ``Authorization``) and
    ``cookies`` named (none by default; e.g. ``cookies=("session",)``); or
    None when the request carries none of them, which the middleware answers
    with ``400`` (``idempotency_client_unknown``).

    Prefer the principal (or a namespace function returning the account id)
    over credentials that change between retries: a client that refreshes
    an expiring token between two attempts sends different credentials,
    and its retry runs again. ``secret`` keys the digest (HMAC-SHA-256);
    see the module docstring for when it matters.
    """
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if key is not None and (not isinstance(key, bytes) or not key):
        raise UsageError("secret must be a non-empty bytes or str")
    header_names = frozenset(n.lower().encode("latin-1") for n in _check_names("headers", headers))
    cookie_names = frozenset(_check_names("cookies", cookies))
    if not header_names and not cookie_names and not use_principal:
        raise UsageError(
            "by_client() with no headers, no cookies and use_principal=False would never "
            "find a client; pass global_keys=True to the middleware if that is what you want"
        )
    hmac_key = key if key is not None else _UNKEYED

    def namespace(scope: Scope) -> str | None:
        if use_principal:
            identity = principal(scope)
            if identity is not None:
                return "u:" + _digest(hmac_key, b"user", [identity.encode("utf-8")])
        credentials = [
            part
            for name, value in scope.get("headers", ())
            if name.lower() in header_names and value
            for part in (name.lower(), value)
        ]
        if cookie_names:
            credentials += _cookies(scope, cookie_names)
        if not credentials:
            return None
        return "c:" + _digest(hmac_key, b"credentials", credentials)

    return namespace
