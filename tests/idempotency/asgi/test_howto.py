"""The HTTP how-to, run as a stranger would: its ``app.py`` written to a
directory, served by a real uvicorn process (the store opened in the
lifespan), its client blocks run against it, then SIGTERM: the server stops
cleanly and the store holds the client-scoped records."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from unbundled.idempotency import Idempotency

PAGE = Path(__file__).resolve().parents[3] / "docs" / "how-to" / "idempotency-http.md"
APP = re.compile(r"^```python\n# app\.py\n(.*?)^```", re.MULTILINE | re.DOTALL)
CLIENT = re.compile(r"^```py\n(.*?)^```", re.MULTILINE | re.DOTALL)
RUNNING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
WAIT_S = 60.0  # generous deadline for the server to react; never a timing assertion


class Server:
    """uvicorn in a subprocess; its log collected by a thread, lines announced."""

    def __init__(self, directory: Path, store: Path) -> None:
        env = {**os.environ, "IDEMPOTENCY_STORE": str(store)}
        command = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1"]
        self.process = subprocess.Popen(
            [*command, "--port", "0"],
            cwd=directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.log: list[str] = []
        self.port: int | None = None
        self.started = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)
            found = RUNNING.search(line)
            if found:
                self.port = int(found.group(1))
                self.started.set()
        self.started.set()  # the process ended: whoever waits must look

    def stop(self, signum: int) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(WAIT_S)
        self.reader.join(WAIT_S)
        return code


def test_the_howto_runs_under_uvicorn(tmp_path: Path) -> None:
    text = PAGE.read_text()
    (app_source,) = APP.findall(text)
    (tmp_path / "app.py").write_text(app_source)
    store = tmp_path / "idempotency.db"
    server = Server(tmp_path, store)
    try:
        assert server.started.wait(WAIT_S) and server.port, "".join(server.log)
        assert store.exists()  # opened by the lifespan, at startup
        namespace: dict[str, object] = {"__name__": "__docs__"}
        for number, block in enumerate(CLIENT.findall(text), 1):
            source = block.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
            exec(compile(source, f"{PAGE.name}:client{number}", "exec"), namespace)
    finally:
        code = server.stop(signal.SIGTERM)
    log = "".join(server.log)
    # uvicorn re-raises the signal once it has shut down gracefully.
    assert code in (0, -signal.SIGTERM), log
    assert "Application shutdown complete" in log and "Traceback" not in log
    with Idempotency.open(str(store)) as idem:
        keys = [record.key for record in idem.records()]
    # One key each for Ada and Bob, under their principals' namespaces; the
    # refused requests stored nothing.
    assert len(keys) == 2 and len({key.split("/")[0] for key in keys}) == 2, keys
    assert all(key.startswith("u:") for key in keys), keys


def test_a_lifespan_without_the_store_stops_the_server(tmp_path: Path) -> None:
    (app_source,) = APP.findall(PAGE.read_text())
    broken = app_source.replace('yield {"idempotency": idem}', "yield {}")
    assert broken != app_source
    (tmp_path / "app.py").write_text(broken)
    server = Server(tmp_path, tmp_path / "idempotency.db")
    try:
        code = server.process.wait(WAIT_S)
    finally:
        server.stop(signal.SIGKILL)
    log = "".join(server.log)
    assert code != 0 and server.port is None, log
    assert "holds no AsyncIdempotency under 'idempotency'" in log
