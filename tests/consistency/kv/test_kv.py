"""The key-value store's semantics, the same on memory, sqlite, postgres and nats:
versions, compare-and-set by value and by version, deletes and tombstones,
the register, typed errors, and atomicity under threads. Whether concurrent
histories are linearizable is ``test_linearizable_histories``' job."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from tests._formats import downgrade
from unbundled import limits
from unbundled.backends.sqlite import _schema
from unbundled.consistency import KV, Register, Versioned
from unbundled.consistency.kv import _core
from unbundled.errors import Closed, LimitExceeded, NotSupported, UsageError


def test_absent_key_reads_none(kv: KV) -> None:
    assert kv.read("nothing") is None
    assert kv.delete("nothing") is False
    assert kv.read("nothing") is None


def test_write_returns_growing_versions(kv: KV) -> None:
    assert kv.write("k", b"a") == 1
    assert kv.write("k", b"b") == 2
    assert kv.write("other", b"x") == 1  # versions are per key
    assert kv.write("k", b"c") == 3
    assert kv.read("k") == Versioned(b"c", 3)
    value, version = kv.read("k") or (None, None)
    assert (value, version) == (b"c", 3)
    assert kv.read("other") == (b"x", 1)


def test_compare_and_set_by_value(kv: KV) -> None:
    kv.write("k", b"a")
    assert kv.compare_and_set("k", expected_value=b"zzz", new=b"b") is False
    assert kv.read("k") == (b"a", 1)  # a failed swap changes nothing
    assert kv.compare_and_set("k", expected_value=b"a", new=b"b") is True
    assert kv.read("k") == (b"b", 2)
    assert kv.compare_and_set("missing", expected_value=b"a", new=b"b") is False
    assert kv.read("missing") is None


def test_compare_and_set_by_version(kv: KV) -> None:
    kv.write("k", b"a")
    kv.write("k", b"b")
    assert kv.compare_and_set("k", expected_version=1, new=b"x") is False
    assert kv.compare_and_set("k", expected_version=3, new=b"x") is False
    assert kv.compare_and_set("k", expected_version=2, new=b"c") is True
    assert kv.read("k") == (b"c", 3)
    assert kv.compare_and_set("missing", expected_version=1, new=b"x") is False


def test_compare_and_set_if_absent(kv: KV) -> None:
    assert kv.compare_and_set("k", expected_value=None, new=b"first") is True
    assert kv.compare_and_set("k", expected_value=None, new=b"second") is False
    assert kv.compare_and_set("k", expected_version=0, new=b"second") is False
    assert kv.read("k") == (b"first", 1)
    assert kv.compare_and_set("j", expected_version=0, new=b"first") is True
    assert kv.read("j") == (b"first", 1)


def test_versions_never_repeat_across_delete(kv: KV) -> None:
    kv.write("k", b"a")  # 1
    kv.write("k", b"b")  # 2
    assert kv.delete("k") is True  # 3: a tombstone
    assert kv.read("k") is None
    assert kv.delete("k") is False  # already absent: nothing changes
    # A swap by the version read before the delete must fail (no ABA)...
    assert kv.compare_and_set("k", expected_version=2, new=b"zombie") is False
    assert kv.compare_and_set("k", expected_version=3, new=b"zombie") is False  # a tombstone
    # ...while "absent" matches a deleted key, and it comes back at version 4.
    assert kv.compare_and_set("k", expected_version=0, new=b"c") is True
    assert kv.read("k") == (b"c", 4)
    kv.delete("k")  # 5
    assert kv.compare_and_set("k", expected_value=None, new=b"d") is True
    assert kv.read("k") == (b"d", 6)
    kv.delete("k")  # 7
    assert kv.write("k", b"e") == 8


def test_value_swap_sees_aba_version_swap_does_not(kv: KV) -> None:
    kv.write("k", b"A")
    read = kv.read("k")
    assert read is not None
    kv.write("k", b"B")
    kv.write("k", b"A")  # the value came back
    assert kv.compare_and_set("k", expected_version=read.version, new=b"mine") is False
    assert kv.compare_and_set("k", expected_value=read.value, new=b"mine") is True


def test_values_are_bytes_of_any_content(kv: KV) -> None:
    kv.write("empty", b"")
    assert kv.read("empty") == (b"", 1)  # empty is a value, not absence
    binary = bytes(range(256)) * 3
    kv.write("bin", bytearray(binary))  # type: ignore[arg-type]  # accepted at run time
    assert kv.read("bin") == (binary, 1)
    kv.write("view", memoryview(b"abc"))  # type: ignore[arg-type]  # accepted at run time
    assert kv.read("view") == (b"abc", 1)
    key = "clé/ключ/キー 🔑"
    kv.write(key, b"unicode")
    assert kv.read(key) == (b"unicode", 1)
    largest = b"x" * value_bytes_max(kv)
    kv.write("large", largest)
    assert kv.read("large") == (largest, 1)
    long_key = "k" * limits.kv_key_bytes_max
    kv.write(long_key, b"v")
    assert kv.read(long_key) == (b"v", 1)


def value_bytes_max(kv: KV) -> int:
    """``limits.kv_value_bytes_max``, or less on a backend whose server takes
    less (NATS: its message limit, 1 MiB by default, holds the value *and*
    our headers; ``test_kv_nats`` checks that one byte more is refused)."""
    return int(getattr(kv.backend, "kv_value_bytes_max", limits.kv_value_bytes_max))


@pytest.mark.parametrize(
    ("key", "says"),
    [
        (7, "must be a str"),
        (b"bytes", "must be a str"),
        ("", "must not be empty"),
        ("a\x00b", "NUL"),
        ("\ud800", "not valid Unicode"),
        ("k" * (limits.kv_key_bytes_max + 1), "the limit is"),
    ],
)
def test_bad_keys_are_usage_errors(kv: KV, key: object, says: str) -> None:
    for call in (
        lambda: kv.read(key),  # type: ignore[arg-type]
        lambda: kv.write(key, b"v"),  # type: ignore[arg-type]
        lambda: kv.compare_and_set(key, expected_version=0, new=b"v"),  # type: ignore[arg-type]
        lambda: kv.delete(key),  # type: ignore[arg-type]
    ):
        with pytest.raises(UsageError, match=says) as info:
            call()
        assert info.value.details["key"] == key


def test_bad_values_are_usage_errors_naming_the_key(kv: KV) -> None:
    with pytest.raises(UsageError, match="'k' must be bytes, got str") as info:
        kv.write("k", "text")  # type: ignore[arg-type]
    assert info.value.details["key"] == "k"
    with pytest.raises(UsageError, match="value for key 'k' must be bytes, got int"):
        kv.compare_and_set("k", expected_version=0, new=42)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="expected value for key 'k' must be bytes"):
        kv.compare_and_set("k", expected_value="text", new=b"v")  # type: ignore[arg-type]
    with pytest.raises(LimitExceeded, match="the limit is") as too_big:
        kv.write("k", b"x" * (limits.kv_value_bytes_max + 1))
    assert too_big.value.details["key"] == "k"
    assert kv.read("k") is None  # nothing was written by any of them


@pytest.mark.parametrize(
    "expectations",
    [
        {},
        {"expected_value": b"a", "expected_version": 1},
        {"expected_version": -1},
        {"expected_version": True},
        {"expected_version": "1"},
    ],
)
def test_compare_and_set_needs_one_valid_expectation(
    kv: KV, expectations: dict[str, object]
) -> None:
    with pytest.raises(UsageError, match="expected_v"):
        kv.compare_and_set("k", new=b"v", **expectations)  # type: ignore[arg-type]


def test_expected_positionally_is_refused(kv: KV) -> None:
    # (key, expected, new) positionally would be ambiguous between a value
    # and a version: the expectations are keyword-only.
    with pytest.raises(TypeError):
        kv.compare_and_set("k", b"old", b"new")  # type: ignore[call-arg]


def test_register(kv: KV) -> None:
    reg = kv.register("leader")
    assert reg.read() is None
    assert reg.compare_and_set(expected_value=None, new=b"node-1") is True
    assert reg.compare_and_set(expected_value=None, new=b"node-2") is False
    assert reg.write(b"node-3") == 2
    assert reg.compare_and_set(expected_version=2, new=b"node-4") is True
    assert reg.read() == (b"node-4", 3)
    assert kv.read("leader") == (b"node-4", 3)  # it is one key of the store
    assert reg.delete() is True
    assert reg.read() is None


def test_register_open_owns_its_store(tmp_path: Path) -> None:
    path = tmp_path / "reg.db"
    with Register.open(path, key="lock", sync="normal") as reg:
        reg.write(b"held")
    with Register.open(f"sqlite:///{path}", key="lock", sync="normal") as reg:
        assert reg.read() == (b"held", 1)
        with pytest.raises(UsageError, match="must not be empty"):
            reg.kv.register("")
    with pytest.raises(Closed):
        reg.read()


def test_closed_store_refuses_every_call(store_url: str) -> None:
    kv = KV.open(store_url, sync="normal")
    kv.write("k", b"v")
    kv.close()
    kv.close()  # idempotent
    for call in (
        lambda: kv.read("k"),
        lambda: kv.write("k", b"v"),
        lambda: kv.compare_and_set("k", expected_version=1, new=b"w"),
        lambda: kv.delete("k"),
    ):
        with pytest.raises(Closed):
            call()


@pytest.mark.parametrize(
    "store_url", ["sqlite", "postgres", pytest.param("nats", marks=pytest.mark.nats)], indirect=True
)
def test_state_survives_reopening(store_url: str) -> None:
    """(Not on memory, which keeps nothing once closed.)"""
    with KV.open(store_url, sync="normal") as kv:
        kv.write("k", b"a")
        kv.write("k", b"b")
        kv.write("gone", b"x")
        kv.delete("gone")
    with KV.open(store_url, sync="normal") as kv:
        assert kv.read("k") == (b"b", 2)
        assert kv.read("gone") is None
        assert kv.write("gone", b"y") == 3  # the tombstone's version was kept


def test_concurrent_increments_lose_nothing(kv: KV) -> None:
    """Eight threads each add 1 to a counter 15 times with read + compare-and-set
    (retrying when they lose the race): the count is exact, so every swap was
    atomic and every read saw the latest successful swap or a later one."""
    threads, increments = 8, 15
    kv.write("counter", b"0")
    failures: list[BaseException] = []

    def add(by_version: bool) -> None:
        try:
            for _ in range(increments):
                while True:
                    got = kv.read("counter")
                    assert got is not None
                    new = str(int(got.value) + 1).encode()
                    if by_version:
                        done = kv.compare_and_set("counter", expected_version=got.version, new=new)
                    else:
                        done = kv.compare_and_set("counter", expected_value=got.value, new=new)
                    if done:
                        break
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=add, args=(i % 2 == 0,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not failures
    total = threads * increments
    # Values only grow, so value-swaps cannot suffer ABA here: each
    # successful swap is one increment, and versions count every one.
    assert kv.read("counter") == (str(total).encode(), total + 1)


def test_a_backend_without_the_store_is_refused() -> None:
    class LogOnly:
        url = "log-only://"
        closed = False

        def close(self) -> None:
            self.closed = True

    backend = LogOnly()
    with pytest.raises(NotSupported, match="does not serve the key-value store"):
        KV(backend)  # type: ignore[arg-type]
    assert backend.closed


def test_sqlite_format_3_file_is_upgraded(tmp_path: Path) -> None:
    """A file written before the store existed (format 3, no ``kv`` table)
    gains the table when opened."""
    path = tmp_path / "old.db"
    with KV.open(path, sync="normal") as kv:
        kv.write("x", b"1")
    downgrade(path, 3)
    with KV.open(path, sync="normal") as kv:
        assert kv.read("x") is None
        assert kv.write("x", b"2") == 1
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == _schema.FORMAT_VERSION
    finally:
        raw.close()


def test_core_matches_is_the_spec() -> None:
    """The pure rule every backend implements (PostgreSQL in SQL): a table of cases."""
    live, tomb = (b"a", 3), (None, 3)
    by_version = _core.expectation("k", _core.UNSET, 3)
    by_value = _core.expectation("k", b"a", _core.UNSET)
    absent_v = _core.expectation("k", _core.UNSET, 0)
    absent = _core.expectation("k", None, _core.UNSET)
    assert [_core.matches(s, by_version) for s in (live, tomb, None)] == [True, False, False]
    assert [_core.matches(s, by_value) for s in (live, tomb, None)] == [True, False, False]
    assert [_core.matches(s, absent_v) for s in (live, tomb, None)] == [False, True, True]
    assert [_core.matches(s, absent) for s in (live, tomb, None)] == [False, True, True]
    assert [_core.next_version(s) for s in (live, tomb, None)] == [4, 4, 1]
