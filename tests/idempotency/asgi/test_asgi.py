"""``IdempotencyMiddleware`` against the IETF draft's status codes.

A real Starlette application behind the middleware, driven through httpx's
``ASGITransport`` on the memory and SQLite backends for the status-code
matrix, and one test over real HTTP: uvicorn on a free 127.0.0.1 port,
many concurrent requests with the same key, the endpoint's effect once.

Each test is a plain function that runs its coroutine with ``asyncio.run``:
the suite does not depend on an asyncio pytest plugin.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from unbundled import UsageError
from unbundled.backends import SqliteBackend
from unbundled.idempotency import AsyncIdempotency
from unbundled.idempotency.asgi import IdempotencyMiddleware, by_client, parse_key

KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"
# Every request of these tests comes from one client; keys are scoped to it.
CREDENTIALS = {"authorization": "Bearer shop-client"}
STORED = f"{by_client()({'headers': [(b'authorization', b'Bearer shop-client')]})}/{KEY}"
WAIT_S = 30.0  # generous deadline for a server or a task to react; never a timing assertion


@dataclass
class Shop:
    """The application's side effects, counted where they happen."""

    orders: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    failures_left: int = 0
    entered: asyncio.Event | None = None
    gate: asyncio.Event | None = None


def shop_app(shop: Shop, idem: AsyncIdempotency, **options: Any) -> Starlette:
    async def create(request: Request) -> Response:
        body = await request.json()
        shop.attempts += 1
        if shop.failures_left > 0:
            shop.failures_left -= 1
            return JSONResponse({"error": "try again"}, status_code=503)
        if body.get("amount", 0) <= 0:
            return JSONResponse({"error": "amount must be positive"}, status_code=400)
        if body.get("slow"):
            assert shop.entered is not None and shop.gate is not None
            shop.entered.set()
            await shop.gate.wait()
        if body.get("crash"):
            raise RuntimeError("the handler crashed")
        shop.orders.append(body)
        number = len(shop.orders)
        return JSONResponse(
            {"order": number, "amount": body["amount"]},
            status_code=201,
            headers={"location": f"/orders/{number}", "set-cookie": f"last={number}"},
        )

    async def listing(request: Request) -> Response:
        shop.attempts += 1
        return JSONResponse({"orders": len(shop.orders)})

    async def export(request: Request) -> Response:
        shop.attempts += 1
        size = int(request.query_params["chunk"])

        async def chunks() -> AsyncIterator[bytes]:
            for n in range(3):
                yield bytes([65 + n]) * size

        return StreamingResponse(chunks(), status_code=201, media_type="text/plain")

    routes = [
        Route("/orders", create, methods=["POST"]),
        Route("/orders", listing, methods=["GET"]),
        Route("/exports", export, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(IdempotencyMiddleware, idem, **options)])


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else str(tmp_path / "idem.db")


Scenario = Callable[[httpx.AsyncClient, Shop, AsyncIdempotency], Awaitable[None]]


def run(url: str, scenario: Scenario, **options: Any) -> None:
    async def main() -> None:
        async with await AsyncIdempotency.open(url, sync="off") as idem:
            shop = Shop(entered=asyncio.Event(), gate=asyncio.Event())
            transport = httpx.ASGITransport(
                app=shop_app(shop, idem, **options), raise_app_exceptions=False
            )
            async with httpx.AsyncClient(
                transport=transport, base_url="http://shop", headers=CREDENTIALS
            ) as client:
                await scenario(client, shop, idem)

    asyncio.run(main())


def headers_without(response: httpx.Response, name: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers.multi_items() if k != name.lower()]


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check an RFC 9457 problem response and return its document."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    document: dict[str, Any] = response.json()
    assert document["status"] == status
    assert document["code"] == code
    assert document["type"] == "about:blank"
    assert document["title"] and document["detail"]
    return document


# --- first request, retry, replay ---------------------------------------------------------


def test_first_request_runs_and_a_retry_replays_it_exactly(url: str) -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        order = {"amount": 10}
        first = await client.post("/orders", json=order, headers={"Idempotency-Key": KEY})
        assert first.status_code == 201
        assert first.json() == {"order": 1, "amount": 10}
        assert "idempotent-replayed" not in first.headers
        stored = await idem.get(STORED)
        assert stored is not None and stored.state == "completed"

        retry = await client.post("/orders", json=order, headers={"Idempotency-Key": KEY})
        assert retry.status_code == 201
        assert retry.content == first.content
        assert retry.headers["idempotent-replayed"] == "true"
        assert headers_without(retry, "idempotent-replayed") == first.headers.multi_items()
        assert shop.orders == [order] and shop.attempts == 1

    run(url, scenario)


def test_quoted_and_bare_keys_are_the_same_key(url: str) -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        order = {"amount": 3}
        first = await client.post("/orders", json=order, headers={"Idempotency-Key": f'"{KEY}"'})
        bare = await client.post("/orders", json=order, headers={"Idempotency-Key": KEY})
        with_params = await client.post(
            "/orders", json=order, headers={"Idempotency-Key": f'"{KEY}";origin=retry'}
        )
        assert first.status_code == bare.status_code == with_params.status_code == 201
        assert bare.headers["idempotent-replayed"] == "true"
        assert with_params.content == first.content
        assert len(shop.orders) == 1

    run(url, scenario)


def test_the_same_key_with_another_request_is_422(url: str) -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        headers = {"Idempotency-Key": KEY}
        assert (await client.post("/orders", json={"amount": 10}, headers=headers)).is_success
        other_body = await client.post("/orders", json={"amount": 11}, headers=headers)
        problem(other_body, 422, "idempotency_key_reused")
        other_path = await client.post("/exports?chunk=1", json={"amount": 10}, headers=headers)
        problem(other_path, 422, "idempotency_key_reused")
        other_query = await client.post("/orders?x=1", json={"amount": 10}, headers=headers)
        problem(other_query, 422, "idempotency_key_reused")
        assert shop.attempts == 1

    run(url, scenario)


def test_a_retry_while_the_first_is_in_flight_is_409_with_retry_after(url: str) -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        assert shop.entered is not None and shop.gate is not None
        order = {"amount": 5, "slow": True}
        headers = {"Idempotency-Key": KEY}
        first = asyncio.create_task(client.post("/orders", json=order, headers=headers))
        await asyncio.wait_for(shop.entered.wait(), WAIT_S)

        busy = await client.post("/orders", json=order, headers=headers)
        problem(busy, 409, "request_in_progress")
        assert busy.headers["retry-after"] == "1"
        record = await idem.get(STORED)
        assert record is not None and record.state == "in_progress"

        shop.gate.set()
        done = await asyncio.wait_for(first, WAIT_S)
        assert done.status_code == 201
        again = await client.post("/orders", json=order, headers=headers)
        assert again.content == done.content and again.headers["idempotent-replayed"] == "true"
        assert shop.attempts == 1

    run(url, scenario)


# --- the key header -----------------------------------------------------------------------


def test_a_missing_key_is_400_when_required(url: str) -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        missing = await client.post("/orders", json={"amount": 1})
        assert "Idempotency-Key" in problem(missing, 400, "idempotency_key_missing")["detail"]
        assert shop.attempts == 0

    run(url, scenario, required=True)


def test_without_a_key_an_optional_key_passes_through(url: str) -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        for _ in range(2):
            response = await client.post("/orders", json={"amount": 1})
            assert response.status_code == 201
            assert "idempotent-replayed" not in response.headers
        assert len(shop.orders) == 2  # no key, no protection: both ran
        assert await idem.records() == []

    run(url, scenario)


@pytest.mark.parametrize(
    "value",
    [
        '"unterminated',
        '"bad \\escape"',
        '"a" trailing',
        "has space",
        '"has space"',
        "",
        "k" * 256,
        "ключ",
    ],
)
def test_a_malformed_key_is_400(value: str) -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        raw = [(b"idempotency-key", value.encode("utf-8"))]
        response = await client.post("/orders", json={"amount": 1}, headers=raw)
        problem(response, 400, "idempotency_key_malformed")
        assert shop.attempts == 0

    run("memory://", scenario)


def test_two_key_fields_are_400() -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        headers = [("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
        response = await client.post("/orders", json={"amount": 1}, headers=headers)
        problem(response, 400, "idempotency_key_malformed")
        assert shop.attempts == 0

    run("memory://", scenario)


def test_parse_key_reads_structured_field_strings() -> None:
    assert parse_key([b'"abc"']) == "abc"
    assert parse_key([b' "ab" ;p=1']) == "ab"  # parameters are ignored
    assert parse_key([b"  abc-1  "]) == "abc-1"
    with pytest.raises(UsageError, match="exactly one"):
        parse_key([])
    with pytest.raises(UsageError):
        parse_key([b'"a\\"b"'])  # a quote is valid in the string but not in a key


# --- which responses are stored -----------------------------------------------------------


def test_a_5xx_releases_the_key_and_the_retry_runs_again(url: str) -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        shop.failures_left = 1
        headers = {"Idempotency-Key": KEY}
        failed = await client.post("/orders", json={"amount": 7}, headers=headers)
        assert failed.status_code == 503
        assert await idem.get(STORED) is None  # released: nothing stored
        retried = await client.post("/orders", json={"amount": 7}, headers=headers)
        assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers
        assert shop.attempts == 2 and len(shop.orders) == 1

    run(url, scenario)


def test_a_crash_releases_the_key(url: str) -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        headers = {"Idempotency-Key": KEY}
        crashed = await client.post("/orders", json={"amount": 7, "crash": True}, headers=headers)
        assert crashed.status_code == 500
        assert await idem.get(STORED) is None

    run(url, scenario)


def test_a_4xx_is_stored_and_replayed(url: str) -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        headers = {"Idempotency-Key": KEY}
        rejected = await client.post("/orders", json={"amount": 0}, headers=headers)
        assert rejected.status_code == 400
        again = await client.post("/orders", json={"amount": 0}, headers=headers)
        assert again.status_code == 400 and again.headers["idempotent-replayed"] == "true"
        assert again.content == rejected.content
        assert shop.attempts == 1

    run(url, scenario)


def test_which_statuses_are_stored_is_configurable() -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        shop.failures_left = 1
        headers = {"Idempotency-Key": KEY}
        failed = await client.post("/orders", json={"amount": 7}, headers=headers)
        again = await client.post("/orders", json={"amount": 7}, headers=headers)
        assert failed.status_code == again.status_code == 503
        assert again.headers["idempotent-replayed"] == "true"
        assert shop.attempts == 1

    run("memory://", scenario, store_status=lambda status: True)


def test_get_passes_through_even_with_a_key(url: str) -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        for _ in range(2):
            response = await client.get("/orders", headers={"Idempotency-Key": KEY})
            assert response.status_code == 200
            assert "idempotent-replayed" not in response.headers
        assert shop.attempts == 2
        assert await idem.get(STORED) is None

    run(url, scenario)


# --- streaming responses ------------------------------------------------------------------


def test_a_streaming_response_is_buffered_and_replayed(url: str) -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        headers = {"Idempotency-Key": KEY}
        first = await client.post("/exports?chunk=100", content=b"x", headers=headers)
        assert first.content == b"A" * 100 + b"B" * 100 + b"C" * 100
        again = await client.post("/exports?chunk=100", content=b"x", headers=headers)
        assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
        assert shop.attempts == 1

    run(url, scenario, response_bytes_max=1000)


def test_a_too_large_response_passes_through_and_releases_the_key(url: str) -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        headers = {"Idempotency-Key": KEY}
        for attempt in (1, 2):
            response = await client.post("/exports?chunk=600", content=b"x", headers=headers)
            assert response.status_code == 201
            assert response.content == b"A" * 600 + b"B" * 600 + b"C" * 600
            assert "larger than 1000 bytes" in response.headers["idempotency-warning"]
            assert "idempotent-replayed" not in response.headers
            assert await idem.get(STORED) is None
            assert shop.attempts == attempt  # not stored: the retry runs again

    run(url, scenario, response_bytes_max=1000)


def test_a_too_large_request_body_is_413() -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        headers = {"Idempotency-Key": KEY}
        response = await client.post("/orders", content=b"{" + b" " * 2000 + b"}", headers=headers)
        problem(response, 413, "request_too_large")
        assert shop.attempts == 0 and await idem.get(STORED) is None

    run("memory://", scenario, request_bytes_max=1000)


# --- options ------------------------------------------------------------------------------


def test_docs_url_types_the_problem_and_links_it() -> None:
    docs = "https://example.com/docs/idempotency"

    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        response = await client.post("/orders", json={"amount": 1})
        assert response.status_code == 400
        assert response.json()["type"] == docs
        assert response.json()["title"] == "Idempotency-Key is missing"
        assert response.headers["link"] == f'<{docs}>; rel="describedby"'

    run("memory://", scenario, required=True, docs_url=docs)


def test_namespace_scopes_keys_per_client() -> None:
    async def scenario(client: httpx.AsyncClient, shop: Shop, idem: AsyncIdempotency) -> None:
        for tenant in ("ada", "bob", "ada"):
            headers = {"Idempotency-Key": KEY, "x-tenant": tenant}
            response = await client.post("/orders", json={"amount": 2}, headers=headers)
            assert response.status_code == 201
        assert len(shop.orders) == 2  # ada's retry was replayed; bob's request ran
        assert [r.key for r in await idem.records()] == [f"ada/{KEY}", f"bob/{KEY}"]

    def tenant(scope: Any) -> str:
        value: bytes = dict(scope["headers"])[b"x-tenant"]
        return value.decode()

    run("memory://", scenario, namespace=tenant)


def test_the_middleware_needs_an_async_facade() -> None:
    with pytest.raises(UsageError, match="AsyncIdempotency"):
        IdempotencyMiddleware(Starlette(), object())  # type: ignore[arg-type]


# --- over real HTTP -----------------------------------------------------------------------


def _serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    return server, thread, sock


def test_concurrent_retries_over_real_http_take_effect_once(tmp_path: Path) -> None:
    idem = AsyncIdempotency(SqliteBackend(str(tmp_path / "idem.db"), sync="off"))
    effects: list[bytes] = []

    async def pay(request: Request) -> Response:
        body = await request.body()
        effects.append(body)
        await asyncio.sleep(0.2)  # keep the first request in flight while others arrive
        return JSONResponse({"paid": json.loads(body)["amount"]}, status_code=201)

    app = Starlette(
        routes=[Route("/payments", pay, methods=["POST"])],
        middleware=[Middleware(IdempotencyMiddleware, idem)],
    )
    server, thread, sock = _serve(app)
    port: int = sock.getsockname()[1]
    clients = 16
    barrier = threading.Barrier(clients)
    responses: list[httpx.Response] = []

    def client() -> None:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S, headers=CREDENTIALS
        ) as http:
            barrier.wait()
            response = http.post("/payments", json={"amount": 42}, headers={"Idempotency-Key": KEY})
            responses.append(response)

    try:
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
        assert len(responses) == clients
        assert len(effects) == 1  # the endpoint's side effect happened once

        created = [r for r in responses if r.status_code == 201]
        assert created, [r.status_code for r in responses]
        for response in responses:
            if response.status_code == 409:
                assert response.headers["retry-after"] == "1"
                continue
            assert response.status_code == 201
            assert response.json() == {"paid": 42}

        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S, headers=CREDENTIALS
        ) as http:
            retry = http.post("/payments", json={"amount": 42}, headers={"Idempotency-Key": KEY})
        assert retry.status_code == 201 and retry.json() == {"paid": 42}
        assert retry.headers["idempotent-replayed"] == "true"
        assert len(effects) == 1
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        sock.close()
        idem.backend.close()  # type: ignore[attr-defined]
