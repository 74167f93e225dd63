"""unbundled: the database, unbundled.

A durable append-only log at the centre; event store, idempotency keys,
change data capture, stream processing and consistency models on top.
"""

from .database import AsyncDatabase as AsyncDatabase
from .database import Committed as Committed
from .database import Database as Database
from .database import open as open
from .database import open_async as open_async
from .errors import BackendError as BackendError
from .errors import Closed as Closed
from .errors import CompareFailed as CompareFailed
from .errors import ConflictError as ConflictError
from .errors import CorruptionError as CorruptionError
from .errors import DuplicateEventId as DuplicateEventId
from .errors import Error as Error
from .errors import EventSchemaMismatch as EventSchemaMismatch
from .errors import Fenced as Fenced
from .errors import IdempotencyKeyReused as IdempotencyKeyReused
from .errors import InstanceFenced as InstanceFenced
from .errors import LimitExceeded as LimitExceeded
from .errors import NotFound as NotFound
from .errors import NotSupported as NotSupported
from .errors import OffsetOutOfRange as OffsetOutOfRange
from .errors import OutOfOrderSequence as OutOfOrderSequence
from .errors import PartitionNotFound as PartitionNotFound
from .errors import ProducerFenced as ProducerFenced
from .errors import ProjectionConflict as ProjectionConflict
from .errors import RecordTooLarge as RecordTooLarge
from .errors import RequestInProgress as RequestInProgress
from .errors import SessionBehind as SessionBehind
from .errors import StaleGeneration as StaleGeneration
from .errors import StaleToken as StaleToken
from .errors import StreamDeleted as StreamDeleted
from .errors import StreamNotFound as StreamNotFound
from .errors import SubjectForgotten as SubjectForgotten
from .errors import ThreadFailed as ThreadFailed
from .errors import Timeout as Timeout
from .errors import TopicExists as TopicExists
from .errors import TopicNotFound as TopicNotFound
from .errors import Unavailable as Unavailable
from .errors import UsageError as UsageError
from .errors import WrongExpectedVersion as WrongExpectedVersion
from .eventstore import ANY as ANY
from .eventstore import NO_STREAM as NO_STREAM
from .eventstore import STREAM_EXISTS as STREAM_EXISTS
from .eventstore import Aggregate as Aggregate
from .eventstore import AsyncEventStore as AsyncEventStore
from .eventstore import AsyncSubscription as AsyncSubscription
from .eventstore import Event as Event
from .eventstore import EventStore as EventStore
from .eventstore import Metadata as Metadata
from .eventstore import Projection as Projection
from .eventstore import ProjectionRunner as ProjectionRunner
from .eventstore import Repository as Repository
from .eventstore import StoredEvent as StoredEvent
from .eventstore import Subscription as Subscription
from .eventstore import applies as applies
from .idempotency import AsyncIdempotency as AsyncIdempotency
from .idempotency import Idempotency as Idempotency
from .idempotency import idempotent as idempotent
from .log import AsyncConsumer as AsyncConsumer
from .log import AsyncLog as AsyncLog
from .log import AsyncProducer as AsyncProducer
from .log import AsyncTransaction as AsyncTransaction
from .log import Consumer as Consumer
from .log import GroupInfo as GroupInfo
from .log import Log as Log
from .log import Message as Message
from .log import Position as Position
from .log import Producer as Producer
from .log import Record as Record
from .log import TopicConfig as TopicConfig
from .log import TopicInfo as TopicInfo
from .log import TopicPartition as TopicPartition
from .log import Transaction as Transaction

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "Aggregate",
    "AsyncConsumer",
    "AsyncDatabase",
    "AsyncEventStore",
    "AsyncIdempotency",
    "AsyncLog",
    "AsyncProducer",
    "AsyncSubscription",
    "AsyncTransaction",
    "BackendError",
    "Closed",
    "Committed",
    "CompareFailed",
    "ConflictError",
    "Consumer",
    "CorruptionError",
    "Database",
    "DuplicateEventId",
    "Error",
    "Event",
    "EventSchemaMismatch",
    "EventStore",
    "Fenced",
    "GroupInfo",
    "Idempotency",
    "IdempotencyKeyReused",
    "InstanceFenced",
    "LimitExceeded",
    "Log",
    "Message",
    "Metadata",
    "NotFound",
    "NotSupported",
    "OffsetOutOfRange",
    "OutOfOrderSequence",
    "PartitionNotFound",
    "Position",
    "Producer",
    "ProducerFenced",
    "Projection",
    "ProjectionConflict",
    "ProjectionRunner",
    "Record",
    "RecordTooLarge",
    "Repository",
    "RequestInProgress",
    "SessionBehind",
    "StaleGeneration",
    "StaleToken",
    "StoredEvent",
    "StreamDeleted",
    "StreamNotFound",
    "SubjectForgotten",
    "Subscription",
    "ThreadFailed",
    "Timeout",
    "TopicConfig",
    "TopicExists",
    "TopicInfo",
    "TopicNotFound",
    "TopicPartition",
    "Transaction",
    "Unavailable",
    "UsageError",
    "WrongExpectedVersion",
    "applies",
    "idempotent",
    "open",
    "open_async",
]

__version__ = "0.1.0"
