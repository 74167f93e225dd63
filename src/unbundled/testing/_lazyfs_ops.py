"""The server side of :mod:`unbundled.testing.lazyfs`: FUSE operations that
hold every file's data writes in memory until that file is fsynced, and a
control socket that orders a power cut.

Runs in its own process (``python -m unbundled.testing.lazyfs serve ...``):
the FUSE loop must never share a process with a program writing to the
mount, or a write could wait on the loop that has to serve it.

The state of one file is a :class:`_Pending`: the unsynced operations in
order (``("w", offset, data)`` writes and ``("t", length, b"")`` truncates)
and an image of the file as the program sees it, served to reads. ``fsync``
or ``fdatasync`` of the file applies the operations to the backing file in
order and fsyncs it; a power cut drops them (or, when asked, applies a
seed-chosen torn or reordered part first).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SECTOR_BYTES = 512

Op = tuple[str, int, bytes]  # ("w", offset, data) or ("t", length, b"")


@dataclass
class _Pending:
    """The unsynced operations of one file and the file as they make it."""

    image: bytearray
    ops: list[Op] = field(default_factory=list)


def _error(code: int) -> OSError:
    """The error FUSE turns into ``-code`` for the caller (mfusepy's
    ``FuseOSError`` is an ``OSError`` with that errno; a plain one works too)."""
    return OSError(code, os.strerror(code))


def _apply(real: str, ops: list[Op]) -> None:
    """Apply ``ops`` in order to the backing file ``real`` and fsync it. A file
    that is gone (unlinked since) takes nothing."""
    try:
        fd = os.open(real, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        for kind, where, data in ops:
            if kind == "w":
                os.pwrite(fd, data, where)
            else:
                os.ftruncate(fd, where)
        os.fsync(fd)
    finally:
        os.close(fd)


class LazyOperations:
    """FUSE operations over ``backing``, the durable disk.

    Data (writes, truncates) is durable only once the file is fsynced.
    Metadata (create, unlink, rename, mkdir, rmdir, chmod, utimens) is applied
    to the backing directory at once, so it survives a power cut even without
    an fsync of the directory: a known limit of this first version (LazyFS
    does the same). A created file survives, empty, unless its data was synced.
    Locks are left to the kernel (FUSE keeps POSIX locks local to the mount).

    Every operation takes one lock; after :meth:`power_cut` every operation
    fails with ``EIO``, as a disk without power would.
    """

    use_ns = True  # mfusepy: times are integer nanoseconds

    def __init__(self, backing: str) -> None:
        self.backing = os.path.abspath(backing)
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._handles = 0
        self._cut = False

    # -- helpers ------------------------------------------------------------

    def _real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _check(self) -> None:
        if self._cut:
            raise _error(errno.EIO)

    def _handle(self) -> int:
        self._handles += 1
        return self._handles

    def _load(self, path: str) -> _Pending:
        """The pending state of ``path``, loading the backing file on first use."""
        pending = self._pending.get(path)
        if pending is None:
            try:
                with open(self._real(path), "rb") as f:
                    pending = _Pending(bytearray(f.read()))
            except FileNotFoundError:
                raise _error(errno.ENOENT) from None
            self._pending[path] = pending
        return pending

    def _locked(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            self._check()
            try:
                return fn()
            except OSError as e:
                raise _error(e.errno or errno.EIO) from e

    # -- metadata -------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            st = os.lstat(self._real(path))
            attrs = {
                key: getattr(st, key)
                for key in ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size")
            }
            attrs["st_atime"] = st.st_atime_ns
            attrs["st_mtime"] = st.st_mtime_ns
            attrs["st_ctime"] = st.st_ctime_ns
            pending = self._pending.get(path)
            if pending is not None:
                attrs["st_size"] = len(pending.image)
            return attrs

        result: dict[str, Any] = self._locked(run)
        return result

    def access(self, path: str, amode: int) -> int:
        if not self._locked(lambda: os.access(self._real(path), amode)):
            raise _error(errno.EACCES)
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        names: list[str] = self._locked(lambda: os.listdir(self._real(path)))
        return [".", "..", *names]

    def statfs(self, path: str) -> dict[str, int]:
        st = self._locked(lambda: os.statvfs(self.backing))
        keys = "f_bsize f_frsize f_blocks f_bfree f_bavail f_files f_ffree f_favail f_namemax"
        return {key: getattr(st, key) for key in keys.split()}

    def chmod(self, path: str, mode: int) -> int:
        self._locked(lambda: os.chmod(self._real(path), mode))
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        self._locked(lambda: os.lchown(self._real(path), uid, gid))
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            self._locked(lambda: os.utime(self._real(path)))
        else:
            self._locked(lambda: os.utime(self._real(path), ns=times))
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        self._locked(lambda: os.mkdir(self._real(path), mode))
        return 0

    def rmdir(self, path: str) -> int:
        self._locked(lambda: os.rmdir(self._real(path)))
        return 0

    def unlink(self, path: str) -> int:
        def run() -> None:
            os.unlink(self._real(path))
            self._pending.pop(path, None)

        self._locked(run)
        return 0

    def rename(self, old: str, new: str) -> int:
        def run() -> None:
            os.rename(self._real(old), self._real(new))
            self._pending.pop(new, None)
            for key in [k for k in self._pending if k == old or k.startswith(old + "/")]:
                self._pending[new + key[len(old) :]] = self._pending.pop(key)

        self._locked(run)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        def run() -> None:
            fd = os.open(self._real(path), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        self._locked(run)
        return 0

    # -- files ----------------------------------------------------------------

    def create(self, path: str, mode: int, flags: int) -> int:
        def run() -> int:
            os.close(os.open(self._real(path), os.O_CREAT | os.O_WRONLY, mode))
            self._pending.pop(path, None)
            return self._handle()

        handle: int = self._locked(run)
        return handle

    def open(self, path: str, flags: int) -> int:
        def run() -> int:
            if not os.path.exists(self._real(path)):
                raise _error(errno.ENOENT)
            return self._handle()

        handle: int = self._locked(run)
        return handle

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        def run() -> bytes:
            pending = self._pending.get(path)
            if pending is not None:
                return bytes(pending.image[offset : offset + size])
            fd = os.open(self._real(path), os.O_RDONLY)
            try:
                return os.pread(fd, size, offset)
            finally:
                os.close(fd)

        data: bytes = self._locked(run)
        return data

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        def run() -> int:
            pending = self._load(path)
            image = pending.image
            if offset > len(image):
                image.extend(bytes(offset - len(image)))
            image[offset : offset + len(data)] = data
            pending.ops.append(("w", offset, bytes(data)))
            return len(data)

        written: int = self._locked(run)
        return written

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        def run() -> None:
            pending = self._load(path)
            if length < len(pending.image):
                del pending.image[length:]
            else:
                pending.image.extend(bytes(length - len(pending.image)))
            pending.ops.append(("t", length, b""))

        self._locked(run)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        def run() -> None:
            pending = self._pending.pop(path, None)
            if pending is not None:
                _apply(self._real(path), pending.ops)
            else:  # nothing held back; still make the backing file durable
                fd = os.open(self._real(path), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

        self._locked(run)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0  # close() makes nothing durable

    def release(self, path: str, fh: int) -> int:
        return 0

    # -- control --------------------------------------------------------------

    def unsynced(self) -> dict[str, int]:
        """The number of unsynced operations, by file (mount-relative path)."""
        with self._lock:
            return {path: len(p.ops) for path, p in sorted(self._pending.items()) if p.ops}

    def power_cut(self, *, tear: bool, reorder: bool, seed: int) -> dict[str, Any]:
        """Drop every unsynced operation and fail everything after. With
        ``reorder``, first apply a seed-chosen subset of all unsynced
        operations in a seed-chosen order; with ``tear``, then apply a prefix
        of the last unsynced write of a seed-chosen file, cut at a sector
        boundary strictly inside the write (nothing if it spans none).
        Returns what was dropped and what was applied."""
        with self._lock:
            self._check()
            self._cut = True
            rng = random.Random(seed)
            paths = sorted(self._pending)
            every = [(path, op) for path in paths for op in self._pending[path].ops]
            applied: list[tuple[str, Op]] = []
            if reorder and every:
                applied += rng.sample(every, rng.randint(0, len(every)))
            if tear:
                writers = [p for p in paths if any(op[0] == "w" for op in self._pending[p].ops)]
                if writers:
                    path = rng.choice(writers)
                    _, offset, data = [op for op in self._pending[path].ops if op[0] == "w"][-1]
                    first = (offset // SECTOR_BYTES + 1) * SECTOR_BYTES
                    cuts = range(first, offset + len(data), SECTOR_BYTES)
                    if cuts:
                        cut = rng.choice(cuts)
                        applied.append((path, ("w", offset, data[: cut - offset])))
            for path, op in applied:
                _apply(self._real(path), [op])
            self._pending.clear()
            return {
                "seed": seed,
                "dropped": len(every),
                "applied": [
                    [path, kind, where, len(data)] for path, (kind, where, data) in applied
                ],
            }


# -- the server process --------------------------------------------------------


def _answer(ops: LazyOperations, request: dict[str, Any]) -> dict[str, Any]:
    command = request.get("op")
    if command == "ping":
        return {"ok": True, "unsynced": ops.unsynced()}
    if command == "cut":
        report = ops.power_cut(
            tear=bool(request.get("tear")),
            reorder=bool(request.get("reorder")),
            seed=int(request.get("seed", 0)),
        )
        return {"ok": True, **report}
    return {"ok": False, "error": f"unknown command {command!r}"}


def _control_loop(ops: LazyOperations, server: socket.socket) -> None:
    """Answer one JSON line per connection with one JSON line."""
    while True:
        conn, _ = server.accept()
        with conn:
            try:
                conn.settimeout(10.0)
                raw = b""
                while not raw.endswith(b"\n"):
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        break
                    raw += chunk
                reply = _answer(ops, json.loads(raw))
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
    mfusepy.FUSE(ops, mount, foreground=True, fsname="lazyfs")
    return 0
