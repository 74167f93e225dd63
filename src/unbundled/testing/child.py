"""A child Python process for tests that kill and watch processes.

:class:`ChildProcess` starts ``python <args>``, reads its stdout as lines
(always with a deadline, never blocking a test forever), sends it lines and
signals, and kills and reaps it when its ``with`` block ends. The crash
tests, the demos and the benchmarks of power loss use it.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import IO


class ChildProcess:
    """A child Python process whose stdout is read as lines, always with a deadline.

    Use it as a context manager: leaving the block kills (SIGKILL) and reaps the
    child whatever happened, so a failing test leaves no process behind.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        stdin: bool = False,
    ) -> None:
        # A file, not a pipe: nobody reads stderr while the child runs. Closed in close().
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=cwd,
            env=env,
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._buffer = b""
        self.eof = False
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_lines(self, timeout_s: float) -> list[str]:
        """Complete lines that arrive within ``timeout_s`` (returns at the first
        chunk, at EOF, or when the time is up; ``[]`` if nothing came)."""
        if self.eof:
            return []
        ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout_s))
        if not ready:
            return []
        try:
            chunk = os.read(self._fd, 1 << 16)
        except BlockingIOError:
            return []
        if not chunk:
            self.eof = True
            return []
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line.decode() for line in lines]

    def wait_for(
        self, predicate: Callable[[str], bool], timeout_s: float, seen: list[str] | None = None
    ) -> str | None:
        """Read lines until one satisfies ``predicate`` (returned) or time runs
        out or the child closes stdout (``None``). Every line read goes to ``seen``."""
        deadline = time.monotonic() + timeout_s
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            for line in self.read_lines(remaining):
                if seen is not None:
                    seen.append(line)
                if predicate(line):
                    return line
        return None

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL (works on a stopped process too) and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def drain(self, timeout_s: float = 30.0) -> list[str]:
        """After the child exited: every complete line still in the pipe."""
        deadline = time.monotonic() + timeout_s
        lines: list[str] = []
        while not self.eof and time.monotonic() < deadline:
            lines.extend(self.read_lines(deadline - time.monotonic()))
        return lines

    def wait(self, timeout_s: float) -> int | None:
        """The exit status once the child exits within ``timeout_s``, else ``None``."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


__all__ = ["ChildProcess"]
