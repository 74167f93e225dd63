"""Idempotency keys are scoped to the client by default (issue 9, item 14).

Two clients that send the same key with the same body are two requests: the
second must run, and must never be answered with the first client's stored
response (its data). The default namespace is the authenticated principal,
else a digest of the request's credentials; a keyed request from which no
client can be told is refused; ``global_keys=True`` shares one key space only
when asked for. A Starlette application behind the middleware, driven through
httpx's ``ASGITransport`` on the memory backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from unbundled import UsageError
from unbundled.idempotency import AsyncIdempotency
from unbundled.idempotency.asgi import IdempotencyMiddleware, by_client

KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"
ADA, BOB = "Bearer ada-secret-token", "Bearer bob-secret-token"
# Tokens of the authentication backend: ada signs in from two devices.
USERS = {"ada-phone": "ada", "ada-laptop": "ada", "bob-phone": "bob"}


class TokenAuth(AuthenticationBackend):
    """``Authorization: Bearer <token>`` -> the token's user; no header: anonymous."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        token = conn.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in USERS:
            return None
        return AuthCredentials(["authenticated"]), SimpleUser(USERS[token])


def orders_app(idem: AsyncIdempotency, *, auth: bool = False, **options: Any) -> Starlette:
    """One endpoint whose response carries the caller's own data: who it is
    (user or credentials) and a number that every run of the endpoint bumps."""
    runs = itertools.count(1)

    async def create(request: Request) -> Response:
        body = await request.json()
        user: Any = request.scope.get("user")
        caller = user.identity if auth and user.is_authenticated else None
        owner = caller or request.headers.get("authorization", "")
        return JSONResponse(
            {"owner": owner, "run": next(runs), "amount": body["amount"]}, status_code=201
        )

    middleware = [Middleware(IdempotencyMiddleware, idem, **options)]
    if auth:
        # The authentication middleware runs first (outermost), so the
        # idempotency middleware sees scope["user"].
        middleware.insert(0, Middleware(AuthenticationMiddleware, backend=TokenAuth()))
    return Starlette(routes=[Route("/orders", create, methods=["POST"])], middleware=middleware)


Scenario = Callable[[httpx.AsyncClient, AsyncIdempotency], Awaitable[None]]


def run(scenario: Scenario, *, auth: bool = False, **options: Any) -> None:
    async def main() -> None:
        async with await AsyncIdempotency.open("memory://") as idem:
            transport = httpx.ASGITransport(
                app=orders_app(idem, auth=auth, **options), raise_app_exceptions=False
            )
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                await scenario(client, idem)

    asyncio.run(main())


async def post(
    client: httpx.AsyncClient, authorization: str | None, amount: int = 10, key: str = KEY
) -> httpx.Response:
    headers = {"Idempotency-Key": key}
    if authorization is not None:
        headers["authorization"] = authorization
    return await client.post("/orders", json={"amount": amount}, headers=headers)


def replayed(response: httpx.Response) -> bool:
    return bool(response.headers.get("idempotent-replayed") == "true")


# --- the regression: client B never receives client A's response --------------------------


def test_client_b_never_receives_client_a_response() -> None:
    async def scenario(client: httpx.AsyncClient, idem: AsyncIdempotency) -> None:
        first_a = await post(client, ADA)
        first_b = await post(client, BOB)  # same key, same body, another client
        assert first_b.status_code == 201 and not replayed(first_b)
        assert first_b.json() == {"owner": BOB, "run": 2, "amount": 10}
        assert ADA not in first_b.text

        retry_a = await post(client, ADA)  # the same client's retry is replayed
        assert replayed(retry_a) and retry_a.content == first_a.content
        retry_b = await post(client, BOB)
        assert replayed(retry_b) and retry_b.content == first_b.content
        stored = [record.key for record in await idem.records()]
        assert len(stored) == 2 and all(key.endswith(f"/{KEY}") for key in stored)
        # The store holds digests, never the credentials.
        assert not any("secret" in key or "Bearer" in key for key in stored)

    run(scenario)


def test_a_keyed_request_without_a_client_is_refused() -> None:
    async def scenario(client: httpx.AsyncClient, idem: AsyncIdempotency) -> None:
        refused = await post(client, None)
        assert refused.status_code == 400
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "idempotency_client_unknown"
        assert await idem.records() == []  # nothing ran, nothing stored
        unkeyed = await client.post("/orders", json={"amount": 1})
        assert unkeyed.status_code == 201  # no key, no key space to share: it runs

    run(scenario)


def test_the_authenticated_principal_scopes_keys() -> None:
    async def scenario(client: httpx.AsyncClient, idem: AsyncIdempotency) -> None:
        phone = await post(client, "Bearer ada-phone")
        # The same user with other credentials (a second device, a refreshed
        # token) is the same client: the retry is replayed.
        laptop = await post(client, "Bearer ada-laptop")
        assert replayed(laptop) and laptop.content == phone.content
        bob = await post(client, "Bearer bob-phone")
        assert not replayed(bob) and bob.json()["owner"] == "bob"
        # Not signed in (an unknown token): the credentials still tell the
        # client apart, and it is neither ada nor bob.
        stranger = await post(client, "Bearer unknown")
        assert not replayed(stranger) and stranger.json()["owner"] == "Bearer unknown"
        assert {r.key.split("/")[0][:2] for r in await idem.records()} == {"u:", "c:"}

    run(scenario, auth=True)


def test_global_keys_shares_one_key_space_when_asked() -> None:
    async def scenario(client: httpx.AsyncClient, idem: AsyncIdempotency) -> None:
        first_a = await post(client, ADA)
        from_b = await post(client, BOB)
        assert replayed(from_b) and from_b.content == first_a.content
        anonymous = await post(client, None)
        assert replayed(anonymous)
        assert [r.key for r in await idem.records()] == [KEY]

    run(scenario, global_keys=True)


def test_credentials_may_be_cookies_and_the_digest_keyed() -> None:
    scope_of = by_client(secret="server-side secret", headers=(), cookies=("session",))

    async def scenario(client: httpx.AsyncClient, idem: AsyncIdempotency) -> None:
        def with_session(value: str) -> dict[str, str]:
            return {"Idempotency-Key": KEY, "cookie": f"theme=dark; session={value}"}

        first = await client.post("/orders", json={"amount": 1}, headers=with_session("s1"))
        other = await client.post("/orders", json={"amount": 1}, headers=with_session("s2"))
        again = await client.post("/orders", json={"amount": 1}, headers=with_session("s1"))
        assert not replayed(first) and not replayed(other)
        assert replayed(again) and again.content == first.content
        no_session = await client.post(
            "/orders", json={"amount": 1}, headers={"Idempotency-Key": KEY, "cookie": "theme=dark"}
        )
        assert no_session.json()["code"] == "idempotency_client_unknown"

    run(scenario, namespace=scope_of)
    scope = {"headers": [(b"cookie", b"session=s1")]}
    keyed, unkeyed = scope_of(scope), by_client(headers=(), cookies=("session",))(scope)
    assert keyed is not None and unkeyed is not None and keyed != unkeyed


def test_the_key_leaves_room_for_the_namespace() -> None:
    async def scenario(client: httpx.AsyncClient, idem: AsyncIdempotency) -> None:
        namespace = by_client()({"headers": [(b"authorization", ADA.encode())]})
        assert namespace is not None
        room = 255 - len(namespace) - 1
        fits = await post(client, ADA, key="k" * room)
        assert fits.status_code == 201
        too_long = await post(client, ADA, key="k" * (room + 1))
        assert too_long.status_code == 400
        assert f"at most {room} characters" in too_long.json()["detail"]

    run(scenario)


def test_a_bad_namespace_is_the_servers_bug_and_runs_nothing() -> None:
    async def scenario(client: httpx.AsyncClient, idem: AsyncIdempotency) -> None:
        response = await post(client, ADA)
        assert response.status_code == 500
        assert await idem.records() == []

    # A "/" would let ("a/b", "c") and ("a", "b/c") meet under one stored key.
    run(scenario, namespace=lambda scope: "tenant/a")
    run(scenario, namespace=lambda scope: "t" * 65)


def test_a_namespace_function_may_say_it_knows_no_client() -> None:
    async def scenario(client: httpx.AsyncClient, idem: AsyncIdempotency) -> None:
        response = await post(client, ADA)
        assert response.json()["code"] == "idempotency_client_unknown"

    for unknown in (None, ""):
        run(scenario, namespace=lambda scope, unknown=unknown: unknown)


def test_settings_that_would_share_keys_by_mistake_are_refused() -> None:
    idem = AsyncIdempotency.__new__(AsyncIdempotency)  # never used: construction fails first
    with pytest.raises(UsageError, match="not both"):
        IdempotencyMiddleware(Starlette(), idem, namespace=lambda s: "x", global_keys=True)
    with pytest.raises(UsageError, match="global_keys must be True or False"):
        IdempotencyMiddleware(Starlette(), idem, global_keys="yes")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="never find a client"):
        by_client(headers=(), use_principal=False)
    with pytest.raises(UsageError, match="non-empty ASCII"):
        by_client(headers=("x auth",))
    with pytest.raises(UsageError, match="secret"):
        by_client(secret=b"")


# --- the general law, on random traffic ---------------------------------------------------

CLIENTS = [ADA, BOB, "Basic Y2FybDpwdw=="]
Request_ = tuple[int, str, int]  # (client, key, amount)


@given(
    st.lists(
        st.tuples(
            st.integers(0, len(CLIENTS) - 1), st.sampled_from(["k1", "k2"]), st.integers(1, 2)
        ),
        min_size=1,
        max_size=12,
    )
)
def test_every_response_belongs_to_the_client_that_asked(requests: list[Request_]) -> None:
    """Against a model keyed by (client, key): the first request of a pair
    runs, the same request again is replayed its own response, another body
    is 422; and every response a client gets names that client."""

    async def scenario(client: httpx.AsyncClient, idem: AsyncIdempotency) -> None:
        model: dict[tuple[int, str], tuple[int, bytes]] = {}
        for who, key, amount in requests:
            response = await post(client, CLIENTS[who], amount, key)
            seen = model.get((who, key))
            if seen is None:
                assert response.status_code == 201 and not replayed(response)
                model[(who, key)] = (amount, response.content)
            elif seen[0] == amount:
                assert replayed(response) and response.content == seen[1]
            else:
                assert response.status_code == 422
                continue
            assert response.json()["owner"] == CLIENTS[who]

    run(scenario)


# --- the store opened in the lifespan -----------------------------------------------------


def lifespan_app(state: dict[str, Any]) -> Starlette:
    """An application that opens (or not) its store in the lifespan."""

    @contextlib.asynccontextmanager
    async def opened(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with await AsyncIdempotency.open("memory://") as idem:
            yield {"idempotency": idem} if state.get("open") else {}

    async def create(request: Request) -> Response:
        return JSONResponse({"created": True}, status_code=201)

    return Starlette(
        routes=[Route("/orders", create, methods=["POST"])],
        middleware=[Middleware(IdempotencyMiddleware, "idempotency")],
        lifespan=opened,
    )


async def start(
    app: Any,
) -> tuple[dict[str, Any], asyncio.Queue[Any], list[Any], asyncio.Task[Any]]:
    """Drive the ASGI lifespan protocol as a server does: startup, and the
    state the application filled in."""
    scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    sent: list[Any] = []
    started = asyncio.Event()

    async def send(message: Any) -> None:
        sent.append(message)
        if message["type"].startswith("lifespan.startup"):
            started.set()

    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(app(scope, inbox.get, send))
    await asyncio.wait_for(started.wait(), 30)
    return scope["state"], inbox, sent, task


def test_the_store_may_come_from_the_lifespan_state() -> None:
    async def main() -> None:
        app = lifespan_app({"open": True})
        state, inbox, sent, task = await start(app)
        assert sent[0]["type"] == "lifespan.startup.complete"

        async def server(scope: Any, receive: Any, send: Any) -> None:
            await app({**scope, "state": dict(state)}, receive, send)  # as uvicorn copies it

        transport = httpx.ASGITransport(app=server)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            headers = {"Idempotency-Key": KEY, "authorization": ADA}
            first = await client.post("/orders", json={}, headers=headers)
            again = await client.post("/orders", json={}, headers=headers)
        assert first.status_code == 201 and replayed(again)
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 30)

    asyncio.run(main())


def test_a_lifespan_without_the_store_fails_the_startup() -> None:
    async def main() -> None:
        _, inbox, sent, task = await start(lifespan_app({}))
        assert sent[0]["type"] == "lifespan.startup.failed"
        assert "'idempotency'" in sent[0]["message"]
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 30)

    asyncio.run(main())
