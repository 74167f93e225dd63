"""Moved to :mod:`unbundled._ground.waiters` (the basics every part shares);
kept so that old imports keep working."""

from ._ground.waiters import AsyncWaiter, Failure, SyncWaiter, complete_all, withdrawn

__all__ = ["AsyncWaiter", "Failure", "SyncWaiter", "complete_all", "withdrawn"]
