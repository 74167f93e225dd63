"""The event store: streams with optimistic concurrency, ``$all`` in global
order, idempotent appends, snapshots and schema evolution."""

from ._protocol import ANY as ANY
from ._protocol import NO_STREAM as NO_STREAM
from ._protocol import STREAM_EXISTS as STREAM_EXISTS
from ._protocol import AppendResult as AppendResult
from ._protocol import EventStorage as EventStorage
from ._protocol import EventStoreBackend as EventStoreBackend
from ._protocol import NewEvent as NewEvent
from ._protocol import ProjectionStorage as ProjectionStorage
from ._protocol import ProjectionTxn as ProjectionTxn
from ._protocol import RecordedEvent as RecordedEvent
from ._protocol import Snapshot as Snapshot
from ._protocol import SnapshotStorage as SnapshotStorage
from ._protocol import StreamState as StreamState
from ._protocol import StreamWrite as StreamWrite
from ._protocol import SubjectKeys as SubjectKeys
from ._protocol import category_of as category_of
from .aggregate import Aggregate as Aggregate
from .aggregate import Repository as Repository
from .aggregate import SnapshotState as SnapshotState
from .aggregate import applies as applies
from .aio import AsyncEventStore as AsyncEventStore
from .api import EventStore as EventStore
from .api import StoredEvent as StoredEvent
from .projections import Projection as Projection
from .projections import ProjectionRunner as ProjectionRunner
from .projections import ProjectionStatus as ProjectionStatus
from .projections import projection_status as projection_status
from .read_models import Documents as Documents
from .serialization import Event as Event
from .serialization import Metadata as Metadata
from .serialization import Serializer as Serializer
from .subscriptions import AsyncSubscription as AsyncSubscription
from .subscriptions import Subscription as Subscription
from .subscriptions import SubscriptionWorker as SubscriptionWorker

__all__ = [
    "ANY",
    "Aggregate",
    "AppendResult",
    "AsyncEventStore",
    "AsyncSubscription",
    "Documents",
    "Event",
    "EventStorage",
    "EventStore",
    "EventStoreBackend",
    "Metadata",
    "NO_STREAM",
    "NewEvent",
    "Projection",
    "ProjectionRunner",
    "ProjectionStatus",
    "ProjectionStorage",
    "ProjectionTxn",
    "RecordedEvent",
    "Repository",
    "STREAM_EXISTS",
    "Serializer",
    "Snapshot",
    "SnapshotState",
    "SnapshotStorage",
    "StoredEvent",
    "StreamState",
    "StreamWrite",
    "SubjectKeys",
    "Subscription",
    "SubscriptionWorker",
    "applies",
    "category_of",
    "projection_status",
]
