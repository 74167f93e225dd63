"""Model-based test: the key-value store on SQLite, PostgreSQL and NATS
against the memory backend (the reference model).

Hypothesis drives both through the same calls (read, write, compare-and-set
by value and by version, delete, on a few keys with a few values so that
matches and ABA cases are common) and, on SQLite and NATS, closes and
reopens the store in the middle. Every call must give the same answer on both, and after every
step every key must read the same.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.backends.nats._nats import bucket_url, delete_bucket, fresh_bucket
from tests.backends.postgres.conftest import drop_schema, server_url
from unbundled.consistency import KV

KEYS = ["a", "b", "c"]
VALUES = [b"", b"x", b"y"]
keys = st.sampled_from(KEYS)
values = st.sampled_from(VALUES)


class KVMachine(RuleBasedStateMachine):
    """One backend under test beside the model; subclasses say which."""

    reopens = False

    def __init__(self) -> None:
        super().__init__()
        self.model = KV.open("memory://")
        self.real = KV.open(self.url(), sync="off")

    def url(self) -> str:
        raise NotImplementedError

    def both(self, name: str, *args: Any, **kwargs: Any) -> Any:
        expected = getattr(self.model, name)(*args, **kwargs)
        actual = getattr(self.real, name)(*args, **kwargs)
        assert actual == expected, (name, args, kwargs)
        return actual

    @rule(key=keys)
    def read(self, key: str) -> None:
        self.both("read", key)

    @rule(key=keys, value=values)
    def write(self, key: str, value: bytes) -> None:
        self.both("write", key, value)

    @rule(key=keys, expected=st.none() | values, new=values)
    def cas_by_value(self, key: str, expected: bytes | None, new: bytes) -> None:
        self.both("compare_and_set", key, expected_value=expected, new=new)

    @rule(key=keys, expected=st.integers(0, 6), new=values)
    def cas_by_version(self, key: str, expected: int, new: bytes) -> None:
        self.both("compare_and_set", key, expected_version=expected, new=new)

    @rule(key=keys)
    def cas_by_the_version_just_read(self, key: str) -> None:
        current = self.model.read(key)
        version = 0 if current is None else current.version
        assert self.both("compare_and_set", key, expected_version=version, new=b"z")

    @rule(key=keys)
    def delete(self, key: str) -> None:
        self.both("delete", key)

    @precondition(lambda self: self.reopens)
    @rule()
    def reopen(self) -> None:
        self.real.close()
        self.real = KV.open(self.url(), sync="off")

    @invariant()
    def every_key_reads_the_same(self) -> None:
        for key in KEYS:
            assert self.real.read(key) == self.model.read(key), key

    def teardown(self) -> None:
        self.real.close()
        self.model.close()


class SqliteKV(KVMachine):
    reopens = True

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kv-model-"))
        super().__init__()

    def url(self) -> str:
        return f"sqlite:///{self.dir / 'kv.db'}"

    def teardown(self) -> None:
        super().teardown()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresKV(KVMachine):
    def __init__(self) -> None:
        self.schema = f"test_kv_model_{uuid.uuid4().hex[:12]}"
        super().__init__()

    def url(self) -> str:
        return f"{server_url()}?schema={self.schema}"

    def teardown(self) -> None:
        super().teardown()
        drop_schema(self.schema)


class NatsKV(KVMachine):
    """A fresh JetStream KV bucket per example, deleted after."""

    reopens = True

    def __init__(self) -> None:
        self.bucket = fresh_bucket("test_kv_model")
        super().__init__()

    def url(self) -> str:
        return bucket_url(self.bucket)

    def teardown(self) -> None:
        super().teardown()
        delete_bucket(self.bucket)


SqliteKV.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
PostgresKV.TestCase.settings = settings(max_examples=25, stateful_step_count=40, deadline=None)
NatsKV.TestCase.settings = settings(max_examples=25, stateful_step_count=40, deadline=None)
test_sqlite_kv_matches_the_model = SqliteKV.TestCase
test_postgres_kv_matches_the_model = PostgresKV.TestCase
test_nats_kv_matches_the_model = pytest.mark.nats(NatsKV.TestCase)
