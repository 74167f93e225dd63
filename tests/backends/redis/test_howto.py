"""The Redis how-to's examples run, in order, against the real server, under
a fresh key prefix (the page's ``shop:idem:`` renamed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from unbundled.idempotency import Idempotency

pytestmark = pytest.mark.redis

PAGE = Path(__file__).resolve().parents[3] / "docs" / "how-to" / "idempotency-redis.md"
FENCE = re.compile(r"^```py\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_the_examples_run(redis_url: str, redis_prefix: str) -> None:
    blocks = FENCE.findall(PAGE.read_text())
    assert len(blocks) >= 3
    namespace: dict[str, object] = {"__name__": "__docs__"}
    try:
        for number, block in enumerate(blocks, 1):
            source = block.replace("shop:idem:", redis_prefix)
            exec(compile(source, f"{PAGE.name}:block{number}", "exec"), namespace)
    finally:
        for value in namespace.values():
            if isinstance(value, Idempotency):
                value.close()
    assert redis_url.endswith(redis_prefix)
