"""What a backend can do, as small checkable protocols.

Each part of unbundled needs a few capabilities, each a ``typing.Protocol``
of its concept (layered the way the ``eventsourcing`` library layers its
recorders): the log needs :class:`~unbundled.log.RecordStorage`,
:class:`~unbundled.log.ProducerState` and
:class:`~unbundled.log.GroupCoordination`; the event store
:class:`~unbundled.eventstore.EventStorage`, snapshots, projections and
subject keys; idempotency keys :class:`~unbundled.idempotency.IdempotencyBackend`;
the key-value store :class:`~unbundled.consistency.kv.KVBackend`; one
transaction across the parts :class:`~unbundled.transaction.UnitBackend`.
A backend serves a part when it implements every protocol the part needs,
which :func:`missing` checks; :func:`require` turns the first missing one
into ``NotSupported`` naming it.
"""

from __future__ import annotations

import functools
from typing import Any

from ..consistency.kv._protocol import KVBackend
from ..errors import NotSupported
from ..eventstore._protocol import EventStorage, ProjectionStorage, SnapshotStorage, SubjectKeys
from ..idempotency._protocol import IdempotencyBackend
from ..log._protocol import GroupCoordination, ProducerState, RecordStorage
from ._unit import UnitBackend

__all__ = [
    "CAPABILITIES",
    "LOG",
    "EVENTS",
    "IDEMPOTENCY",
    "KV",
    "TRANSACTIONS",
    "missing",
    "require",
]

#: The log, as :data:`CAPABILITIES` names it.
LOG = "the log"
#: The event store, as :data:`CAPABILITIES` names it.
EVENTS = "the event store"
#: Idempotency keys, as :data:`CAPABILITIES` names them.
IDEMPOTENCY = "idempotency keys"
#: The key-value store, as :data:`CAPABILITIES` names it.
KV = "the key-value store"
#: One transaction across the parts, as :data:`CAPABILITIES` names it.
TRANSACTIONS = "transactions"

#: Each part, and the protocols (capabilities) a backend implements to serve it.
CAPABILITIES: dict[str, tuple[type, ...]] = {
    LOG: (RecordStorage, ProducerState, GroupCoordination),
    EVENTS: (EventStorage, SnapshotStorage, ProjectionStorage, SubjectKeys),
    IDEMPOTENCY: (IdempotencyBackend,),
    KV: (KVBackend,),
    TRANSACTIONS: (UnitBackend,),
}


def missing(backend: object, part: str) -> list[type]:
    """The capabilities ``part`` needs that ``backend`` (an instance, or a
    backend class: then its methods are checked) lacks; empty: it serves it."""
    if isinstance(backend, type):
        return [p for p in CAPABILITIES[part] if not all(hasattr(backend, m) for m in _methods(p))]
    return [protocol for protocol in CAPABILITIES[part] if not isinstance(backend, protocol)]


@functools.cache
def _methods(protocol: type) -> tuple[str, ...]:
    return tuple(
        name
        for name in dir(protocol)
        if not name.startswith("_") and callable(getattr(protocol, name, None))
    )


def require(backend: Any, part: str, url: str) -> None:
    """``NotSupported`` naming the first capability of ``part`` that
    ``backend`` lacks (``details["capability"]``), if any."""
    lacking = missing(backend, part)
    if not lacking:
        return
    first = lacking[0]
    # The first sentence of the protocol's docstring says what it is.
    summary = " ".join((first.__doc__ or "").split()).split(". ")[0].rstrip(".")
    raise NotSupported(
        f"the backend at {url} does not serve {part}: it has no {first.__name__} ({summary})",
        part=part,
        capability=first.__name__,
        url=url,
    )
