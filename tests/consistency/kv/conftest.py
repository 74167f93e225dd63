"""The store on each backend: ``memory``, ``sqlite`` (a fresh file),
``postgres`` (a fresh schema on the real server, dropped after) and ``nats``
(a fresh JetStream KV bucket, deleted after); the servers' tests skip
without the server and fail with CI=true."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import matrix
from unbundled.consistency import KV

BACKENDS = matrix.params(matrix.KV)


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store on each backend of the matrix
    (``tests/matrix.py``), or, parametrized indirectly, on the backends named."""
    name = request.param
    if name == "sqlite":  # the CLI's tests want a sqlite:/// URL
        yield f"sqlite:///{tmp_path / 'kv.db'}"
        return
    with matrix.isolated(name, tmp_path, "kv") as url:
        yield url


@pytest.fixture
def kv(store_url: str) -> Iterator[KV]:
    with KV.open(store_url, sync="normal") as opened:
        yield opened
