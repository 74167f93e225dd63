"""Hermitage as a tool: which isolation anomalies a database really prevents.

:func:`run_suite` drives two or three real connections, step by step, through
each of Hermitage's test cases (G0, G1a, G1b, G1c, OTV, PMP, PMP-write, P4,
G-single and its predicate variants, G2-item, G2, G2-fekete) at each isolation
level of SQLite, PostgreSQL or MariaDB/MySQL, and reports for every (level,
test) whether the anomaly was ``prevented`` or occurred (``anomaly``), with
the transcript of what each connection ran and saw, and which steps blocked.
"""

from ._drivers import Variant as Variant
from ._runner import Entry as Entry
from ._scripts import TEST_NAMES as TEST_NAMES
from .api import Outcome as Outcome
from .api import OutcomeKind as OutcomeKind
from .api import run_suite as run_suite
from .api import to_markdown as to_markdown
from .api import variants as variants

__all__ = [
    "TEST_NAMES",
    "Entry",
    "Outcome",
    "OutcomeKind",
    "Variant",
    "run_suite",
    "to_markdown",
    "variants",
]
