"""Capabilities are checkable protocols: a part a backend does not serve is
refused with ``NotSupported`` naming the protocol it lacks, and the table of
capabilities agrees with what each backend really does."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import unbundled
from unbundled.backends import MemoryBackend, SqliteBackend
from unbundled.errors import NotSupported
from unbundled.transaction import capabilities


def test_the_embedded_backends_have_every_capability(tmp_path: Path) -> None:
    sqlite_backend = SqliteBackend(str(tmp_path / "c.db"), sync="off")
    try:
        for backend in (MemoryBackend(), sqlite_backend):
            for part in capabilities.CAPABILITIES:
                assert capabilities.missing(backend, part) == [], (backend, part)
    finally:
        sqlite_backend.close()


def test_postgres_has_every_capability() -> None:
    from tests.backends.postgres.conftest import drop_schema, server_url

    schema = f"test_{uuid.uuid4().hex[:16]}"
    try:
        with unbundled.open(f"{server_url()}?schema={schema}", sync="off") as db:
            for part in capabilities.CAPABILITIES:
                assert capabilities.missing(db.backend, part) == [], part
            backends: list[object] = [db.log.backend, db.events.backend, db.kv.backend]
            assert all(b is db.backend for b in backends)  # one backend for every part
    finally:
        drop_schema(schema)


@pytest.mark.redis
def test_a_part_the_backend_lacks_names_the_missing_protocol(tmp_path: Path) -> None:
    from tests import matrix

    with matrix.isolated("redis", tmp_path) as url, unbundled.open(url) as db:
        with pytest.raises(NotSupported) as refused:
            db.log  # noqa: B018 - the property is the call under test
        assert refused.value.details["capability"] == "RecordStorage"
        assert refused.value.details["part"] == capabilities.LOG
        assert "RecordStorage" in str(refused.value)
        missing = capabilities.missing(db.backend, capabilities.LOG)
        assert [p.__name__ for p in missing] == [
            "RecordStorage",
            "ProducerState",
            "GroupCoordination",
        ]


@pytest.mark.nats
def test_a_backend_without_transactions_refuses_every_part(tmp_path: Path) -> None:
    """NATS serves the key-value store, one write at a time: a transaction's
    KV write is refused when it is added, never committed alone."""
    from tests import matrix

    with matrix.isolated("nats", tmp_path) as url, unbundled.open(url) as db:
        tx = db.transaction()
        with pytest.raises(NotSupported) as refused:
            tx.kv.write("k", b"v")
        assert refused.value.details["part"] == "kv"
        assert "no transactions" in str(refused.value)
        assert db.kv.read("k") is None, "nothing was written"
