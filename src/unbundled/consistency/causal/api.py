"""A causal-store replica that replicates through a log topic.

The topic has one partition per replica, in the order of ``replicas``:
replica ``replicas[i]`` appends its own updates to partition ``i`` (through
an idempotent producer, its update sequence number as the producer sequence,
so update ``seq`` sits at offset ``seq - 1``), and reads every partition from
its own positions. The log is the replication channel *and* the history:

- **causal delivery** needs no buffer of its own: a replica looks at the next
  unread update of each partition and applies whichever is deliverable; an
  update whose dependencies are missing simply stays in the log (a bounded
  read-ahead per partition) until the update it waits for has been read from
  another partition;
- **anti-entropy** is reading on: a replica cut off from the log (or not
  polling, or dead) reads from where it stopped when it comes back; a
  restarted process rebuilds its state by replaying the topic from the start
  (the state is a pure function of the updates, in any causal order).

>>> from unbundled import Log
>>> from unbundled.consistency.causal import Replica, Session
>>> with Log.open("memory://") as log:
...     a = Replica(log, "a", ["a", "b"])
...     b = Replica(log, "b", ["a", "b"])
...     me = Session()
...     _ = a.put("cart", b"apple", session=me)
...     b.get("cart", session=me).values  # read-your-writes on another replica
(b'apple',)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar

from ... import limits
from ..._bounds import check_seconds
from ..._ground.waiters import Failure
from ...errors import CorruptionError, Error, SessionBehind, TopicExists, UsageError
from ...log.api import Log
from ._core import Context, ReplicaCore, Session, Update, Versions, decode_update, encode_update

__all__ = ["Replica"]

T = TypeVar("T")


class Replica:
    """One replica of a causally consistent store, replicating through ``log``.

    Open it with this replica's id and the ids of every replica of the store
    (the same list, in the same order, everywhere: it maps replicas to
    partitions of ``topic``). Opening creates the topic if needed and
    replays it, so a restarted replica is caught up before it serves.

    Reads and writes take a :class:`Session`. A replica that has not yet
    applied what the session saw waits, reading the log, up to ``timeout_s``
    (default 5 s), then raises ``SessionBehind``: retry or use another replica.
    Call :meth:`sync` to apply what other replicas wrote, or :meth:`start`
    a thread that does so continuously. Thread-safe.
    """

    def __init__(
        self,
        log: Log,
        replica_id: str,
        replicas: Sequence[str],
        *,
        topic: str = "causal",
        timeout_s: float = 5.0,
    ) -> None:
        names = list(replicas)
        if replica_id not in names or len(set(names)) != len(names):
            raise UsageError(
                f"replicas must be distinct and include {replica_id!r}, got {names!r}",
                replica=replica_id,
            )
        if len(names) > limits.causal_replicas_max:
            raise UsageError(f"at most {limits.causal_replicas_max} replicas, got {len(names)}")
        self._log = log
        self._core = ReplicaCore(replica_id)
        self.replica_id = replica_id
        self.replicas = tuple(names)
        self.topic = topic
        self.timeout_s = check_seconds("timeout_s", timeout_s)
        self._open_topic(log, topic, len(names))
        self._partition = names.index(replica_id)
        self._positions = [0] * len(names)
        self._ahead: list[deque[Update]] = [deque() for _ in names]
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: Error | None = None  # what stopped the follower thread
        # Opening the producer fences an older process running this replica.
        self._producer = log.producer(f"causal.{topic}.{replica_id}")
        self.sync()
        mine = self._core.applied.get(replica_id, 0)
        if self._producer.last_sequence > mine:
            raise CorruptionError(
                f"replica {replica_id!r} replayed {mine} of its own updates, "
                f"but its producer wrote {self._producer.last_sequence}",
                replica=replica_id,
            )

    @staticmethod
    def _open_topic(log: Log, topic: str, partitions: int) -> None:
        """Create the topic, or accept an existing one that can hold the store.

        Several replicas (processes) may open at the same moment: creating is
        idempotent (``exist_ok``), so whichever comes first creates it and the
        others find it. A topic created otherwise (by hand, with other
        settings) is accepted if it has one partition per replica, keeps every
        record and takes the largest update; else nothing is written and the
        error says what is wrong.
        """
        try:
            log.create_topic(
                topic,
                partitions=partitions,
                record_bytes_max=limits.causal_update_bytes_max,
                exist_ok=True,
            )
            return
        except TopicExists:
            pass  # there, with other settings: check that they serve the store
        config = log.describe_topic(topic).config
        if config.partitions != partitions or config.cleanup_policy != "delete":
            raise TopicExists(
                f"topic {topic!r} has {config.partitions} partitions "
                f"({config.cleanup_policy}); a store of {partitions} replicas needs "
                f"{partitions} (delete)",
                topic=topic,
            )
        if config.retention_ms is not None or config.retention_bytes is not None:
            # A restarted replica replays the topic from the start.
            raise UsageError(f"topic {topic!r} must keep every record (no retention)", topic=topic)
        if config.record_bytes_max < limits.causal_update_bytes_max:
            # Checked now, not at the first large write (which could not be appended).
            raise UsageError(
                f"topic {topic!r} takes records of up to {config.record_bytes_max:,} bytes; "
                f"an update of the store can be {limits.causal_update_bytes_max:,}",
                topic=topic,
            )

    # --- client operations ---------------------------------------------------------

    def get(
        self, key: str, *, session: Session | None = None, timeout_s: float | None = None
    ) -> Versions:
        """The key's siblings and the context to resolve them with."""
        return self._serve(lambda: self._core.read(key, session), timeout_s)

    def put(
        self,
        key: str,
        value: bytes | None,
        *,
        context: Context | None = None,
        session: Session | None = None,
        timeout_s: float | None = None,
    ) -> Versions:
        """Write ``value`` (``None`` deletes), superseding the siblings that
        ``context`` (from a read of ``key``) covers; without a context the
        write becomes one more sibling. Returns once the update is durable in
        the log, with the key's state at this replica after the write.

        If the append fails (the backend's error is raised), the write may or
        may not have reached the log; the replica re-reads its own partition,
        so it applies the write exactly when it did.
        """
        return self._serve(lambda: self._write(key, value, context, session), timeout_s)

    def delete(
        self,
        key: str,
        *,
        context: Context | None = None,
        session: Session | None = None,
        timeout_s: float | None = None,
    ) -> Versions:
        """``put(key, None, ...)``: a delete is a sibling too (a tombstone)."""
        return self.put(key, None, context=context, session=session, timeout_s=timeout_s)

    def _write(
        self, key: str, value: bytes | None, context: Context | None, session: Session | None
    ) -> Versions:
        update = self._core.prepare_write(key, value, context, session)
        try:
            self._producer.append(
                self.topic,
                encode_update(update),
                key=self.replica_id.encode(),
                partition=self._partition,
                sequence=update.seq,
            )
        except Error:
            # Unknown outcome: if the record landed, reading applies it.
            self._pump()
            raise
        return self._core.commit_write(update, session)

    def _serve(self, op: Callable[[], T], timeout_s: float | None) -> T:
        """Run ``op`` under the lock; while the replica is behind the client,
        read the log and wait for it to grow, up to the timeout."""
        if self._failure is not None:
            raise self._failure
        budget = self.timeout_s if timeout_s is None else check_seconds("timeout_s", timeout_s)
        deadline = time.monotonic() + budget
        backend = self._log.backend
        while True:
            token = backend.change_token()
            with self._lock:
                try:
                    return op()
                except SessionBehind:
                    if self._pump() > 0:
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise
            backend.wait_for_change(token, min(remaining, 0.5))

    # --- replication ---------------------------------------------------------------

    def sync(self, wait_s: float = 0.0) -> int:
        """Read what is new in the log and apply every deliverable update.
        With ``wait_s``, wait up to that long for news if nothing applied.
        Returns the number of updates applied."""
        wait_s = check_seconds("wait_s", wait_s)
        backend = self._log.backend
        token = backend.change_token()
        with self._lock:
            done = self._pump()
        if done or wait_s <= 0:
            return done
        backend.wait_for_change(token, wait_s)
        with self._lock:
            return self._pump()

    def _refill(self, index: int) -> None:
        origin = self.replicas[index]
        records = self._log.read(
            self.topic,
            index,
            self._positions[index],
            records_max=limits.causal_read_records_max,
        )
        for record in records:
            update = decode_update(record.value or b"")
            if update.origin != origin or update.seq != record.offset + 1:
                raise CorruptionError(
                    f"partition {index} of {self.topic!r} holds update "
                    f"{update.origin}:{update.seq} at offset {record.offset}",
                    topic=self.topic,
                    partition=index,
                    offset=record.offset,
                )
            self._ahead[index].append(update)
            self._positions[index] = record.offset + 1

    def _pump(self) -> int:
        """Apply every deliverable update, reading ahead as needed (lock held)."""
        core = self._core
        done = 0
        progress = True
        while progress:
            progress = False
            for index, ahead in enumerate(self._ahead):
                while True:
                    if not ahead:
                        self._refill(index)
                        if not ahead:
                            break
                    head = ahead[0]
                    if core.is_applied(head):  # our own write, applied when written
                        ahead.popleft()
                        continue
                    if not core.deliverable(head):
                        break  # it waits in the log for an update of another partition
                    core.apply(head)
                    ahead.popleft()
                    done += 1
                    progress = True
        return done

    def start(self, poll_s: float = 0.5) -> None:
        """Apply other replicas' updates continuously, in a daemon thread."""
        check_seconds("poll_s", poll_s)
        if self._thread is not None:
            return
        self._stop.clear()

        def follow() -> None:
            try:
                while not self._stop.is_set():
                    self.sync(wait_s=poll_s)
            except Error as exc:  # a corrupt log, a closed log: tell the next caller
                self._failure = exc
            except BaseException as exc:  # unexpected: the next caller hears it, typed
                failure = Failure()
                failure.set(threading.current_thread().name, exc, "the replica")
                self._failure = failure.error()

        self._thread = threading.Thread(target=follow, name=f"causal-{self.replica_id}")
        self._thread.daemon = True
        self._thread.start()

    def close(self) -> None:
        """Stop the follower thread (the log stays open: it is the caller's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> Replica:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- inspection -----------------------------------------------------------------

    @property
    def applied(self) -> dict[str, int]:
        """How many updates of each replica this one has applied."""
        with self._lock:
            return dict(self._core.applied)

    def keys(self) -> list[str]:
        """Every key this replica holds state for, sorted, deleted ones included;
        see :meth:`ReplicaCore.keys`."""
        with self._lock:
            return self._core.keys()

    def peek(self, key: str) -> Versions:
        """The key's state here, ignoring sessions (for checks and debugging)."""
        with self._lock:
            return self._core.peek(key)

    def digest(self) -> str:
        """Equal on two replicas exactly when they hold the same data."""
        with self._lock:
            return self._core.digest()
