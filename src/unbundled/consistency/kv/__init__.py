"""The linearizable key-value store with compare-and-set, and the register."""

from ._protocol import Expect as Expect
from ._protocol import KVBackend as KVBackend
from ._protocol import Versioned as Versioned
from .api import KV as KV
from .api import Register as Register

__all__ = [
    "Expect",
    "KV",
    "KVBackend",
    "Register",
    "Versioned",
]
