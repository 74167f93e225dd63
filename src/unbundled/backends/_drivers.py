"""The server backends' modules, imported only when a URL names one: each
needs its driver, an optional extra (``unbundled[postgres]``, ``[redis]``,
``[nats]``), so importing :mod:`unbundled.backends` must not import them."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import NotSupported


def backend_class(extra: str, name: str, driver: str, url: str) -> Any:
    """A server backend's class, imported only when a URL names it (its
    driver is an optional extra); ``NotSupported`` saying what to install."""
    try:
        return getattr(importlib.import_module(f"unbundled.backends.{extra}"), name)
    except ImportError as exc:
        raise NotSupported(
            f"the {extra} backend needs {driver}: pip install 'unbundled[{extra}]' ({exc})",
            url=url,
        ) from exc
