"""A private PostgreSQL server for tests that stop, crash and restart it.

The machine's shared PostgreSQL must never be restarted by a test (others
use it). :class:`PostgresInstance` makes a server of its own: ``initdb``
into a fresh temporary directory (trust authentication), then the
``postgres`` server itself on a free port of ``127.0.0.1`` (and any other
``listen`` addresses, say a veth address that a network namespace reaches),
as a child process of the test. Then::

    with PostgresInstance() as pg:
        store = EventStore.open(pg.url + "?schema=app")
        ...                              # appends in other threads
        pg.restart("fast")               # or "immediate": a crash, then recovery
        pg.stop("immediate"); time.sleep(2); pg.start()   # a longer outage

Stop modes are PostgreSQL's (``pg_ctl stop -m``): ``"smart"`` waits for
clients to leave, ``"fast"`` disconnects them and checkpoints, ``"immediate"``
aborts every process without a checkpoint, so the next start runs crash
recovery (committed transactions survive: ``fsync`` stays on).

The server runs as the child of the thread that started it (not daemonized as
``pg_ctl start`` does), and the kernel SIGKILLs it when that thread ends
(``PR_SET_PDEATHSIG``, through util-linux's ``setpriv``), so a test runner
killed with SIGKILL leaves no server behind. PostgreSQL refuses to run as
root: run as root, the instance runs as ``user`` (``postgres`` by default) and
gives it the directory. The binaries are those of ``bin_dir``, else the newest
under ``/usr/lib/postgresql``, else ``initdb`` on ``PATH``;
:func:`postgres_unavailable` says why none fits. Stdlib only, like the other
harnesses here."""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from ..errors import Timeout, Unavailable, UsageError
from ._procs import die_with_parent, free_ports

__all__ = ["PostgresInstance", "StopMode", "postgres_bin_dir", "postgres_unavailable"]

StopMode = Literal["smart", "fast", "immediate"]
_SIGNALS: dict[str, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
# (bin_dir, user) -> a data directory fresh from initdb, copied per instance.
_TEMPLATES: dict[tuple[str, str, str | None], Path] = {}


def postgres_bin_dir() -> Path | None:
    """The directory of ``initdb`` and ``postgres``: the newest Debian
    version's, else the one ``initdb`` on ``PATH`` is in; ``None`` if none."""
    versions = Path("/usr/lib/postgresql")
    if versions.is_dir():
        found = sorted(
            (p for p in versions.iterdir() if (p / "bin" / "initdb").exists()),
            key=lambda p: int(p.name) if p.name.isdigit() else -1,
        )
        if found:
            return found[-1] / "bin"
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def postgres_unavailable(user: str = "postgres") -> str | None:
    """Why a private instance cannot run here (``None``: it can)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        return "no PostgreSQL binaries (initdb, postgres); apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"running as root needs a user {user!r} to run PostgreSQL as"
    return None


class PostgresInstance:
    """A PostgreSQL server of the test's own, in a temporary directory.

    ``listen``: the addresses it listens on (the first is the one in
    :attr:`url`); ``port``: a free one if ``None``; ``settings``: extra
    ``postgresql.conf`` lines (``{"wal_level": "logical"}``); ``parent``: where
    its temporary directory goes (``/dev/shm`` makes it fast, and a process
    crash still keeps what was committed; the system's temporary directory
    if ``None``; the server's user must be able to reach it). Raises
    ``Unavailable`` if it cannot be made or does not start, ``Timeout`` if it
    does not accept connections within ``START_TIMEOUT_S``.
    """

    def __init__(
        self,
        *,
        listen: tuple[str, ...] = ("127.0.0.1",),
        port: int | None = None,
        user: str = "postgres",
        bin_dir: Path | str | None = None,
        settings: dict[str, str] | None = None,
        parent: Path | str | None = None,
    ) -> None:
        if not listen:
            raise UsageError("listen on at least one address")
        found = Path(bin_dir) if bin_dir is not None else postgres_bin_dir()
        if found is None:
            raise Unavailable("no PostgreSQL binaries (initdb, postgres) found")
        self.bin_dir = found
        self.listen = tuple(listen)
        self.host = self.listen[0]
        self.port = port or free_ports(1, self.host)[0]
        self.settings = dict(settings or {})
        self.as_root = os.geteuid() == 0
        self.user = user if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        # mkdtemp's directory is 0700; the server's user gets it (its parent,
        # /tmp, is open to everyone, which a pytest tmp_path is not).
        self.parent = None if parent is None else str(parent)
        self.root = Path(tempfile.mkdtemp(prefix="pginstance-", dir=self.parent))
        self.data = self.root / "data"
        self.log_path = self.root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        try:
            if self.as_root:
                entry = pwd.getpwnam(self.user)
                os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._initdb()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def url(self) -> str:
        """``postgresql://USER@HOST:PORT/postgres`` (trust: no password)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/postgres"

    def url_at(self, host: str, database: str = "postgres") -> str:
        """The URL through another of the ``listen`` addresses."""
        return f"postgresql://{self.user}@{host}:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"PostgresInstance({self.host}:{self.port}, {state}, {self.root})"

    # --- life cycle -------------------------------------------------------------

    def __enter__(self) -> PostgresInstance:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the server (after a stop: crash recovery if it was
        ``immediate``) and wait until it accepts connections."""
        if self.running:
            raise UsageError(f"{self!r} is already running")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                die_with_parent([str(self.bin_dir / "postgres"), "-D", str(self.data)]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                **self._as_user(),
            )
        self.starts += 1
        self._wait_ready(timeout_s)

    def stop(self, mode: StopMode = "fast", timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the server the way ``pg_ctl stop -m MODE`` does. Idempotent."""
        if mode not in _SIGNALS:
            raise UsageError(f"mode must be smart, fast or immediate, got {mode!r}", mode=mode)
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(_SIGNALS[mode])
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)
            raise Timeout(f"{self!r} did not stop ({mode}) within {timeout_s} s") from None

    def restart(self, mode: StopMode = "fast", *, down_s: float = 0.0) -> None:
        """Stop (``mode``), stay down ``down_s`` seconds, start again."""
        self.stop(mode)
        if down_s > 0:
            time.sleep(down_s)
        self.start()

    def close(self) -> None:
        """Stop (immediate: nothing left to keep) and remove the directory."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- inside -------------------------------------------------------------------

    def _as_user(self) -> dict[str, Any]:
        """``subprocess`` arguments that run a command as the server's user
        (set between fork and exec by CPython's C code: thread-safe)."""
        if not self.as_root:
            return {}
        entry = pwd.getpwnam(self.user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        """A fresh cluster: a copy of this process's template (``initdb``
        takes seconds, a copy milliseconds), plus this instance's settings."""
        key = (str(self.bin_dir), self.user, self.parent)
        template = _TEMPLATES.get(key)
        if template is None or not template.is_dir():
            made = tempfile.mkdtemp(prefix="pginstance-template-", dir=self.parent)
            template = Path(made) / "data"
            try:
                self._run_initdb(template)
            except BaseException:
                shutil.rmtree(made, ignore_errors=True)
                raise
            _TEMPLATES[key] = template
            atexit.register(shutil.rmtree, template.parent, True)
        # cp as the server's user: the copy is theirs with no chown walk.
        subprocess.run(
            ["cp", "-a", str(template), str(self.data)],
            check=True,
            **self._as_user(),
        )
        self._configure()

    def _run_initdb(self, data: Path) -> None:
        if self.as_root:
            entry = pwd.getpwnam(self.user)
            os.chown(data.parent, entry.pw_uid, entry.pw_gid)
        command = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            self.user,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",  # the directory is thrown away; the server itself syncs
            "--wal-segsize=1",  # 1 MiB WAL files, not 16: a copy per instance is cheap
        ]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            cwd=data.parent,
            **self._as_user(),
        )
        if done.returncode != 0:
            raise Unavailable(f"initdb failed ({done.returncode}): {done.stderr.strip()[-800:]}")

    def _configure(self) -> None:
        conf = {
            "listen_addresses": "'" + ",".join(self.listen) + "'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "50",
            "shared_buffers": "32MB",
            "fsync": "on",
            "logging_collector": "off",
            # Segments in the data directory, removed with it (posix ones in
            # /dev/shm would outlive an immediate stop).
            "dynamic_shared_memory_type": "mmap",
            **self.settings,
        }
        with open(self.data / "postgresql.conf", "a") as file:
            file.write("\n# unbundled.testing.pginstance\n")
            file.writelines(f"{key} = {value}\n" for key, value in conf.items())
        with open(self.data / "pg_hba.conf", "a") as file:
            file.write("host all all 0.0.0.0/0 trust\n")

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.running:
                raise Unavailable(f"PostgreSQL exited at start:\n{self.log_tail()}")
            ready = subprocess.run(
                [
                    str(self.bin_dir / "pg_isready"),
                    "-q",
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-U",
                    self.user,
                    "-d",
                    "postgres",
                ],
                check=False,
                timeout=10,
            )
            if ready.returncode == 0:
                return
            if time.monotonic() >= deadline:
                raise Timeout(f"{self!r} not ready within {timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.05)
