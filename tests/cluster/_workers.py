"""Worker processes in network namespaces that report JSON lines on stdout."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unbundled.testing.netns import Namespace, NetNamespaces

ROOT = Path(__file__).resolve().parents[2]

Report = dict[str, Any]


class Worker:
    """``python -m module *args`` inside ``ns``; its reports arrive in a queue
    (a reader thread), so the test waits for one with a deadline."""

    def __init__(self, nets: NetNamespaces, ns: Namespace, module: str, *args: str) -> None:
        self.ns = ns
        self.process = nets.popen(
            ns,
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.reports: queue.Queue[Report] = queue.Queue()
        self.seen: list[Report] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.reports.put(json.loads(line))

    def wait_for(self, matches: Callable[[Report], bool], timeout_s: float) -> Report | None:
        """The first report from now on that ``matches`` within ``timeout_s``, else None."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                report = self.reports.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(report)
            if matches(report):
                return report
        return None

    def drain(self, quiet_s: float) -> list[Report]:
        """Every report that arrives until ``quiet_s`` passes without one."""
        got: list[Report] = []
        while True:
            try:
                got.append(self.reports.get(timeout=quiet_s))
            except queue.Empty:
                self.seen += got
                return got

    def stderr(self) -> str:
        """What the worker wrote to stderr (after it was killed)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        assert self.process.stderr is not None
        text: str = self.process.stderr.read()
        return text[-3000:]
