"""The key-value store on NATS JetStream: what only NATS needs checking.

The semantics tests (``test_kv``), the linearizable histories and the
model-based test run on NATS through the ``store_url`` fixture; here:
separate connections racing, the key encoding, the server's message size
limit, messages we did not write, bucket handling, and failures (a server
that is not there, one that stops answering mid-operation).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.js.api import KeyValueConfig

from tests.backends.nats._nats import admin, bucket_url, delete_bucket, fresh_bucket, server
from tests.consistency.kv._workload import KEYS, run_threads
from unbundled import limits
from unbundled.backends.nats import decode_key, encode_key
from unbundled.backends.nats._backend import parse_url
from unbundled.consistency import KV, Versioned
from unbundled.consistency.checker import check
from unbundled.consistency.kv.model import model
from unbundled.errors import (
    CorruptionError,
    LimitExceeded,
    Timeout,
    Unavailable,
    UsageError,
)

pytestmark = pytest.mark.nats

NATS_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")


@pytest.fixture
def bucket() -> Iterator[str]:
    name = fresh_bucket()
    server()  # skip (or fail with CI=true) before anything else without the server
    yield name
    delete_bucket(name)


@pytest.fixture
def kv(bucket: str) -> Iterator[KV]:
    with KV.open(bucket_url(bucket)) as opened:
        yield opened


def nats_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("unbundled-nats")]


# --- connections racing -----------------------------------------------------------------


def race(stores: list[KV], key: str, by: str, before: Versioned | None, tag: str) -> list[bool]:
    """Both stores swap ``key`` from what was read ``before``, released at
    the same moment by a barrier; what each got."""
    start = threading.Barrier(len(stores))
    won = [False] * len(stores)

    def swap(i: int) -> None:
        start.wait()
        new = f"{i}.{tag}".encode()
        if by == "version":
            version = 0 if before is None else before.version
            won[i] = stores[i].compare_and_set(key, expected_version=version, new=new)
        else:
            value = None if before is None else before.value
            won[i] = stores[i].compare_and_set(key, expected_value=value, new=new)

    racers = [threading.Thread(target=swap, args=(i,)) for i in range(len(stores))]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    return won


def test_two_connections_racing_compare_and_set_never_both_win(bucket: str) -> None:
    """Two stores (two connections, two event loops) swap one key from the
    same expectation at the same moment, 60 times per kind of expectation:
    exactly one wins each time, and the key holds the winner's value at the
    next version."""
    stores = [KV.open(bucket_url(bucket)) for _ in range(2)]
    first_won = 0
    try:
        for kind in ("version", "value", "absent"):
            for n in range(60):
                key = f"{kind}-{n}" if kind == "absent" else kind
                before = stores[0].read(key)
                won = race(stores, key, "version" if kind == "version" else "value", before, str(n))
                assert won.count(True) == 1, (kind, n, won)
                winner = won.index(True)
                first_won += winner == 0
                version = 1 if before is None else before.version + 1
                assert stores[1 - winner].read(key) == (f"{winner}.{n}".encode(), version)
    finally:
        for store in stores:
            store.close()
    assert 0 < first_won < 180  # each connection won some: they did race


def test_threads_with_a_connection_each_are_linearizable(bucket: str) -> None:
    """Eight threads, each with its own store (connection), record a history
    the checker proves linearizable: nothing depends on sharing a connection."""
    stores = [KV.open(bucket_url(bucket)) for _ in range(8)]
    try:
        history = run_threads(stores, clients=8, ops=100, seed=7)
    finally:
        for store in stores:
            store.close()
    result = check(history, model(), budget_s=30.0)
    assert result.ok, result.violation
    assert result.partitions == len(KEYS)
    assert not nats_threads()  # each close stopped its loop thread


# --- keys and values --------------------------------------------------------------------


@given(st.text(min_size=1))
def test_key_encoding_is_reversible_and_a_nats_key(key: str) -> None:
    encoded = encode_key(key)
    assert NATS_KEY.fullmatch(encoded)
    assert not encoded.startswith(".") and not encoded.endswith(".")
    assert decode_key(encoded) == key


def test_key_encoding_keeps_plain_keys_readable() -> None:
    assert encode_key("orders/eu-1=a") == "orders/eu-1=a"
    assert encode_key("clé.x_y") == "cl_C3_A9_2Ex_5Fy"
    for bad in ("_4", "_zz", "a.b", "_41"):  # "_41" decodes to "A", which we write as "A"
        with pytest.raises(ValueError):
            decode_key(bad)


def test_keys_are_readable_with_other_nats_clients(kv: KV, bucket: str) -> None:
    kv.write("leader", b"node-a")
    kv.write("clé", b"x")

    async def look(js: Any) -> list[Any]:
        store = await js.key_value(bucket)
        raw = await js.get_msg(f"KV_{bucket}", subject=f"$KV.{bucket}.leader")
        return [(await store.get("leader")).value, raw.headers, sorted(await store.keys())]

    value, headers, keys = admin(look)
    assert value == b"node-a"
    assert headers["Unbundled-Version"] == "1"
    assert keys == ["cl_C3_A9", "leader"]


def test_the_longest_keys_fit(kv: KV) -> None:
    # Every byte escaped: the longest subject we ever publish to.
    worst = "\x01" * limits.kv_key_bytes_max
    assert len(encode_key(worst)) == 3 * limits.kv_key_bytes_max
    assert kv.write(worst, b"v") == 1
    assert kv.compare_and_set(worst, expected_version=1, new=b"w")
    assert kv.read(worst) == (b"w", 2)
    widest = "é" * (limits.kv_key_bytes_max // 2)
    assert kv.write(widest, b"v") == 1
    assert kv.read(widest) == (b"v", 1)


def test_a_value_over_the_servers_limit_is_refused_before_sending(kv: KV) -> None:
    """NATS's max_payload (1 MiB by default) holds the value and our headers:
    the largest value that fits works; one byte more raises LimitExceeded,
    writes nothing, and the connection stays usable (a message over the
    limit would make the server close it)."""
    largest = int(kv.backend.kv_value_bytes_max)  # type: ignore[attr-defined]
    assert 0 < largest <= limits.kv_value_bytes_max
    if largest == limits.kv_value_bytes_max:
        pytest.skip("this server takes every value unbundled allows")
    assert kv.write("k", b"x" * largest) == 1
    with pytest.raises(LimitExceeded, match="max_payload") as info:
        kv.write("k", b"x" * (largest + 1))
    assert info.value.details["key"] == "k"
    with pytest.raises(LimitExceeded):
        kv.compare_and_set("k", expected_version=1, new=b"x" * (largest + 1))
    assert kv.read("k") == (b"x" * largest, 1)


# --- messages we did not write ----------------------------------------------------------


def test_a_message_without_our_version_is_corruption(kv: KV, bucket: str) -> None:
    kv.write("k", b"ours")

    async def overwrite(js: Any) -> None:
        store = await js.key_value(bucket)
        await store.put("k", b"theirs")  # another client: no version header
        await store.put("v", b"x")
        await store.delete("v")  # a NATS delete marker: versions lost

    admin(overwrite)
    with pytest.raises(CorruptionError, match="did not write") as info:
        kv.read("k")
    assert info.value.details == {"key": "k", "bucket": bucket}
    with pytest.raises(CorruptionError):
        kv.write("k", b"again")  # never overwrites what it cannot version
    with pytest.raises(CorruptionError, match="DEL marker"):
        kv.compare_and_set("v", expected_value=None, new=b"y")


def test_bad_version_headers_are_corruption(kv: KV, bucket: str) -> None:
    async def publish(js: Any) -> None:
        subject = f"$KV.{bucket}."
        await js.publish(subject + "zero", b"x", headers={"Unbundled-Version": "0"})
        await js.publish(subject + "text", b"x", headers={"Unbundled-Version": "one"})
        tombstone = {"Unbundled-Version": "2", "Unbundled-Deleted": "1"}
        await js.publish(subject + "full-tomb", b"body", headers=tombstone)
        await js.publish(subject + "ok-tomb", b"", headers=tombstone)

    admin(publish)
    for key in ("zero", "text", "full-tomb"):
        with pytest.raises(CorruptionError):
            kv.read(key)
    assert kv.read("ok-tomb") is None
    assert kv.write("ok-tomb", b"back") == 3  # the tombstone's version, plus one


# --- buckets ----------------------------------------------------------------------------


def test_an_existing_bucket_is_used_as_it_is(bucket: str) -> None:
    async def create(js: Any) -> None:
        await js.create_key_value(KeyValueConfig(bucket=bucket, history=5))

    admin(create)
    with KV.open(bucket_url(bucket)) as kv:
        kv.write("k", b"a")
        kv.write("k", b"b")
        assert kv.read("k") == (b"b", 2)  # the latest message, whatever the history


def test_a_bucket_with_a_ttl_is_refused(bucket: str) -> None:
    async def create(js: Any) -> None:
        await js.create_key_value(KeyValueConfig(bucket=bucket, ttl=60))

    admin(create)
    with pytest.raises(UsageError, match="TTL") as info:
        KV.open(bucket_url(bucket))
    assert info.value.details["bucket"] == bucket
    assert not nats_threads()  # the failed open closed what it started


@pytest.mark.parametrize("name", ["has.dot", "has space", "star*", "", "x" * 65, "é"])
def test_bad_bucket_names_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError, match="bucket name") as info:
        KV.open(f"nats://127.0.0.1:4222?bucket={name}")
    assert info.value.details["bucket"] == name


def test_bad_urls_are_usage_errors_without_the_password() -> None:
    with pytest.raises(UsageError, match="unknown: schema") as info:
        KV.open("nats://user:secret@127.0.0.1:4222?bucket=b&schema=x")
    assert "secret" not in str(info.value)
    with pytest.raises(UsageError, match="one bucket"):
        KV.open("nats://127.0.0.1:4222?bucket=a&bucket=b")
    with pytest.raises(UsageError, match="timeout_s"):
        KV.open("nats://127.0.0.1:4222", timeout_s=0)


def test_a_url_may_name_several_servers_of_a_cluster() -> None:
    """A seed list: each server is tried, so one that is down when a
    process starts does not stop it; the password stays out of messages."""
    servers, bucket, shown = parse_url("nats://u:pw@10.0.0.1:4222,10.0.0.2:4223?bucket=b")
    assert servers == ["nats://u:pw@10.0.0.1:4222", "nats://u:pw@10.0.0.2:4223"]
    assert (bucket, shown) == ("b", "nats://u:***@10.0.0.1:4222,10.0.0.2:4223?bucket=b")
    for bad in ("nats://h:1,?bucket=b", "nats://h:1,h2:port?bucket=b"):
        with pytest.raises(UsageError, match="is not host:port"):
            parse_url(bad)
    with pytest.raises(UsageError, match="at most 16"):
        parse_url("nats://" + ",".join(f"h{i}:1" for i in range(17)))
    bucket = fresh_bucket()
    try:
        live = server().removeprefix("nats://")
        with KV.open(f"nats://127.0.0.1:1,{live}?bucket={bucket}") as kv:
            kv.write("k", b"v")
            found = kv.read("k")
            assert found is not None and found.value == b"v"
    finally:
        delete_bucket(bucket)
    started = time.monotonic()
    with pytest.raises(Unavailable, match="connection refused"):
        KV.open("nats://127.0.0.1:1,127.0.0.1:2?bucket=b")
    assert time.monotonic() - started < 4.0, "every server failed: no retrying for minutes"


# --- failures ---------------------------------------------------------------------------


def test_an_unreachable_server_is_unavailable_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable, match=re.escape("nats://127.0.0.1:1")) as info:
        KV.open("nats://127.0.0.1:1?bucket=b")
    assert time.monotonic() - started < 2.0
    assert info.value.retryable
    assert not nats_threads()


class FreezableProxy:
    """A TCP proxy to the real server that can stop forwarding: a server
    that is up but no longer answers (a partition, a stalled process)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.flowing = threading.Event()
        self.flowing.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.flowing.wait()
                target.sendall(data)
        except OSError:
            pass  # closed

    def close(self) -> None:
        self.flowing.set()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def proxy() -> Iterator[FreezableProxy]:
    host, port = server().removeprefix("nats://").split(":")
    opened = FreezableProxy(host, int(port))
    yield opened
    opened.close()


def test_a_server_that_stops_answering_mid_operation_times_out(
    bucket: str, proxy: FreezableProxy
) -> None:
    url = f"nats://127.0.0.1:{proxy.port}?bucket={bucket}"
    kv = KV.open(url, timeout_s=0.5)
    try:
        assert kv.write("k", b"a") == 1
        proxy.flowing.clear()
        for call in (lambda: kv.write("k", b"b"), lambda: kv.read("k")):
            started = time.monotonic()
            with pytest.raises(Timeout, match="outcome is unknown") as info:
                call()
            assert time.monotonic() - started < 3.0
            assert info.value.details["url"] == url
    finally:
        started = time.monotonic()
        kv.close()  # cannot drain a silent server: closes after timeout_s
        assert time.monotonic() - started < 3.0
    assert not nats_threads()


def test_a_deleted_bucket_is_unavailable_not_empty(kv: KV, bucket: str) -> None:
    kv.write("k", b"v")
    delete_bucket(bucket)
    for call in (lambda: kv.read("k"), lambda: kv.write("k", b"w")):
        with pytest.raises(Unavailable, match="was it deleted"):
            call()


def test_a_server_that_never_answers_the_connection_is_unavailable(
    proxy: FreezableProxy,
) -> None:
    proxy.flowing.clear()
    started = time.monotonic()
    with pytest.raises(Unavailable, match="cannot connect"):
        KV.open(f"nats://127.0.0.1:{proxy.port}?bucket=b", timeout_s=0.5)
    assert time.monotonic() - started < 3.0
    assert not nats_threads()
