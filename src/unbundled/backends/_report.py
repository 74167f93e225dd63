"""What :func:`unbundled.backends.destroy` reports, and the wait every
server backend's ``destroy`` shares; below the backends' own ``_destroy``
modules and the dispatcher that calls them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DestroyReport:
    """What :func:`destroy` dropped (or, with ``dry_run``, would drop).

    ``name`` is what a person types back to confirm (the schema, the prefix,
    the bucket, the file path); ``items`` lists what goes, one line each.
    """

    backend: str
    url: str
    name: str
    what: str
    items: tuple[str, ...]
    dry_run: bool


# A store closed just before destroy: the server notices the closed
# connection a moment later. Connections still listed after this long are
# taken for an open store.
CLOSING_GRACE_S = 3.0


def still_open(list_open: Callable[[], list[str]]) -> list[str]:
    """The connections ``list_open()`` reports, asked again for a moment
    while there are some: the server may not have noticed yet that a store
    closed just before destroy was called."""
    deadline = time.monotonic() + CLOSING_GRACE_S
    while (found := list_open()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found
