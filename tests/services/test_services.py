"""The servers the suite relies on answer their own protocol, not just a port.

These are the canaries for `make test`'s service check: with CI=true an
unreachable server fails here (see conftest.require_server), never skips.
"""

from __future__ import annotations

import asyncio
import uuid

import nats
import psycopg
import pymysql
import redis

from tests.conftest import require_server


def test_postgres_answers_sql() -> None:
    host, port = require_server("postgres")
    with psycopg.connect(host=host, port=port, user="postgres", dbname="test") as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None and row[0] >= 150000


def test_mariadb_answers_sql() -> None:
    host, port = require_server("mariadb")
    conn = pymysql.connect(host=host, port=port, user="root", password="", database="test")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 6 * 7")
            assert cur.fetchone() == (42,)
    finally:
        conn.close()


def test_redis_round_trip() -> None:
    host, port = require_server("redis")
    client = redis.Redis(host=host, port=port)
    key = f"unbundled-test:{uuid.uuid4().hex}"
    try:
        assert client.set(key, b"v", ex=60)
        assert client.get(key) == b"v"
    finally:
        client.delete(key)
        client.close()


def test_nats_jetstream_is_enabled() -> None:
    host, port = require_server("nats")

    async def probe() -> int:
        nc = await nats.connect(f"nats://{host}:{port}", connect_timeout=3)
        try:
            info = await nc.jetstream().account_info()
            return int(info.limits.max_streams)
        finally:
            await nc.close()

    assert asyncio.run(probe()) != 0
