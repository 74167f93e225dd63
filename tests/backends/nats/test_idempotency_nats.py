"""Idempotency keys on NATS: what the shared contract (tests/idempotency/test_contract.py)
does not reach: the key space beside the key-value store's, the server's message
limit, records another client wrote, processes racing for one key."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import pytest

from unbundled import Idempotency
from unbundled.consistency import KV
from unbundled.errors import CorruptionError, LimitExceeded

from ._nats import admin, bucket_url, delete_bucket, fresh_bucket, server

pytestmark = pytest.mark.nats


@pytest.fixture
def bucket() -> Iterator[str]:
    name = fresh_bucket("test_idem")
    server()  # skip (or fail with CI=true) before anything else without the server
    yield name
    delete_bucket(name)


def test_idempotency_keys_and_kv_keys_of_one_name_never_meet(bucket: str) -> None:
    url = bucket_url(bucket)
    with KV.open(url) as kv, Idempotency.open(url) as idem:
        kv.write("order-1", b"kv value")
        assert idem.call("order-1", None, lambda _a: {"n": 1}) == {"n": 1}
        assert idem.call("order-1", None, lambda _a: {"n": 2}) == {"n": 1}  # replayed
        got = kv.read("order-1")
        assert got is not None and got.value == b"kv value"
        assert [r.key for r in idem.backend.list_records(None, "", 10)] == ["order-1"]


def test_a_result_over_the_servers_limit_is_refused_and_the_key_stays_held(bucket: str) -> None:
    with Idempotency.open(bucket_url(bucket)) as idem:
        attempt = idem.attempt("big")
        with pytest.raises(LimitExceeded, match="'big'") as info:
            idem.complete(attempt, "x" * 2_000_000)  # the server takes 1 MiB
        assert info.value.details["key"] == "big"
        record = idem.backend.get("big")
        assert record is not None and record.state == "in_progress"
        idem.complete(attempt, "small")  # the same attempt can still finish
        assert idem.call("big", None, lambda _a: "never run") == "small"


def test_a_record_another_client_wrote_is_corruption(bucket: str) -> None:
    with Idempotency.open(bucket_url(bucket)) as idem:
        idem.call("k", None, lambda _a: 1)

        async def overwrite(js: Any) -> None:
            await js.publish(f"$KV.{bucket}.unbundled-idempotency.k", b"not a record")

        admin(overwrite)
        with pytest.raises(CorruptionError, match="'k'"):
            idem.call("k", None, lambda _a: 2)


def _claim(url: str, key: str, start: Any, out: Any) -> None:
    with Idempotency.open(url) as idem:
        start.wait()
        try:
            attempt = idem.attempt(key)
        except Exception as exc:  # RequestInProgress for every loser
            out.put(type(exc).__name__)
            return
        out.put("claimed" if not attempt.replayed else "replayed")


def test_processes_racing_for_one_key_claim_it_once(bucket: str) -> None:
    url = bucket_url(bucket)
    with Idempotency.open(url):  # the bucket exists before the race
        pass
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(url, "race", start, out)) for _ in range(6)]
    for proc in procs:
        proc.start()
    start.set()
    answers = sorted(out.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
    assert answers == ["RequestInProgress"] * 5 + ["claimed"]
