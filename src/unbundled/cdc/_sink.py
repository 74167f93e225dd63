"""Changes into the log, exactly once: records and the source position in one transaction.

The sink writes a batch of changes as log records (one topic per table, keyed by the
primary key) and, in the same unit of work, the position of the batch's last change under
the KV key ``cdc/<name>/position``. A crash therefore leaves the log and the position
agreeing: after a restart the source replays from where it confirmed, and every change at
or before the stored position is dropped here, so the log holds each change once (rows
that share one WAL LSN are told apart by their index in the transaction).

The position is written with compare-and-set on the version the sink last saw: a second
runner of the same connector makes the first one's next commit fail (``CompareFailed``),
so two processes never interleave their copies of a stream.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..log import Message
from ._change import Change, SourcePosition, encode
from ._outbox import DROP, Outbox

if TYPE_CHECKING:
    from ..database import Database

_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def topic_name(prefix: str, change: Change) -> str:
    """Debezium's `prefix.schema.table`, with characters a topic may not hold as '_'."""
    return _TOPIC_UNSAFE.sub("_", change.topic(prefix))


def position_key(name: str) -> str:
    return f"cdc/{name}/position"


def snapshot_key(name: str) -> str:
    """Set (to b"done") in the transaction that stores a connector's last snapshot row."""
    return f"cdc/{name}/snapshot"


def request_key(name: str) -> str:
    """Incremental snapshots asked for (`_incremental`): written by requesters only."""
    return f"cdc/{name}/incremental"


def progress_key(name: str) -> str:
    """The incremental snapshot's progress: written with each chunk's rows."""
    return f"cdc/{name}/incremental/progress"


@dataclass(frozen=True, slots=True)
class Stored:
    """What one `LogSink.write` did."""

    written: int  # changes appended
    skipped: int  # changes at or before the stored position (replayed after a restart)
    position: SourcePosition | None  # the stored position after the write


class LogSink:
    """Appends changes of connector ``name`` to topics ``<prefix>.<schema>.<table>``."""

    def __init__(
        self,
        db: Database,
        name: str,
        *,
        prefix: str,
        partitions: int = 1,
        clock: Any = time,
        outbox: Sequence[str] = (),
    ) -> None:
        self._outbox = Outbox(outbox)
        self._routed: set[str] = set()
        if not name or not _TOPIC_UNSAFE.sub("", name) == name:
            raise UsageError(
                f"connector name {name!r} may only hold letters, digits, '.', '_' and '-'"
            )
        self._db = db
        self.name = name
        self.prefix = prefix
        self._partitions = partitions
        self._clock = clock
        # (schema, table) -> its topic, created: the name is worked out once per table.
        self._topics: dict[tuple[str, str], str] = {}
        self._version = 0
        self._position: SourcePosition | None = None
        self.reload()

    def reload(self) -> SourcePosition | None:
        """Read the stored position (after a restart, or to take over from another runner)."""
        got = self._db.kv.read(position_key(self.name))
        if got is None:
            self._version, self._position = 0, None
        else:
            self._version = got.version
            self._position = SourcePosition.parse(got.value.decode())
        return self._position

    @property
    def position(self) -> SourcePosition | None:
        """The last change stored, or None before the first."""
        return self._position

    def _topic(self, change: Change) -> str:
        table = (change.schema, change.table)
        topic = self._topics.get(table)
        if topic is None:
            topic = topic_name(self.prefix, change)
            self._db.log.create_topic(topic, self._partitions, exist_ok=True)
            self._topics[table] = topic
        return topic

    def _ensure(self, topic: str) -> None:
        """Create an outbox topic the first time this sink writes to it."""
        if topic not in self._routed:
            self._db.log.create_topic(topic, self._partitions, exist_ok=True)
            self._routed.add(topic)

    def snapshot_done(self) -> bool:
        """True once the initial snapshot was stored whole."""
        return self._db.kv.read(snapshot_key(self.name)) is not None

    def write(
        self,
        changes: Sequence[Change],
        *,
        snapshot_done: bool = False,
        kv: Mapping[str, bytes] | None = None,
    ) -> Stored:
        """Append the changes after the stored position and store the new position, atomically.

        ``kv``: more keys to write in the same transaction (an incremental snapshot's
        progress, which must hold exactly when its chunk's rows do).

        Changes must come in source order; one at or before the stored position is a
        replay and is skipped. Raises ``CompareFailed`` if another runner stored a position
        since this sink read it (nothing is written then), ``UsageError`` if the changes
        are out of order.
        """
        fresh: list[Change] = []
        last = self._position
        # The position order ((commit, index)) on plain ints: SourcePosition's generated
        # comparisons build two tuples per call, and this runs for every change.
        placed = last is not None
        commit, index = (0, 0) if last is None else (last.commit, last.index)
        for change in changes:
            at = change.position
            if placed and (at.commit < commit or (at.commit == commit and at.index <= index)):
                if fresh:
                    raise UsageError(
                        f"change at {at} comes after {last}: changes must come in source order"
                    )
                continue
            fresh.append(change)
            last, commit, index, placed = at, at.commit, at.index, True
        skipped = len(changes) - len(fresh)
        if not fresh and not snapshot_done and not kv:
            return Stored(0, skipped, self._position)
        now_ms = int(self._clock.time() * 1000)
        by_topic: dict[str, list[Message]] = {}
        name = self.name
        outbox = self._outbox
        for change in fresh:
            if outbox:
                routed = outbox.route(change)
                if isinstance(routed, tuple):
                    topic, message = routed
                    self._ensure(topic)
                    by_topic.setdefault(topic, []).append(message)
                    continue
                if routed == DROP:
                    continue
            topic = self._topic(change)
            batch = by_topic.get(topic)
            if batch is None:
                batch = by_topic[topic] = []  # dicts keep insertion order: topics in order
            key = change.key_json()
            batch.append(
                Message(
                    change.envelope_json(name, now_ms),
                    key=None if key is None else encode(key),
                    timestamp=change.ts_ms,
                )
            )
        tx = self._db.transaction()
        for topic, batch in by_topic.items():
            tx.append_batch(topic, batch)
        if last is not None:
            tx.kv.compare_and_set(
                position_key(self.name),
                new=str(last).encode(),
                expected_version=self._version,
            )
        if snapshot_done:
            tx.kv.write(snapshot_key(self.name), b"done")
        for kv_key, value in (kv or {}).items():
            tx.kv.write(kv_key, value)
        committed = tx.commit()
        if last is not None:
            self._version = int(committed.kv[0])
        self._position = last
        return Stored(len(fresh), skipped, last)
