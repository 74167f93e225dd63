"""The server side of :mod:`unbundled.testing.lazyfs`: FUSE operations that
hold every file's data writes in memory until that file is fsynced, every
namespace change (create, unlink, rename, mkdir, rmdir) until its directory
is fsynced; ``_lazyfs_serve`` mounts them and adds the control socket that
orders a power cut.

The mount serves an in-memory view: a :class:`_Node` (an inode) per path,
loaded from the backing directory at mount. A node holds its unsynced data
operations in order (``("w", offset, data)`` writes and ``("t", length,
b"")`` truncates), an image of the file as the program sees it, served to
reads, and ``home``: the backing path that holds its durable data (``None``
while its directory entry is not durable: its synced data is then held in
``synced``). ``fsync`` or ``fdatasync`` of a file applies its operations in
order to its durable data and fsyncs it.

Namespace changes go to one ordered journal, each tagged with the
directories whose entries it changes (two for a rename across directories).
``fsyncdir(d)`` applies to the backing directory, in order, every pending
change up to the last one tagged ``d`` (the prefix a journaling filesystem's
commit makes durable; a change is never durable before an earlier one). A
power cut drops the pending changes (or, when asked, applies a seed-chosen
prefix first) and the unsynced data (or a seed-chosen torn or reordered
part of it).
"""

from __future__ import annotations

import errno
import os
import posixpath
import random
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SECTOR_BYTES = 512

Op = tuple[str, int, bytes]  # ("w", offset, data) or ("t", length, b"")


@dataclass(eq=False)
class _Node:
    """One file or directory of the view: its attributes, its unsynced data
    operations and the file as they make it (``image``; ``None``: the same
    as the durable data), and where its durable data is."""

    ino: int
    mode: int
    home: str | None  # the backing path of its durable entry, if it has one
    image: bytearray | None = None
    ops: list[Op] = field(default_factory=list)
    synced: bytearray = field(default_factory=bytearray)  # durable data while home is None
    uid: int = 0
    gid: int = 0
    times: list[int] = field(default_factory=lambda: [time.time_ns()] * 3)  # a, m, c

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


@dataclass
class _Change:
    """A pending namespace change: ``kind`` (create, mkdir, unlink, rmdir,
    rename), its path(s), the directories it changes, and the node it makes
    (create, mkdir)."""

    kind: str
    paths: tuple[str, ...]
    node: _Node | None = None

    @property
    def dirs(self) -> set[str]:
        return {posixpath.dirname(p) for p in self.paths}


def _error(code: int) -> OSError:
    """The error FUSE turns into ``-code`` for the caller (mfusepy's
    ``FuseOSError`` is an ``OSError`` with that errno; a plain one works too)."""
    return OSError(code, os.strerror(code))


def _apply(real: str, ops: list[Op]) -> None:
    """Apply ``ops`` in order to the backing file ``real`` and fsync it."""
    fd = os.open(real, os.O_WRONLY)
    try:
        for kind, where, data in ops:
            if kind == "w":
                os.pwrite(fd, data, where)
            else:
                os.ftruncate(fd, where)
        os.fsync(fd)
    finally:
        os.close(fd)


def _apply_image(image: bytearray, ops: list[Op]) -> None:
    """Apply ``ops`` in order to ``image``."""
    for kind, where, data in ops:
        if kind == "w":
            if where > len(image):
                image.extend(bytes(where - len(image)))
            image[where : where + len(data)] = data
        elif where < len(image):
            del image[where:]
        else:
            image.extend(bytes(where - len(image)))


class LazyOperations:
    """FUSE operations over ``backing``, the durable disk.

    Data (writes, truncates) is durable only once the file is fsynced;
    namespace changes (create, unlink, rename, mkdir, rmdir) only once their
    directory is fsynced (see the module docstring). A file fsynced but whose
    entry is not durable keeps its data only as long as the power: it
    vanishes on a cut unless its directory was fsynced after its creation.
    Attributes (chmod, chown, times) are kept in the view and applied to a
    durable entry at once. Hard links and symlinks are not supported.
    Locks are left to the kernel (FUSE keeps POSIX locks local to the mount).

    Every operation takes one lock; after :meth:`power_cut` every operation
    fails with ``EIO``, as a disk without power would.
    """

    use_ns = True  # mfusepy: times are integer nanoseconds

    def __init__(self, backing: str) -> None:
        self.backing = os.path.abspath(backing)
        self._lock = threading.Lock()
        self._inos = 0
        self._nodes: dict[str, _Node] = {}  # the view: path -> node
        self._homes: dict[str, _Node] = {}  # the durable entries: backing path -> node
        self._handles: dict[int, _Node] = {}
        self._last_handle = 0
        self._journal: list[_Change] = []
        self._cut = False
        self._scan()

    # -- helpers ------------------------------------------------------------

    def _real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _new_node(self, mode: int, home: str | None) -> _Node:
        self._inos += 1
        return _Node(ino=self._inos, mode=mode, home=home, uid=os.getuid(), gid=os.getgid())

    def _scan(self) -> None:
        """Load the backing directory's names and attributes into the view."""
        for top, dirs, files in os.walk(self.backing):
            for name in ["", *dirs, *files]:
                real = os.path.join(top, name) if name else top
                path = posixpath.normpath("/" + os.path.relpath(real, self.backing))
                st = os.lstat(real)
                if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                    continue
                if path in self._nodes:
                    continue
                node = self._new_node(st.st_mode, path)
                node.uid, node.gid = st.st_uid, st.st_gid
                node.times = [st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns]
                self._nodes[path] = node
                self._homes[path] = node

    def _check(self) -> None:
        if self._cut:
            raise _error(errno.EIO)

    def _handle(self, node: _Node) -> int:
        self._last_handle += 1
        self._handles[self._last_handle] = node
        return self._last_handle

    def _node(self, path: str | None, fh: int | None = None) -> _Node:
        if fh is not None and fh in self._handles:
            return self._handles[fh]
        node = self._nodes.get(path or "")
        if node is None:
            raise _error(errno.ENOENT)
        return node

    def _file(self, path: str | None, fh: int | None = None) -> _Node:
        node = self._node(path, fh)
        if node.is_dir:
            raise _error(errno.EISDIR)
        return node

    def _durable(self, node: _Node) -> bytearray:
        """The node's durable data."""
        if node.home is None:
            return node.synced
        with open(self._real(node.home), "rb") as f:
            return bytearray(f.read())

    def _image(self, node: _Node) -> bytearray:
        """The file as the program sees it, loaded on first use."""
        if node.image is None:
            node.image = self._durable(node)
        return node.image

    def _new_entry(self, path: str) -> None:
        """Check that ``path`` can be made: its parent is a directory of the
        view and it does not exist."""
        parent = self._nodes.get(posixpath.dirname(path))
        if parent is None:
            raise _error(errno.ENOENT)
        if not parent.is_dir:
            raise _error(errno.ENOTDIR)
        if path in self._nodes:
            raise _error(errno.EEXIST)

    def _children(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return [
            p[len(prefix) :]
            for p in self._nodes
            if p != path and p.startswith(prefix) and "/" not in p[len(prefix) :]
        ]

    def _locked(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            self._check()
            try:
                return fn()
            except OSError as e:
                raise _error(e.errno or errno.EIO) from e

    # -- applying namespace changes -------------------------------------------

    def _forget_home(self, home: str) -> None:
        """The durable entry ``home`` is about to go: its node keeps its
        durable data in memory (it may still be open)."""
        node = self._homes.pop(home, None)
        if node is not None and not node.is_dir:
            node.synced = self._durable(node)
        if node is not None:
            node.home = None

    def _commit(self, change: _Change) -> None:
        """Apply one namespace change to the backing directory."""
        kind, paths, node = change.kind, change.paths, change.node
        if kind == "mkdir":
            assert node is not None
            os.mkdir(self._real(paths[0]), stat.S_IMODE(node.mode))
        elif kind == "create":
            assert node is not None
            real = self._real(paths[0])
            fd = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IMODE(node.mode))
            try:
                os.write(fd, bytes(node.synced))
                os.fsync(fd)
            finally:
                os.close(fd)
            node.synced = bytearray()
        elif kind == "unlink":
            self._forget_home(paths[0])
            os.unlink(self._real(paths[0]))
        elif kind == "rmdir":
            self._forget_home(paths[0])
            os.rmdir(self._real(paths[0]))
        else:  # rename
            old, new = paths
            if new in self._homes and self._homes[new] is not self._homes.get(old):
                self._forget_home(new)
            os.rename(self._real(old), self._real(new))
            for key in [k for k in self._homes if k == old or k.startswith(old + "/")]:
                moved = self._homes.pop(key)
                moved.home = new + key[len(old) :]
                self._homes[moved.home] = moved
            return
        if node is not None:
            node.home = paths[0]
            self._homes[paths[0]] = node

    def _commit_prefix(self, count: int) -> list[_Change]:
        """Apply the first ``count`` pending namespace changes, in order."""
        done, self._journal = self._journal[:count], self._journal[count:]
        for change in done:
            self._commit(change)
        return done

    # -- metadata -------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            node = self._node(path, fh)
            if node.is_dir:
                size = 4096
            elif node.image is not None:
                size = len(node.image)
            elif node.home is not None:
                size = os.stat(self._real(node.home)).st_size
            else:
                size = len(node.synced)
            return {
                "st_mode": node.mode,
                "st_ino": node.ino,
                "st_nlink": 2 if node.is_dir else 1,
                "st_uid": node.uid,
                "st_gid": node.gid,
                "st_size": size,
                "st_atime": node.times[0],
                "st_mtime": node.times[1],
                "st_ctime": node.times[2],
            }

        result: dict[str, Any] = self._locked(run)
        return result

    def access(self, path: str, amode: int) -> int:
        self._locked(lambda: self._node(path))
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        def run() -> list[str]:
            if not self._node(path).is_dir:
                raise _error(errno.ENOTDIR)
            return sorted(self._children(path))

        names: list[str] = self._locked(run)
        return [".", "..", *names]

    def statfs(self, path: str) -> dict[str, int]:
        st = self._locked(lambda: os.statvfs(self.backing))
        keys = "f_bsize f_frsize f_blocks f_bfree f_bavail f_files f_ffree f_favail f_namemax"
        return {key: getattr(st, key) for key in keys.split()}

    def _attrs(
        self, path: str, change: Callable[[_Node], None], durable: Callable[[str], None]
    ) -> int:
        def run() -> None:
            node = self._node(path)
            change(node)
            node.times[2] = time.time_ns()
            if node.home is not None:
                durable(self._real(node.home))

        self._locked(run)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        def change(node: _Node) -> None:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)

        return self._attrs(path, change, lambda real: os.chmod(real, stat.S_IMODE(mode)))

    def chown(self, path: str, uid: int, gid: int) -> int:
        def change(node: _Node) -> None:
            node.uid = node.uid if uid == -1 else uid
            node.gid = node.gid if gid == -1 else gid

        return self._attrs(path, change, lambda real: os.lchown(real, uid, gid))

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        now = time.time_ns()
        atime, mtime = times if times is not None else (now, now)

        def change(node: _Node) -> None:
            node.times[0], node.times[1] = atime, mtime

        return self._attrs(path, change, lambda real: os.utime(real, ns=(atime, mtime)))

    def mkdir(self, path: str, mode: int) -> int:
        def run() -> None:
            self._new_entry(path)
            node = self._new_node(stat.S_IFDIR | stat.S_IMODE(mode), None)
            self._nodes[path] = node
            self._journal.append(_Change("mkdir", (path,), node))

        self._locked(run)
        return 0

    def rmdir(self, path: str) -> int:
        def run() -> None:
            node = self._node(path)
            if not node.is_dir:
                raise _error(errno.ENOTDIR)
            if path == "/":
                raise _error(errno.EBUSY)
            if self._children(path):
                raise _error(errno.ENOTEMPTY)
            del self._nodes[path]
            self._journal.append(_Change("rmdir", (path,)))

        self._locked(run)
        return 0

    def unlink(self, path: str) -> int:
        def run() -> None:
            self._file(path)
            del self._nodes[path]
            self._journal.append(_Change("unlink", (path,)))

        self._locked(run)
        return 0

    def rename(self, old: str, new: str) -> int:
        def run() -> None:
            node = self._node(old)
            if old == new:
                return
            if new.startswith(old + "/"):
                raise _error(errno.EINVAL)
            target = self._nodes.get(new)
            if target is None:
                self._new_entry(new)
            elif node.is_dir and not target.is_dir:
                raise _error(errno.ENOTDIR)
            elif target.is_dir and not node.is_dir:
                raise _error(errno.EISDIR)
            elif target.is_dir and self._children(new):
                raise _error(errno.ENOTEMPTY)
            for key in [k for k in self._nodes if k == old or k.startswith(old + "/")]:
                self._nodes[new + key[len(old) :]] = self._nodes.pop(key)
            node.times[2] = time.time_ns()
            self._journal.append(_Change("rename", (old, new)))

        self._locked(run)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        def run() -> None:
            last = max((i for i, c in enumerate(self._journal) if path in c.dirs), default=-1)
            self._commit_prefix(last + 1)

        self._locked(run)
        return 0

    # -- files ----------------------------------------------------------------

    def create(self, path: str, mode: int, flags: int) -> int:
        def run() -> int:
            existing = self._nodes.get(path)
            if existing is not None and not existing.is_dir:
                return self._handle(existing)
            self._new_entry(path)
            node = self._new_node(stat.S_IFREG | stat.S_IMODE(mode), None)
            node.image = bytearray()
            self._nodes[path] = node
            self._journal.append(_Change("create", (path,), node))
            return self._handle(node)

        handle: int = self._locked(run)
        return handle

    def open(self, path: str, flags: int) -> int:
        handle: int = self._locked(lambda: self._handle(self._file(path)))
        return handle

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        def run() -> bytes:
            node = self._file(path, fh)
            if node.image is None and node.home is not None:
                fd = os.open(self._real(node.home), os.O_RDONLY)
                try:
                    return os.pread(fd, size, offset)
                finally:
                    os.close(fd)
            return bytes(self._image(node)[offset : offset + size])

        data: bytes = self._locked(run)
        return data

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        def run() -> int:
            node = self._file(path, fh)
            op: Op = ("w", offset, bytes(data))
            _apply_image(self._image(node), [op])
            node.ops.append(op)
            node.times[1] = node.times[2] = time.time_ns()
            return len(data)

        written: int = self._locked(run)
        return written

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        def run() -> None:
            node = self._file(path, fh)
            op: Op = ("t", length, b"")
            _apply_image(self._image(node), [op])
            node.ops.append(op)
            node.times[1] = node.times[2] = time.time_ns()

        self._locked(run)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        def run() -> None:
            node = self._file(path, fh)
            ops, node.ops = node.ops, []
            if node.home is None:
                _apply_image(node.synced, ops)
            else:
                _apply(self._real(node.home), ops)
                node.image = None  # reads go to the backing file again

        self._locked(run)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0  # close() makes nothing durable

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._handles.pop(fh, None)
        return 0

    # -- control --------------------------------------------------------------

    def unsynced(self) -> dict[str, int]:
        """The number of unsynced data operations, by file (mount-relative path)."""
        with self._lock:
            return {path: len(n.ops) for path, n in sorted(self._nodes.items()) if n.ops}

    def unsynced_namespace(self) -> list[list[str]]:
        """The pending namespace changes in order: ``[kind, path(s)...]``."""
        with self._lock:
            return [[c.kind, *c.paths] for c in self._journal]

    def power_cut(self, *, tear: bool, reorder: bool, seed: int) -> dict[str, Any]:
        """Drop every pending namespace change and unsynced data operation and
        fail everything after. With ``reorder``, first apply a seed-chosen
        prefix of the pending namespace changes, then a seed-chosen subset of
        the unsynced data operations of files with a durable entry, in a
        seed-chosen order; with ``tear``, then apply a prefix of the last
        unsynced write of a seed-chosen such file, cut at a sector boundary
        strictly inside the write (nothing if it spans none). Returns what was
        dropped and what was applied."""
        with self._lock:
            self._check()
            self._cut = True
            rng = random.Random(seed)
            changes = len(self._journal)
            committed: list[_Change] = []
            if reorder and changes:
                committed = self._commit_prefix(rng.randint(0, changes))
            nodes = {id(n): n for n in [*self._nodes.values(), *self._handles.values()]}
            dropped = sum(len(n.ops) for n in nodes.values())
            durable = sorted(
                ((n.home, n) for n in nodes.values() if n.home is not None and n.ops),
                key=lambda pair: pair[0],
            )
            every = [(home, op) for home, node in durable for op in node.ops]
            applied: list[tuple[str, Op]] = []
            if reorder and every:
                applied += rng.sample(every, rng.randint(0, len(every)))
            if tear:
                writers = [(h, n) for h, n in durable if any(op[0] == "w" for op in n.ops)]
                if writers:
                    home, node = rng.choice(writers)
                    _, offset, data = [op for op in node.ops if op[0] == "w"][-1]
                    first = (offset // SECTOR_BYTES + 1) * SECTOR_BYTES
                    cuts = range(first, offset + len(data), SECTOR_BYTES)
                    if cuts:
                        cut = rng.choice(cuts)
                        applied.append((home, ("w", offset, data[: cut - offset])))
            for home, op in applied:
                _apply(self._real(home), [op])
            self._nodes.clear()
            self._homes.clear()
            self._handles.clear()
            self._journal.clear()
            return {
                "seed": seed,
                "dropped": dropped,
                "applied": [
                    [home, kind, where, len(data)] for home, (kind, where, data) in applied
                ],
                "namespace_dropped": changes - len(committed),
                "namespace_applied": [[c.kind, *c.paths] for c in committed],
            }
