"""The lazyfs server process: mounts :class:`LazyOperations` with FUSE and
answers power-cut orders on a control socket (see
:mod:`unbundled.testing.lazyfs`).

Runs in its own process (``python -m unbundled.testing.lazyfs serve ...``):
the FUSE loop must never share a process with a program writing to the
mount, or a write could wait on the loop that has to serve it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from typing import Any

from ._lazyfs_ops import LazyOperations


def _answer(ops: LazyOperations, request: dict[str, Any]) -> dict[str, Any]:
    command = request.get("op")
    if command == "ping":
        return {"ok": True, "unsynced": ops.unsynced(), "namespace": ops.unsynced_namespace()}
    if command == "cut":
        report = ops.power_cut(
            tear=bool(request.get("tear")),
            reorder=bool(request.get("reorder")),
            seed=int(request.get("seed", 0)),
        )
        return {"ok": True, **report}
    return {"ok": False, "error": f"unknown command {command!r}"}


def recv_line(conn: socket.socket) -> bytes:
    """One message of the control protocol: bytes up to a newline (or the peer's close)."""
    raw = b""
    while not raw.endswith(b"\n"):
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        raw += chunk
    return raw


def _control_loop(ops: LazyOperations, server: socket.socket) -> None:
    """Answer one JSON line per connection with one JSON line."""
    while True:
        conn, _ = server.accept()
        with conn:
            try:
                conn.settimeout(10.0)
                reply = _answer(ops, json.loads(recv_line(conn)))
            except Exception as e:
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")


def _watch_parent(parent: int, mount: str, control: str) -> None:
    """If the process that started us dies, unmount, remove the control
    socket and exit: no orphan mount."""
    while os.getppid() == parent:
        time.sleep(0.5)
    subprocess.run(["fusermount3", "-u", "-z", mount], check=False, capture_output=True)
    with contextlib.suppress(OSError):
        os.unlink(control)
        os.rmdir(os.path.dirname(control))
    os._exit(1)


def serve(backing: str, mount: str, control: str, parent: int) -> int:
    """Mount ``backing`` lazily at ``mount`` and serve until unmounted."""
    import mfusepy

    if not stat.S_ISDIR(os.stat(backing).st_mode):
        print(f"lazyfs: {backing} is not a directory", file=sys.stderr)
        return 2
    ops = LazyOperations(backing)
    if os.path.exists(control):
        os.unlink(control)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(control)
    server.listen(8)
    threading.Thread(target=_control_loop, args=(ops, server), daemon=True).start()
    threading.Thread(target=_watch_parent, args=(parent, mount, control), daemon=True).start()
    # hard_remove: an unlinked open file is unlinked, not renamed to .fuse_hidden*
    # (a rename that would need an fsyncdir); its handles keep serving it.
    mfusepy.FUSE(ops, mount, foreground=True, fsname="lazyfs", hard_remove=True)
    return 0


__all__ = ["recv_line", "serve"]
