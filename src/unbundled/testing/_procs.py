"""Server processes that die with the test that started them."""

from __future__ import annotations

import shutil

__all__ = ["die_with_parent"]


def die_with_parent(command: list[str]) -> list[str]:
    """``command`` run so that the kernel SIGKILLs it when the thread that
    started it ends (``PR_SET_PDEATHSIG``, set by util-linux's ``setpriv``
    just before it execs ``command``; no Python runs between fork and exec).
    Without ``setpriv``, ``command`` as it is: only ``close()`` stops it."""
    setpriv = shutil.which("setpriv")
    return command if setpriv is None else [setpriv, "--pdeathsig", "KILL", "--", *command]
