"""The unit of work: one transaction across the log, the event store,
idempotency keys and the key-value store (the concept; backends implement
:class:`UnitBackend`, and :mod:`unbundled.database` is the facade).

:class:`Unit` is what one transaction writes; :class:`Committed` what it
wrote; the decisions every backend makes alike live in ``_unit``.
"""

from ._core import TxKV as TxKV
from ._unit import PARTS as PARTS
from ._unit import Committed as Committed
from ._unit import Unit as Unit
from ._unit import UnitBackend as UnitBackend

__all__ = ["PARTS", "Committed", "TxKV", "Unit", "UnitBackend"]
