"""A password in a server URL never appears in an error's message or details.

Errors are printed by the CLI, logged by applications and pickled across
processes: the URL they name is the one for messages, with the password
masked. Nothing here needs a server: the ports are closed on purpose.
"""

from __future__ import annotations

from typing import Any

import pytest

from unbundled import Error, EventStore, Idempotency
from unbundled.consistency import KV

SECRET = "s3cret-pw"


def _check_hidden(error: Error) -> None:
    shown = [str(error), repr(error.details), repr(error.__reduce__())]
    assert not any(SECRET in text for text in shown), shown


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{SECRET}@127.0.0.1:1/test?schema=NOT-VALID",
        f"postgresql://127.0.0.1:1/test?password={SECRET}&schema=NOT-VALID",
        f"postgresql://app:{SECRET}@127.0.0.1:1/test?schema=s&connect_timeout=1",
        f"postgresql://127.0.0.1:1/test?password={SECRET}&connect_timeout=1",
    ],
)
def test_postgres_errors_hide_the_password(url: str) -> None:
    with pytest.raises(Error) as caught:
        EventStore.open(url)
    _check_hidden(caught.value)


@pytest.mark.parametrize(
    ("opener", "url"),
    [
        (Idempotency.open, f"redis://app:{SECRET}@127.0.0.1:1/0"),
        (KV.open, f"nats://app:{SECRET}@127.0.0.1:1?bucket=b"),
    ],
)
def test_other_servers_errors_hide_the_password(opener: Any, url: str) -> None:
    with pytest.raises(Error) as caught:
        opener(url)
    _check_hidden(caught.value)
