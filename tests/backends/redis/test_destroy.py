"""``destroy`` on Redis: only our records under the prefix, never anything else.

Keys of someone else's under the prefix make it refuse before anything is
deleted; glob characters in a prefix are literal; more records than one
``SCAN`` batch all go; an open store is found by its connections' name.
"""

from __future__ import annotations

import pytest
import redis

from tests.backends.redis.conftest import server_url
from unbundled import UsageError
from unbundled.backends import destroy
from unbundled.backends.redis import RedisBackend, client_name, escape_glob
from unbundled.idempotency import Idempotency

pytestmark = pytest.mark.redis


def keys_under(client: redis.Redis, prefix: str) -> set[bytes]:
    return {bytes(k) for k in client.scan_iter(match=escape_glob(prefix) + "*", count=1000)}


def store_records(url: str, count: int) -> None:
    """``count`` completed records, ``k0``, ``k1``..."""
    with Idempotency.open(url) as idem:
        for n in range(count):
            idem.call(f"k{n}", None, lambda attempt: "ok")


def test_keys_of_someone_else_under_the_prefix_are_refused(
    redis_url: str, redis_prefix: str, client: redis.Redis
) -> None:
    store_records(redis_url, 3)
    client.set(f"{redis_prefix}session:42", "theirs")
    client.hset(f"{redis_prefix}cart:7", "items", "2")  # a hash, but not a record
    before = keys_under(client, redis_prefix)

    with pytest.raises(UsageError, match="2 key\\(s\\) under it are not unbundled") as refused:
        destroy(redis_url, confirm=True)
    assert "session:42" in refused.value.message and "cart:7" in refused.value.message
    assert keys_under(client, redis_prefix) == before  # nothing deleted


def test_glob_characters_in_the_prefix_are_literal(redis_prefix: str, client: redis.Redis) -> None:
    base = f"{server_url()}?prefix="
    odd = f"{redis_prefix}[ab]*?:"
    store_records(base + odd, 1)
    # Records a glob reading of the prefix would match: ours in form, not in prefix.
    store_records(f"{base}{redis_prefix}a-anything:", 1)

    destroy(base + odd, confirm=True)

    assert keys_under(client, redis_prefix) == {f"{redis_prefix}a-anything:k0".encode()}


def test_more_records_than_one_scan_batch_all_go(
    redis_url: str, redis_prefix: str, client: redis.Redis
) -> None:
    store_records(redis_url, 2500)
    assert destroy(redis_url, dry_run=True).items == (
        f"2,500 idempotency records (keys {redis_prefix}*)",
    )
    destroy(redis_url, confirm=True)
    assert keys_under(client, redis_prefix) == set()


def test_an_open_store_is_found_by_its_connections_name(
    backend: RedisBackend, redis_prefix: str, client: redis.Redis
) -> None:
    backend.get("k")  # a connection is open
    names = [c["name"] for c in client.client_list()]
    assert client_name(redis_prefix) in names
    with pytest.raises(UsageError, match="connection\\(s\\) of an open store"):
        destroy(backend.url, confirm=True)
