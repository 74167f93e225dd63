"""Consistency models made executable: stores that keep a stated guarantee,
and checkers that verify a history against one."""

from .kv import KV as KV
from .kv import Register as Register
from .kv import Versioned as Versioned

__all__ = [
    "KV",
    "Register",
    "Versioned",
]
