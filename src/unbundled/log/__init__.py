"""The log: topics, partitions, offsets, consumer groups, transactions."""

from ._async_consumer import AsyncConsumer as AsyncConsumer
from ._protocol import AppendItem as AppendItem
from ._protocol import GroupCoordination as GroupCoordination
from ._protocol import GroupInfo as GroupInfo
from ._protocol import GroupMemberInfo as GroupMemberInfo
from ._protocol import LogBackend as LogBackend
from ._protocol import MaintenanceReport as MaintenanceReport
from ._protocol import MemberView as MemberView
from ._protocol import Message as Message
from ._protocol import OffsetCommit as OffsetCommit
from ._protocol import PartitionInfo as PartitionInfo
from ._protocol import Position as Position
from ._protocol import ProducerStamp as ProducerStamp
from ._protocol import ProducerState as ProducerState
from ._protocol import Record as Record
from ._protocol import RecordStorage as RecordStorage
from ._protocol import TopicConfig as TopicConfig
from ._protocol import TopicInfo as TopicInfo
from ._protocol import TopicPartition as TopicPartition
from ._protocol import WriteBatch as WriteBatch
from ._sync_consumer import Consumer as Consumer
from .aio import AsyncLog as AsyncLog
from .aio import AsyncProducer as AsyncProducer
from .aio import AsyncTransaction as AsyncTransaction
from .api import Log as Log
from .api import Producer as Producer
from .api import Transaction as Transaction

__all__ = [
    "AppendItem",
    "AsyncConsumer",
    "AsyncLog",
    "AsyncProducer",
    "AsyncTransaction",
    "Consumer",
    "GroupCoordination",
    "GroupInfo",
    "GroupMemberInfo",
    "Log",
    "LogBackend",
    "MaintenanceReport",
    "MemberView",
    "Message",
    "OffsetCommit",
    "PartitionInfo",
    "Position",
    "Producer",
    "ProducerStamp",
    "ProducerState",
    "Record",
    "RecordStorage",
    "TopicConfig",
    "TopicInfo",
    "TopicPartition",
    "Transaction",
    "WriteBatch",
]
