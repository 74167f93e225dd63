"""``unbundled.backends.destroy`` on every backend (issue 9, item 12).

The same laws on SQLite, PostgreSQL, Redis and NATS, on the real servers:
destroy drops the store and nothing next to it; it needs a confirmation; a
dry run drops nothing; an open store is refused where that can be seen; a
destroyed store reopens empty, with nothing stale replayed into it.
"""

from __future__ import annotations

import pytest

from tests.destroy.conftest import Target
from unbundled import NotFound, UsageError
from unbundled.backends import DestroyReport, destroy
from unbundled.consistency import KV
from unbundled.idempotency import Idempotency


def test_destroy_drops_the_store_and_nothing_next_to_it(store: Target) -> None:
    store.fill(store.url)
    store.fill(store.neighbour)

    report = destroy(store.url, confirm=True)

    assert isinstance(report, DestroyReport) and not report.dry_run
    assert report.backend == store.backend and report.items
    assert report.name in store.url
    assert not store.exists(store.url)
    assert store.exists(store.neighbour) and store.holds_data(store.neighbour)


def test_without_confirmation_nothing_is_dropped(store: Target) -> None:
    store.fill(store.url)
    for confirm in (False, "yes", 1):
        with pytest.raises(UsageError, match="confirm=True"):
            destroy(store.url, confirm=confirm)  # type: ignore[arg-type]
    assert store.holds_data(store.url)


def test_a_dry_run_lists_what_would_go_and_drops_nothing(store: Target) -> None:
    store.fill(store.url)
    plan = destroy(store.url, dry_run=True)
    assert plan.dry_run and plan.items
    assert store.holds_data(store.url)
    assert destroy(store.url, confirm=True).items == plan.items


def test_a_destroyed_store_reopens_empty(store: Target) -> None:
    store.fill(store.url)
    destroy(store.url, confirm=True)
    if store.backend == "nats":
        with KV.open(store.url) as kv:
            assert kv.read("limit") is None
    else:
        with Idempotency.open(store.url) as idem:
            assert idem.get("pay-1") is None and idem.records() == []


@pytest.mark.parametrize(
    "store",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
    indirect=True,
)
def test_an_open_store_is_refused(store: Target) -> None:
    store.fill(store.url)
    opened = Idempotency.open(store.url)
    try:
        with pytest.raises(UsageError, match="open"):
            destroy(store.url, confirm=True)
        with pytest.raises(UsageError, match="open"):
            destroy(store.url, dry_run=True)  # a dry run says what the real one would
        assert opened.get("pay-1") is not None  # still there, still usable
    finally:
        opened.close()
    destroy(store.url, confirm=True)
    assert not store.exists(store.url)


def test_a_store_that_is_not_there_is_not_found(store: Target) -> None:
    if store.backend == "redis":
        # Redis has no prefix object: an empty prefix is destroyed, emptily.
        assert destroy(store.url, confirm=True).items == (
            "0 idempotency records (keys " + store.url.rpartition("prefix=")[2] + "*)",
        )
        return
    with pytest.raises(NotFound):
        destroy(store.url, confirm=True)
    assert not store.exists(store.url)


def test_memory_has_nothing_to_destroy() -> None:
    report = destroy("memory://", confirm=True)
    assert report.backend == "memory" and report.items == ()


@pytest.mark.parametrize("url", ["", "ftp://host/x", "sqlite://relative.db"])
def test_a_bad_url_is_a_usage_error(url: str) -> None:
    with pytest.raises(UsageError):
        destroy(url, confirm=True)


def test_dry_run_must_be_a_bool() -> None:
    with pytest.raises(UsageError, match="dry_run"):
        destroy("memory://", dry_run="yes")  # type: ignore[arg-type]
