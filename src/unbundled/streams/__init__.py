"""Stream processing over the log: dataflows, event-time windows with
watermarks derived from the log alone, per-key state, and exactly-once
epochs (see docs/explanation/streams.md).
"""

from ._driver import Output as Output
from ._driver import TestDriver as TestDriver
from ._flow import Flow as Flow
from ._flow import Stream as Stream
from ._flow import Windowed as Windowed
from ._flow import WindowStream as WindowStream
from ._ops import OperatorFailed as OperatorFailed
from ._task import TIME_HEADER as TIME_HEADER
from ._windows import Count as Count
from ._windows import Hopping as Hopping
from ._windows import Session as Session
from ._windows import Tumbling as Tumbling
from ._windows import WindowResult as WindowResult

__all__ = [
    "TIME_HEADER",
    "Count",
    "Flow",
    "Hopping",
    "OperatorFailed",
    "Output",
    "Session",
    "Stream",
    "TestDriver",
    "Tumbling",
    "WindowResult",
    "WindowStream",
    "Windowed",
]
from ._runner import RunReport as RunReport
from ._runner import heartbeat as heartbeat
from ._runner import run as run

__all__ += ["RunReport", "heartbeat", "run"]
