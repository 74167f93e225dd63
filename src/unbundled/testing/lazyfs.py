"""A test filesystem that forgets what was not synced (Jepsen's LazyFS idea).

:class:`LazyFS` mounts a FUSE filesystem at ``mount`` over ``backing``, a
directory standing for the durable disk. Data written to a file (writes and
truncates) is held in memory, and served to reads, until that file is
fsynced (``fsync`` or ``fdatasync``); then it goes to the backing file.
:meth:`LazyFS.power_cut` discards everything not yet synced, optionally
tearing the last unsynced write of a seed-chosen file at a 512-byte sector
boundary (``tear=True``) or applying a seed-chosen subset of the unsynced
writes in a seed-chosen order (``reorder=True``); the same seed over the same
unsynced writes gives the same bytes, so a failure replays.

Namespace changes (create, unlink, rename, mkdir, rmdir) are held too, in
one ordered journal, and served to ``stat``, ``readdir`` and ``open`` at
once. The rule: ``fsyncdir`` of a directory (``fsync`` of a descriptor
opened on it) makes durable every pending change up to the last one in that
directory, in order, as a journaling filesystem's commit does; a rename
belongs to both its directories, so fsyncing either makes it durable. An
``fsync`` of a file makes its data durable, not its name: a new file whose
directory was not fsynced after its creation is gone after a power cut,
data and all (its synced data is held in memory until the entry is
durable). A power cut drops the pending changes; ``reorder=True`` applies a
seed-chosen prefix of them first (never a later change without an earlier
one). :meth:`LazyFS.unsynced_namespace` lists them. Attributes (chmod,
chown, times) of an entry already on disk are applied to it at once.

:meth:`LazyFS.remount` serves the backing directory again, as a reboot would::

    with LazyFS(tmp / "disk", tmp / "mnt", seed=7) as fs:
        run_writer(tmp / "mnt" / "x.db")   # then SIGKILL it
        fs.power_cut(tear=True)
        fs.remount()
        check(tmp / "mnt" / "x.db")

Known limits of this version:

* Hard links, symbolic links and special files are not supported (special
  files and symlinks already in the backing directory are not shown).
* Every name of the backing directory is loaded at mount, and a file with
  unsynced data (or synced data but no durable name) is held whole in
  memory; keep test trees and files small.
* Every writer using the mount must be dead (SIGKILL) before a power cut:
  after the cut every operation on the mount fails with ``EIO``, and a
  process still holding files open keeps the lazy unmount from finishing.
* "A write" is one write the filesystem receives: the kernel may split one
  ``write(2)`` into several (at page boundaries), and ``tear`` cuts the last.

The filesystem runs in its own process (``python -m unbundled.testing.lazyfs
serve BACKING MOUNT --control SOCKET``) and is driven over a Unix socket. It
needs ``/dev/fuse``, ``fusermount3`` (Debian's ``fuse3``) and ``mfusepy``:
:func:`fuse_unavailable` says which is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NoReturn

from ..errors import BackendError, Timeout, Unavailable, UsageError
from ._lazyfs_serve import recv_line, serve

__all__ = ["CutReport", "LazyFS", "fuse_unavailable", "main"]

MOUNT_TIMEOUT_S = 15.0
CONTROL_TIMEOUT_S = 30.0
ENABLE_HINT = (
    "install Debian's fuse3 (`apt-get install -y fuse3`, or `python scripts/services.py "
    "ensure` as root) and mfusepy (`pip install -e '.[dev]'`), with /dev/fuse present"
)


def fuse_unavailable() -> str | None:
    """Why a :class:`LazyFS` cannot be mounted here, or None if it can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    if importlib.util.find_spec("mfusepy") is None:
        return "the Python package mfusepy is not installed"
    return None


@dataclass(frozen=True)
class CutReport:
    """What a power cut did: the seed it used, how many unsynced data
    operations it dropped, and those it applied first (``(path, "w" or "t",
    offset or length, bytes written)``, in the order applied); how many
    pending namespace changes it dropped, and those it applied first
    (``(kind, path, ...)``, in order: a prefix of the pending ones)."""

    seed: int
    dropped: int
    applied: tuple[tuple[str, str, int, int], ...]
    namespace_dropped: int = 0
    namespace_applied: tuple[tuple[str, ...], ...] = ()


def _unmount(mount: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(mount)], check=False, capture_output=True)


class LazyFS:
    """A lazily-syncing FUSE mount of ``backing`` at ``mount``; see the module
    docstring. Mounted by :meth:`start` (or entering the ``with`` block),
    unmounted by :meth:`power_cut` or :meth:`close` (leaving the block), which
    both lose what was not synced. ``seed`` is the default seed of power cuts.

    Raises :class:`~unbundled.Unavailable` if FUSE is missing here,
    :class:`~unbundled.Timeout` if the mount does not appear in time, and
    :class:`~unbundled.BackendError` if the server fails (its stderr is in
    the message).
    """

    def __init__(
        self,
        backing: str | os.PathLike[str],
        mount: str | os.PathLike[str],
        *,
        seed: int = 0,
        timeout_s: float = MOUNT_TIMEOUT_S,
    ) -> None:
        self.backing = Path(backing).absolute()
        self.mount = Path(mount).absolute()
        self.seed = seed
        self.timeout_s = timeout_s
        self._dir = ""  # the control socket's, made per mount: a socket path has <108 bytes
        self.control = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------

    @property
    def mounted(self) -> bool:
        return self._proc is not None

    def start(self) -> None:
        """Mount and wait until the mount serves. A stale mount at ``mount``
        (from a run that died) is lazily unmounted first."""
        if self._proc is not None:
            raise UsageError("lazyfs is already mounted", mount=str(self.mount))
        reason = fuse_unavailable()
        if reason is not None:
            raise Unavailable(f"lazyfs cannot mount: {reason}; {ENABLE_HINT}")
        self.backing.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.mount):
            _unmount(self.mount)
        self.mount.mkdir(parents=True, exist_ok=True)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _reap()
        self._dir = tempfile.mkdtemp(prefix="lazyfs-")  # removed in _reap()
        self.control = os.path.join(self._dir, "control.sock")
        src = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
        }
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "unbundled.testing.lazyfs",
                "serve",
                str(self.backing),
                str(self.mount),
                "--control",
                self.control,
                "--parent",
                str(os.getpid()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=env,
        )
        deadline = time.monotonic() + self.timeout_s
        while not (os.path.ismount(self.mount) and os.path.exists(self.control)):
            if self._proc.poll() is not None:
                self._fail("the lazyfs server exited while mounting")
            if time.monotonic() > deadline:
                self._reap()
                raise Timeout(f"lazyfs did not mount {self.mount} in {self.timeout_s} s")
            time.sleep(0.01)
        self._request({"op": "ping"})

    def remount(self) -> None:
        """Serve ``backing`` again after a power cut (a reboot)."""
        self.start()

    def close(self) -> None:
        """Unmount, losing what was not synced, and stop the server. Idempotent."""
        if self._proc is None:
            return
        _unmount(self.mount)
        self._reap()

    def __enter__(self) -> LazyFS:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- control --------------------------------------------------------------

    def unsynced(self) -> dict[str, int]:
        """Unsynced operations (writes, truncates) by mount-relative path."""
        reply = self._request({"op": "ping"})
        return {str(k): int(v) for k, v in reply["unsynced"].items()}

    def unsynced_namespace(self) -> list[tuple[str, ...]]:
        """Pending namespace changes in order, as ``(kind, path, ...)``:
        ``("create", "/a")``, ``("rename", "/a", "/b")``, ``("mkdir", ...)``,
        ``("unlink", ...)``, ``("rmdir", ...)``. A change is durable once its
        directory is fsynced (see the module docstring)."""
        reply = self._request({"op": "ping"})
        return [tuple(str(part) for part in change) for change in reply["namespace"]]

    def power_cut(
        self, *, tear: bool = False, reorder: bool = False, seed: int | None = None
    ) -> CutReport:
        """Drop every unsynced write (``tear``/``reorder``: apply a seeded part
        first, see the module docstring), then unmount and stop the server.
        Kill (SIGKILL) every writer on the mount first. ``seed`` defaults to
        the one given at construction."""
        chosen = self.seed if seed is None else seed
        reply = self._request({"op": "cut", "tear": tear, "reorder": reorder, "seed": chosen})
        self.close()
        return CutReport(
            seed=int(reply["seed"]),
            dropped=int(reply["dropped"]),
            applied=tuple((str(p), str(k), int(w), int(n)) for p, k, w, n in reply["applied"]),
            namespace_dropped=int(reply["namespace_dropped"]),
            namespace_applied=tuple(
                tuple(str(part) for part in change) for change in reply["namespace_applied"]
            ),
        )

    def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._proc is None:
            raise UsageError("lazyfs is not mounted; call start() or remount()")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(CONTROL_TIMEOUT_S)
                conn.connect(self.control)
                conn.sendall(json.dumps(request).encode() + b"\n")
                raw = recv_line(conn)
        except TimeoutError as e:
            raise Timeout(f"lazyfs did not answer {request['op']!r}") from e
        except OSError as e:
            self._fail(f"lazyfs control failed ({e})")
        if not raw:
            self._fail(f"lazyfs closed the control socket on {request['op']!r}")
        reply: dict[str, Any] = json.loads(raw)
        if not reply.get("ok"):
            raise BackendError(f"lazyfs refused {request['op']!r}: {reply.get('error')}")
        return reply

    def _fail(self, what: str) -> NoReturn:
        stderr = self._reap()
        raise BackendError(f"{what}; server stderr:\n{stderr}")

    def _reap(self) -> str:
        """Stop the server (SIGKILL after a grace period) and return its stderr."""
        proc, self._proc = self._proc, None
        text = ""
        if proc is not None:
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                _unmount(self.mount)
        if self._stderr is not None:
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace")
            self._stderr.close()
            self._stderr = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unbundled.testing.lazyfs")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="mount BACKING at MOUNT and serve until unmounted")
    run.add_argument("backing")
    run.add_argument("mount")
    run.add_argument("--control", required=True, help="Unix socket for power-cut commands")
    run.add_argument("--parent", type=int, default=0, help="exit (and unmount) when it dies")
    args = parser.parse_args(argv)
    return serve(args.backing, args.mount, args.control, args.parent or os.getppid())


if __name__ == "__main__":
    sys.exit(main())
