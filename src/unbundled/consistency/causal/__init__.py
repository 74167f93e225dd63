"""A causally consistent, multi-leader replicated key-value store.

Every replica accepts writes; replicas exchange updates (through a log topic,
or any transport that moves :class:`Update` values) and apply each only after
its causal dependencies. Concurrent writes to a key are kept as siblings and
returned with a :class:`Context`; a write with that context supersedes
exactly those siblings (Dynamo, Riak). A :class:`Session` gives a client
read-your-writes and monotonic reads across replicas. See
``docs/explanation/causal-consistency.md``.
"""

from ._core import Context as Context
from ._core import KeyState as KeyState
from ._core import ReplicaCore as ReplicaCore
from ._core import Session as Session
from ._core import Sibling as Sibling
from ._core import Update as Update
from ._core import Versions as Versions
from .api import Replica as Replica

__all__ = [
    "Context",
    "KeyState",
    "Replica",
    "ReplicaCore",
    "Session",
    "Sibling",
    "Update",
    "Versions",
]
