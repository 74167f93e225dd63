"""The log's node-loss checks, on any backend, through the public API only.

* :func:`log_or_skip` opens ``Log.open(url)``, skipping the test while that
  backend does not serve the log yet (``NotSupported``): the PostgreSQL and
  NATS logs are built elsewhere (issue 14); once they land this opens them.
* :func:`run_producers_through` runs idempotent producers (threads, one
  :class:`~unbundled.Producer` each, explicit sequence numbers) and
  optionally a group consumer, while ``fault()`` runs in the caller's
  thread. A failed append (``Unavailable``/``Timeout``) is retried with the
  same sequence until it succeeds: the producer must answer a retry of an
  append that was stored with its original position.
* :meth:`LogRun.assert_no_loss_no_duplicates` reads every partition back:
  each acknowledged record is there exactly once, at the position its
  append returned; no record appears twice; the consumer saw every
  acknowledged record (at least once: a failover may redeliver).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from unbundled import Log
from unbundled.errors import BackendError

TOPIC = "nodeloss"
PARTITIONS = 3
PRODUCERS = 3
RETRY_S = 0.1
CATCH_UP_S = 60.0  # for the consumer to read everything after the fault
CALL_S_MAX = 60.0


def log_or_skip(url: str) -> Log:
    """``Log.open(url)``. It skipped while the log did not run on PostgreSQL
    and NATS; both serve it now (issue 14), so a refusal fails the test."""
    return Log.open(url)


@dataclass
class LogRun:
    """What the producers had acknowledged and the consumer had seen."""

    log: Log
    acked: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # value -> (part, offset)
    errors: Counter[str] = field(default_factory=Counter)
    consumed: Counter[bytes] = field(default_factory=Counter)
    consumer_errors: Counter[str] = field(default_factory=Counter)
    crashed: list[BaseException] = field(default_factory=list)
    slowest_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self) -> str:
        return (
            f"{len(self.acked)} appends acknowledged, producer errors {dict(self.errors)}, "
            f"{sum(self.consumed.values())} records consumed "
            f"({len(self.consumed)} distinct), consumer errors {dict(self.consumer_errors)}, "
            f"slowest append {self.slowest_s:.2f} s"
        )

    def read_back(self) -> list[tuple[bytes, int, int]]:
        """Every record of the topic: ``(value, partition, offset)``."""
        found: list[tuple[bytes, int, int]] = []
        for partition in range(PARTITIONS):
            offset = 0
            while batch := self.log.read(TOPIC, partition, offset, records_max=1000):
                found += [(r.value or b"", r.partition, r.offset) for r in batch]
                offset = batch[-1].offset + 1
        return found

    def assert_no_loss_no_duplicates(self, *, consumed: bool = False) -> None:
        assert not self.crashed, f"{self.crashed!r}; {self.summary()}"
        assert self.slowest_s < CALL_S_MAX, f"an append hung: {self.summary()}"
        stored = self.read_back()
        values = Counter(value for value, _, _ in stored)
        twice = [value for value, count in values.items() if count > 1]
        assert not twice, f"duplicates: {twice[:10]}; {self.summary()}"
        where = {value: (partition, offset) for value, partition, offset in stored}
        lost = [value for value in self.acked if value not in where]
        assert not lost, f"acknowledged and lost: {lost[:10]}; {self.summary()}"
        moved = [v for v, pos in self.acked.items() if where[v] != pos]
        assert not moved, f"not where their append said: {moved[:10]}; {self.summary()}"
        if consumed:
            missed = [value for value in self.acked if value not in self.consumed]
            assert not missed, f"never consumed: {missed[:10]}; {self.summary()}"
            foreign = [value for value in self.consumed if value not in where]
            assert not foreign, f"consumed but not stored: {foreign[:10]}"


def _append_until_acked(run: LogRun, producer_id: str, stop: threading.Event) -> None:
    """One producer: records ``<id>:<n>``, each retried with sequence ``n``."""
    while True:  # opening the producer may meet the fault too
        try:
            producer = run.log.producer(producer_id)
            break
        except BackendError as exc:
            run.errors[type(exc).__name__] += 1
            time.sleep(RETRY_S)
    n = 0
    while not stop.is_set():
        value = f"{producer_id}:{n}".encode()
        while True:
            started = time.monotonic()
            try:
                position = producer.append(TOPIC, value, key=b"k%d" % (n % 7), sequence=n)
            except BackendError as exc:
                with run.lock:
                    run.errors[type(exc).__name__] += 1
                time.sleep(RETRY_S)
                continue
            finally:
                run.slowest_s = max(run.slowest_s, time.monotonic() - started)
            break
        with run.lock:
            run.acked[value] = (position.partition, position.offset)
        n += 1


def consume_until(
    run: LogRun,
    done: Callable[[], bool],
    *,
    group: str = "nodeloss",
    records_max: int = 500,
    pause_s: float = 0.0,
) -> None:
    """A group consumer counting what it reads until ``done()`` and it has
    caught up with everything acknowledged (or ``CATCH_UP_S`` passed);
    ``records_max`` per poll, ``pause_s`` after each."""
    deadline: float | None = None
    consumer = None
    while True:
        try:
            if consumer is None:
                consumer = run.log.consumer(TOPIC, group=group)
            for record in consumer.poll(0.5, records_max=records_max):
                with run.lock:
                    run.consumed[record.value or b""] += 1
            time.sleep(pause_s)
        except BackendError as exc:
            run.consumer_errors[type(exc).__name__] += 1
            time.sleep(RETRY_S)
            continue
        if done():
            deadline = deadline or time.monotonic() + CATCH_UP_S
            with run.lock:
                caught_up = all(value in run.consumed for value in run.acked)
            if caught_up or time.monotonic() > deadline:
                break
    if consumer is not None:
        consumer.close()


def run_producers_through(
    log: Log,
    fault: Callable[[], None],
    *,
    producers: int = PRODUCERS,
    consume: bool = False,
    before_s: float = 1.0,
    after_s: float = 1.0,
) -> LogRun:
    """Producers (and with ``consume`` a group consumer) run ``before_s``,
    then through ``fault()``, then ``after_s`` more; returns what they did."""
    log.create_topic(TOPIC, partitions=PARTITIONS, exist_ok=True)
    run = LogRun(log)
    stop = threading.Event()
    finished = threading.Event()

    def guard(work: Callable[[], None]) -> Callable[[], None]:
        def guarded() -> None:
            try:
                work()
            except BaseException as exc:
                run.crashed.append(exc)

        return guarded

    def producer(index: int) -> Callable[[], None]:
        return guard(lambda: _append_until_acked(run, f"p{index}", stop))

    threads = [threading.Thread(target=producer(i)) for i in range(producers)]
    if consume:
        threads.append(threading.Thread(target=guard(lambda: consume_until(run, finished.is_set))))
    for thread in threads:
        thread.daemon = True
        thread.start()
    try:
        time.sleep(before_s)
        fault()
        time.sleep(after_s)
    finally:
        stop.set()
        for thread in threads[:producers]:
            thread.join(CALL_S_MAX + 10)
        finished.set()
        for thread in threads[producers:]:
            thread.join(CATCH_UP_S + 10)
    assert not any(thread.is_alive() for thread in threads), f"hung: {run.summary()}"
    return run
