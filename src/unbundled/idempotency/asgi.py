"""ASGI middleware for the ``Idempotency-Key`` HTTP header field (IETF draft
``draft-ietf-httpapi-idempotency-key-header``), for Starlette, FastAPI or any
ASGI application. It depends on the ASGI interface only.

For the configured methods (POST and PATCH by default), a request carrying
the header is run once per key:

* first request: the application runs; its response (status, headers, body)
  is buffered, stored under the key, then sent;
* a retry with the same key and the same request (method, path, query and
  body: the fingerprint): the stored response, byte for byte, plus the
  ``Idempotent-Replayed: true`` header; the application does not run;
* the same key with another request: ``422`` (``application/problem+json``);
* the same key while the first request is still running: ``409`` with
  ``Retry-After``;
* a missing key when ``required=True``: ``400``; a malformed key (or several
  ``Idempotency-Key`` fields): ``400``.

Responses whose status is transient (5xx, 408, 425, 429 by default; choose
with ``store_status``) are not stored: the key is released and a retry runs
the request again. Every other response, 4xx included, is deterministic and
replayed. A response larger than ``response_bytes_max`` is not stored either:
the key is released and the response streams through with an
``Idempotency-Warning`` header.

The header value is a Structured Field String (``"8e03978e-40d5"``) as the
draft says; a bare token (``8e03978e-40d5``), which many clients send, is
accepted too. Either way the key must pass :func:`unbundled.idempotency._core.check_key`.

Keys are scoped to the client by default (:func:`by_client`): the
authenticated principal, else a digest of the request's credentials. A keyed
request from which no client can be told is refused with ``400``
(``idempotency_client_unknown``), never run in a key space shared with other
clients; ``namespace=`` chooses the client another way, and only
``global_keys=True`` shares one key space among all clients.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from http import HTTPStatus
from typing import Any

import msgspec

from .. import limits
from .._bounds import check_int
from ..errors import IdempotencyKeyReused, RequestInProgress, StaleToken, UsageError
from . import _core
from ._clients import NamespaceFunction, by_client, check_namespace
from .aio import AsyncIdempotency
from .api import Attempt

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Extensions that send a response without http.response.body messages: the
# application must not see them, or its response could not be captured.
_UNCAPTURABLE = ("http.response.pathsend", "http.response.zerocopysend")


def transient_status(status: int) -> bool:
    """Statuses that say "try again": server errors, 408 Request Timeout,
    425 Too Early and 429 Too Many Requests. Their responses are not stored."""
    return status >= 500 or status in (408, 425, 429)


def store_by_default(status: int) -> bool:
    """The default ``store_status``: every response that is not transient."""
    return not transient_status(status)


class _StoredResponse(msgspec.Struct, frozen=True):
    """A response as stored: text only, so that any result encoder keeps it."""

    status: int
    headers: list[tuple[str, str]]
    body: str  # base64


def parse_key(values: list[bytes]) -> str:
    """The key of the ``Idempotency-Key`` field values; ``UsageError`` (the
    reason) when there is more than one field or the value is malformed."""
    if len(values) != 1:
        raise UsageError("send exactly one Idempotency-Key header field")
    try:
        text = values[0].decode("ascii").strip(" \t")
    except UnicodeDecodeError:
        raise UsageError("the Idempotency-Key value must be ASCII") from None
    if text.startswith('"'):
        text = _parse_sf_string(text)
    return _core.check_key(text)


def _parse_sf_string(text: str) -> str:
    """RFC 8941 section 4.2.5: a quoted string with ``\\"`` and ``\\\\`` escapes,
    printable ASCII only; parameters after it (``;name=value``) are ignored."""
    out: list[str] = []
    i = 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            if i + 1 >= len(text) or text[i + 1] not in '"\\':
                raise UsageError("bad escape in the Idempotency-Key string")
            out.append(text[i + 1])
            i += 2
            continue
        if char == '"':
            rest = text[i + 1 :].lstrip(" \t")
            if rest and not rest.startswith(";"):
                raise UsageError("unexpected characters after the Idempotency-Key string")
            return "".join(out)
        if not 0x20 <= ord(char) <= 0x7E:
            raise UsageError("the Idempotency-Key string holds a non-printable character")
        out.append(char)
        i += 1
    raise UsageError("the Idempotency-Key string has no closing quote")


class _Problem(Exception):
    """An HTTP problem to answer with (RFC 9457), raised inside the middleware."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.headers = list(headers)


class IdempotencyMiddleware:
    """Wrap an ASGI application: ``app = IdempotencyMiddleware(app, idem)``
    (Starlette: ``Middleware(IdempotencyMiddleware, idem)``).

    ``idem`` is an :class:`~unbundled.idempotency.AsyncIdempotency`, or the
    name of the lifespan state entry that holds one: open the store in the
    application's lifespan, ``yield {"idempotency": idem}``, and pass
    ``"idempotency"`` (the server then refuses to start if the lifespan
    yields no such store). Its ``lease_ms`` must exceed the slowest request,
    or a retry after the lease runs the request a second time.

    Keys are scoped per client. ``namespace(scope)`` names the client of a
    request (default :func:`by_client`: the authenticated principal, else a
    digest of the ``Authorization`` header); a keyed request it returns None
    (or ``""``) for is answered ``400`` (``idempotency_client_unknown``) and
    does not run. ``global_keys=True`` instead shares one key space among all
    clients: only for an API whose every caller is trusted with every other
    caller's responses.
    """

    def __init__(
        self,
        app: ASGIApp,
        idem: AsyncIdempotency | str,
        header: str = "Idempotency-Key",
        methods: Iterable[str] = ("POST", "PATCH"),
        required: bool = False,
        replay_header: str = "Idempotent-Replayed",
        *,
        store_status: Callable[[int], bool] = store_by_default,
        request_bytes_max: int = 1024 * 1024,
        response_bytes_max: int = 1024 * 1024,
        retry_after_s: int = 1,
        warning_header: str = "Idempotency-Warning",
        docs_url: str | None = None,
        namespace: NamespaceFunction | None = None,
        global_keys: bool = False,
    ) -> None:
        if isinstance(idem, str):
            if not idem:
                raise UsageError("name the lifespan state entry that holds the store")
        elif not isinstance(idem, AsyncIdempotency):
            raise UsageError(
                "IdempotencyMiddleware needs an AsyncIdempotency, or the name of the lifespan "
                f"state entry that holds one; got {type(idem).__name__}"
            )
        # base64 grows the body by a third; the stored result has a hard limit.
        check_int(
            "response_bytes_max", response_bytes_max, 1, limits.idempotency_result_bytes_max // 2
        )
        check_int("request_bytes_max", request_bytes_max, 0, limits.idempotency_request_bytes_max)
        check_int("retry_after_s", retry_after_s, 0, int(limits.wait_s_max))
        if not isinstance(global_keys, bool):
            raise UsageError(f"global_keys must be True or False, got {global_keys!r}")
        if global_keys and namespace is not None:
            raise UsageError("pass namespace= or global_keys=True, not both")
        if namespace is not None and not callable(namespace):
            raise UsageError(f"namespace must be a function of the scope, got {namespace!r}")
        self.app = app
        self.idem = idem if isinstance(idem, AsyncIdempotency) else None
        self.state_key = idem if isinstance(idem, str) else None
        self.header = header
        self.methods = frozenset(m.upper() for m in methods)
        self.required = required
        self.replay_header = replay_header
        self.store_status = store_status
        self.request_bytes_max = request_bytes_max
        self.response_bytes_max = response_bytes_max
        self.retry_after_s = retry_after_s
        self.warning_header = warning_header
        self.docs_url = docs_url
        self.global_keys = global_keys
        self.namespace: NamespaceFunction | None = (
            None if global_keys else namespace if namespace is not None else by_client()
        )
        self._header_name = header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.state_key is not None:
            await self.app(scope, receive, self._checked_startup(scope, send))
            return
        if scope["type"] != "http" or scope["method"].upper() not in self.methods:
            await self.app(scope, receive, send)
            return
        values = [v for n, v in scope.get("headers", ()) if n.lower() == self._header_name]
        if not values and not self.required:
            await self.app(scope, receive, send)
            return
        idem = self._store(scope)
        try:
            key = self._key(scope, values)
            body = await self._read_body(receive)
            if body is None:
                return  # the client went away before sending its request
            attempt = await self._claim(idem, key, scope, body)
        except _Problem as problem:
            await self._send_problem(send, problem)
            return
        if attempt.replayed:
            await self._replay(send, attempt)
            return
        try:
            await self._first(idem, scope, body, receive, send, attempt)
        except BaseException:
            await idem.release(attempt)  # transient: a retry runs again
            raise

    # --- the store ------------------------------------------------------------

    def _store(self, scope: Scope) -> AsyncIdempotency:
        """The store: given, or the lifespan state's entry."""
        if self.idem is not None:
            return self.idem
        found = (scope.get("state") or {}).get(self.state_key)
        if not isinstance(found, AsyncIdempotency):
            raise UsageError(self._no_store_message(found), state_key=self.state_key)
        return found

    def _no_store_message(self, found: object) -> str:
        return (
            f"the lifespan state holds no AsyncIdempotency under {self.state_key!r} "
            f"(found {type(found).__name__}): open the store in the application's lifespan "
            f"and yield {{{self.state_key!r}: idem}}"
        )

    def _checked_startup(self, scope: Scope, send: Send) -> Send:
        """``send`` of the lifespan protocol, failing the startup when the
        lifespan did not put the store in its state: the server refuses to
        start instead of answering every keyed request with a 500."""

        async def checked(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                found = (scope.get("state") or {}).get(self.state_key)
                if not isinstance(found, AsyncIdempotency):
                    message = {
                        "type": "lifespan.startup.failed",
                        "message": self._no_store_message(found),
                    }
            await send(message)

        return checked

    # --- the request ----------------------------------------------------------

    def _key(self, scope: Scope, values: list[bytes]) -> str:
        """The stored key: the client's namespace, ``/``, the client's key."""
        if not values:
            raise _Problem(
                400,
                "idempotency_key_missing",
                f"{self.header} is missing",
                f"this operation requires an {self.header} header",
            )
        try:
            key = parse_key(values)
        except UsageError as err:
            raise _Problem(
                400, "idempotency_key_malformed", f"{self.header} is malformed", err.message
            ) from None
        if self.namespace is None:
            return key
        namespace = self.namespace(scope)
        if namespace is None or namespace == "":
            raise _Problem(
                400,
                "idempotency_client_unknown",
                f"{self.header} needs a known client",
                f"an {self.header} is accepted only on a request that identifies its client "
                "(credentials, or a signed-in user): keys are scoped per client, so that "
                "one client's key never returns another client's response",
            )
        namespace = check_namespace(namespace)  # a bad one is the server's bug: 500
        room = limits.idempotency_key_chars_max - len(namespace) - 1
        if len(key) > room:
            raise _Problem(
                400,
                "idempotency_key_malformed",
                f"{self.header} is malformed",
                f"an {self.header} may hold at most {room} characters here, got {len(key)}",
            )
        return f"{namespace}/{key}"

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.request_bytes_max:
                raise _Problem(
                    413,
                    "request_too_large",
                    "Request body too large",
                    f"an idempotent request body may hold at most {self.request_bytes_max} bytes",
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _claim(self, idem: AsyncIdempotency, key: str, scope: Scope, body: bytes) -> Attempt:
        """Claim the key for this request: the fingerprint covers the method,
        path, query and body, so any other request under the key is a 422."""
        request = b"\n".join(
            [
                scope["method"].upper().encode("latin-1"),
                scope.get("path", "").encode("utf-8"),
                scope.get("query_string", b""),
                body,
            ]
        )
        try:
            return await idem.attempt(key, request)
        except IdempotencyKeyReused:
            raise _Problem(
                422,
                "idempotency_key_reused",
                f"{self.header} reused",
                f"the {self.header} {key!r} was already used with a different request; "
                "send a new key for a new request",
            ) from None
        except RequestInProgress:
            raise _Problem(
                409,
                "request_in_progress",
                "Request in progress",
                f"a request with {self.header} {key!r} is still being processed; retry later",
                [("retry-after", str(self.retry_after_s))],
            ) from None

    # --- the responses --------------------------------------------------------

    async def _replay(self, send: Send, attempt: Attempt) -> None:
        try:
            stored = msgspec.convert(attempt.result, _StoredResponse)
        except msgspec.ValidationError:
            raise UsageError(
                f"idempotency key {attempt.key!r} holds a result that is not an HTTP response "
                "(is the store shared with other uses of the same keys? set namespace=)",
                key=attempt.key,
            ) from None
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in stored.headers]
        headers.append((self.replay_header.lower().encode("latin-1"), b"true"))
        await send({"type": "http.response.start", "status": stored.status, "headers": headers})
        await send({"type": "http.response.body", "body": base64.b64decode(stored.body)})

    async def _first(
        self,
        idem: AsyncIdempotency,
        scope: Scope,
        body: bytes,
        receive: Receive,
        send: Send,
        attempt: Attempt,
    ) -> None:
        """Run the application on the replayed body and store its response."""
        delivered = False

        async def app_receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then wait for the disconnect, as usual

        capture = _Capture(self, idem, send, attempt)
        extensions = {
            k: v for k, v in (scope.get("extensions") or {}).items() if k not in _UNCAPTURABLE
        }
        await self.app({**scope, "extensions": extensions}, app_receive, capture.send)
        if capture.passing:
            return
        if capture.start is None:
            await idem.release(attempt)  # no response: the server answers 500
            return
        status = int(capture.start["status"])
        content = b"".join(capture.chunks)
        if self.store_status(status):
            stored = _StoredResponse(
                status,
                [(n.decode("latin-1"), v.decode("latin-1")) for n, v in capture.start["headers"]],
                base64.b64encode(content).decode("ascii"),
            )
            # Stored before it is sent: a client that saw the response gets
            # the same one on any retry. StaleToken: our lease ran out and a
            # retry took over (it stores its own response); this one still
            # happened, so the client gets it.
            with contextlib.suppress(StaleToken):
                await idem.complete(attempt, msgspec.to_builtins(stored))
        else:
            await idem.release(attempt)
        await send(capture.start)
        await send({"type": "http.response.body", "body": content})

    async def _send_problem(self, send: Send, problem: _Problem) -> None:
        """An ``application/problem+json`` response (RFC 9457)."""
        title = problem.title if self.docs_url else HTTPStatus(problem.status).phrase
        document = {
            "type": self.docs_url or "about:blank",
            "title": title,
            "status": problem.status,
            "detail": problem.detail,
            "code": problem.code,
        }
        content = json.dumps(document).encode("utf-8")
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(content)).encode("ascii")),
        ]
        if self.docs_url:
            headers.append((b"link", f'<{self.docs_url}>; rel="describedby"'.encode("latin-1")))
        headers += [(n.encode("latin-1"), v.encode("latin-1")) for n, v in problem.headers]
        await send({"type": "http.response.start", "status": problem.status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


class _Capture:
    """The application's ``send`` on a first request: buffers the response,
    or (too large, trailers, an unknown message) stops buffering, releases
    the key and passes the response through with a warning header."""

    def __init__(
        self,
        middleware: IdempotencyMiddleware,
        idem: AsyncIdempotency,
        send: Send,
        attempt: Attempt,
    ) -> None:
        self._middleware = middleware
        self._idem = idem
        self._send = send
        self._attempt = attempt
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.passing = False

    async def send(self, message: Message) -> None:
        if self.passing:
            await self._send(message)
            return
        kind = message["type"]
        if kind == "http.response.start" and self.start is None:
            self.start = {**message, "headers": list(message.get("headers", []))}
            if message.get("trailers"):
                await self._pass_through("the response has trailers", None)
            return
        if kind == "http.response.body" and self.start is not None:
            chunk = bytes(message.get("body", b""))
            self.chunks.append(chunk)
            self.size += len(chunk)
            if self.size > self._middleware.response_bytes_max:
                limit = self._middleware.response_bytes_max
                await self._pass_through(
                    f"the response is larger than {limit} bytes",
                    bool(message.get("more_body", False)),
                )
            return
        await self._pass_through(f"the application sent {kind!r}", True)
        await self._send(message)

    async def _pass_through(self, reason: str, more_body: bool | None) -> None:
        """Release the key and send what is buffered; ``more_body`` None sends
        the start only."""
        self.passing = True
        await self._idem.release(self._attempt)
        if self.start is None:
            return
        warning = f"not stored for replay ({reason}): a retry with this key runs the request again"
        name = self._middleware.warning_header.lower().encode("latin-1")
        start = {**self.start, "headers": [*self.start["headers"], (name, warning.encode())]}
        await self._send(start)
        if more_body is not None:
            body = b"".join(self.chunks)
            await self._send({"type": "http.response.body", "body": body, "more_body": more_body})


__all__ = [
    "IdempotencyMiddleware",
    "by_client",
    "parse_key",
    "store_by_default",
    "transient_status",
]
