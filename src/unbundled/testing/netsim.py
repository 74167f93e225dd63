"""A deterministic simulated network: seeded delays, reordering, duplicates,
loss and partitions between named nodes, on simulated time.

Everything random comes from the one ``random.Random`` handed in, and time
moves only through :meth:`Network.advance` and :meth:`Network.deliver_due`,
so a run is a pure function of its seed: a failing seed replays exactly
(TigerBeetle's VOPR, FoundationDB's simulation). Every decision is written to
``trace`` so two runs can be compared line by line.

>>> import random
>>> net = Network(["a", "b"], random.Random(7), NetConfig(duplicate_probability=0.0))
>>> net.send("a", "b", "hello")
>>> net.partition([["a"], ["b"]])
>>> net.send("a", "b", "lost")
>>> net.heal()
>>> net.advance(1_000)
>>> [(src, dst, msg) for src, dst, msg in net.deliver_due()]
[('a', 'b', 'hello')]
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..errors import UsageError

__all__ = ["NetConfig", "Network"]

M = TypeVar("M")


@dataclass(frozen=True)
class NetConfig:
    """How the network misbehaves. Delays are uniform in ``[delay_ms_min,
    delay_ms_max]``, which reorders messages sent close together."""

    delay_ms_min: int = 1
    delay_ms_max: int = 60
    duplicate_probability: float = 0.05
    drop_probability: float = 0.02

    def __post_init__(self) -> None:
        if not 0 <= self.delay_ms_min <= self.delay_ms_max:
            raise UsageError("need 0 <= delay_ms_min <= delay_ms_max")
        for p in (self.duplicate_probability, self.drop_probability):
            if not 0.0 <= p <= 1.0:
                raise UsageError(f"a probability is in [0, 1], got {p!r}")


class Network(Generic[M]):
    """Messages in flight between ``nodes``, delivered in simulated time order.

    A partition splits the nodes into groups: a message between groups is
    dropped when sent, and one already in flight is dropped when it would
    arrive (the link was cut under it). Loss and duplication are per message.
    """

    def __init__(
        self,
        nodes: Sequence[str],
        rng: random.Random,
        config: NetConfig = NetConfig(),
        trace: list[str] | None = None,
    ) -> None:
        if len(set(nodes)) != len(nodes) or not nodes:
            raise UsageError("a network needs distinct node names")
        self.nodes = tuple(nodes)
        self.rng = rng
        self.config = config
        self.trace = trace if trace is not None else []
        self.now_ms = 0
        self._queue: list[tuple[int, int, str, str, M]] = []
        self._sequence = 0  # ties in delivery time break by send order: deterministic
        self._group: dict[str, int] = {}
        self.sent = self.delivered = self.dropped = self.duplicated = 0

    # --- faults ----------------------------------------------------------------------

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        """Cut the network into ``groups`` (nodes not named form one more group)."""
        self._group = {node: i for i, group in enumerate(groups) for node in group}
        unknown = set(self._group) - set(self.nodes)
        if unknown:
            raise UsageError(f"unknown nodes in partition: {sorted(unknown)}")
        self.trace.append(f"{self.now_ms} partition {[sorted(g) for g in groups]}")

    def heal(self) -> None:
        """End the partition: every node reaches every other again."""
        self._group = {}
        self.trace.append(f"{self.now_ms} heal")

    def connected(self, src: str, dst: str) -> bool:
        """True if a message from ``src`` reaches ``dst`` now (same side of any partition)."""
        return self._group.get(src, -1) == self._group.get(dst, -1)

    @property
    def partitioned(self) -> bool:
        """True while a :meth:`partition` is in force."""
        return bool(self._group)

    # --- traffic ---------------------------------------------------------------------

    def send(self, src: str, dst: str, message: M, label: str = "") -> None:
        """Put ``message`` in flight (or lose it). ``label`` names it in the trace."""
        self.sent += 1
        if not self.connected(src, dst):
            self.dropped += 1
            self.trace.append(f"{self.now_ms} cut {src}->{dst} {label}")
            return
        if self.rng.random() < self.config.drop_probability:
            self.dropped += 1
            self.trace.append(f"{self.now_ms} lose {src}->{dst} {label}")
            return
        copies = 2 if self.rng.random() < self.config.duplicate_probability else 1
        if copies == 2:
            self.duplicated += 1
        for _ in range(copies):
            delay = self.rng.randint(self.config.delay_ms_min, self.config.delay_ms_max)
            self._sequence += 1
            heapq.heappush(self._queue, (self.now_ms + delay, self._sequence, src, dst, message))
            self.trace.append(f"{self.now_ms} send {src}->{dst} +{delay} {label}")

    def advance(self, ms: int) -> None:
        """Move simulated time ``ms`` forward (``UsageError`` if negative); delivers nothing."""
        if ms < 0:
            raise UsageError("time does not go backwards")
        self.now_ms += ms

    def deliver_due(self) -> Iterator[tuple[str, str, M]]:
        """Yield every message due by now, in delivery-time order. Messages
        sent while iterating are delivered in the same call if already due."""
        while self._queue and self._queue[0][0] <= self.now_ms:
            _, _, src, dst, message = heapq.heappop(self._queue)
            if not self.connected(src, dst):
                self.dropped += 1
                self.trace.append(f"{self.now_ms} cut-in-flight {src}->{dst}")
                continue
            self.delivered += 1
            yield src, dst, message

    def next_due_ms(self) -> int | None:
        """When the next message arrives (``None``: nothing in flight)."""
        return self._queue[0][0] if self._queue else None

    def in_flight(self) -> int:
        """How many messages wait for their delivery time (a partition in force
        then still loses those it cuts)."""
        return len(self._queue)
