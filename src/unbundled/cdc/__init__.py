"""Change data capture: committed changes of PostgreSQL or SQLite, in commit order, into the log.

A connector (`ConnectorConfig`) names a source database and its tables; `CDCProducer`
takes a snapshot of the tables, then streams every committed change into topics
``<prefix>.<schema>.<table>`` as Debezium-compatible change events. Each batch and the
source position it reaches are stored in one transaction, and only then confirmed to the
source: a crash loses no change and stores none twice. `request_snapshot` queues an
incremental snapshot of tables (PostgreSQL), read by key while streaming. See
docs/explanation/cdc.md.
"""

from __future__ import annotations

from ._change import UNAVAILABLE as UNAVAILABLE
from ._change import UNAVAILABLE_TEXT as UNAVAILABLE_TEXT
from ._change import Change as Change
from ._change import SourcePosition as SourcePosition
from ._check import CDCCheck as CDCCheck
from ._check import Finding as Finding
from ._check import TableCheck as TableCheck
from ._check import check_cdc as check_cdc
from ._connector import ConnectorConfig as ConnectorConfig
from ._connector import add as add_connector
from ._connector import get as get_connector
from ._connector import names as connector_names
from ._connector import remove as remove_connector
from ._connector import request_snapshot as request_snapshot
from ._connector import snapshot_status as snapshot_status
from ._runner import CDCProducer as CDCProducer
from ._runner import Progress as Progress
from ._sink import LogSink as LogSink
from ._sink import Stored as Stored
from ._source import Source as Source

__all__ = [
    "UNAVAILABLE",
    "UNAVAILABLE_TEXT",
    "CDCCheck",
    "CDCProducer",
    "Change",
    "ConnectorConfig",
    "Finding",
    "LogSink",
    "Progress",
    "Source",
    "SourcePosition",
    "Stored",
    "TableCheck",
    "add_connector",
    "check_cdc",
    "connector_names",
    "get_connector",
    "remove_connector",
    "request_snapshot",
    "snapshot_status",
]
