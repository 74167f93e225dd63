"""The log contract (``unbundled.testing.contract``) on every log backend.

Each backend the matrix lists for the log (``tests/matrix.py``) runs every
check on a fresh store.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import matrix
from unbundled import Log, Position
from unbundled.testing import SimClock
from unbundled.testing.contract import Check, LogTarget, all_checks, run_threads

Clock = Callable[[], int]


def _target(backend: str, url: str) -> LogTarget:
    def open_log(clock: Clock) -> Log:
        # sync="off": durability across power loss is the crash tests' job;
        # reopening still sees every commit.
        if backend == "sqlite":
            return Log.open(url, sync="off", clock=clock, maintenance_interval_s=None)
        if backend == "postgres":  # commits without waiting for the server's WAL flush
            return Log.open(url, sync="normal", clock=clock)
        return Log.open(url, clock=clock)

    # Records and offset commits share a transaction where the parts do.
    together = matrix.serves(backend, matrix.TRANSACTIONS)
    return LogTarget(backend, open_log, durable=backend != "memory", records_with_offsets=together)


@contextlib.contextmanager
def _opened(backend: str, tmp_path: Path) -> Iterator[LogTarget]:
    with matrix.isolated(backend, tmp_path, "contract") as url:
        yield _target(backend, url)


BACKENDS = matrix.params(matrix.LOG)
CASES = [
    pytest.param(
        param.values[0],
        check,
        id=f"{param.id}-{check.__name__.removeprefix('check_')}",
        marks=param.marks,
    )
    for param in BACKENDS
    for check in all_checks(
        durable=param.values[0] != "memory",
        records_with_offsets=matrix.serves(param.values[0], matrix.TRANSACTIONS),
    )
]


@pytest.mark.parametrize(("backend", "check"), CASES)
def test_log_contract(backend: str, check: Check, tmp_path: Path) -> None:
    with _opened(backend, tmp_path) as target:
        check(target)


def test_memory_skips_only_durable_checks() -> None:
    every = all_checks()
    volatile = all_checks(durable=False)
    assert set(volatile) < set(every)
    assert all(getattr(c, "durable_only", False) for c in set(every) - set(volatile))


def test_weaker_backends_swap_only_the_transaction_checks() -> None:
    """Without records and offsets in one transaction (NATS), exactly the
    checks that need it are replaced, each by a check of what is promised
    instead; nothing else is skipped."""
    together = set(all_checks())
    apart = set(all_checks(records_with_offsets=False))
    assert together & apart
    assert all(getattr(c, "records_with_offsets", None) is True for c in together - apart)
    assert all(getattr(c, "records_with_offsets", None) is False for c in apart - together)
    assert len(together - apart) == 4 and len(apart - together) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_transaction_and_appends_share_a_producer(backend: str, tmp_path: Path) -> None:
    """A producer shared by threads: a transaction's sequence must reach the
    writer in order with the producer's plain appends (no OutOfOrderSequence).

    The race window (between taking a sequence and enqueueing the batch) is
    microseconds wide; a delay in the facade's submit widens it so the test
    fails reliably if the transaction takes its sequence outside that window.
    """
    with _opened(backend, tmp_path) as target, target.open(SimClock()) as log:
        log.create_topic("t")
        producer = log.producer("shared")
        submit = log._submit

        def slow_submit(*args: Any, **kwargs: Any) -> list[Position]:
            time.sleep(0.002)
            return submit(*args, **kwargs)

        log._submit = slow_submit  # type: ignore[method-assign]

        def worker(n: int) -> None:
            for _ in range(25):
                if n % 2:
                    with log.transaction(producer=producer) as tx:
                        tx.append("t", b"tx")
                else:
                    producer.append("t", b"plain")

        run_threads(worker, 4)
        assert log.describe_topic("t").partitions[0].records == 100


@pytest.mark.parametrize("backend", BACKENDS)
def test_topics_beyond_the_limit_are_refused_alike(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One topic more than ``limits.topics_max`` is ``LimitExceeded`` on every
    backend (the memory model had no limit; SQLite said ``UsageError``)."""
    from unbundled import LimitExceeded, limits

    monkeypatch.setattr(limits, "topics_max", 3)
    with _opened(backend, tmp_path) as target, target.open(SimClock()) as log:
        for n in range(3):
            log.create_topic(f"t{n}")
        with pytest.raises(LimitExceeded, match="at most 3 topics"):
            log.create_topic("t3")
        assert sorted(log.topics()) == ["t0", "t1", "t2"]
