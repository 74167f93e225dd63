"""A worker on another "host" (a network namespace) is cut off from its
database and let back: its calls fail with a typed, retryable error within
seconds instead of hanging, and succeed again once it is back.

The database is a private PostgreSQL server (``unbundled.testing.pginstance``)
listening on loopback and on the host end of the namespace's veth. The
worker writes a heartbeat to the key-value store every 0.1 s. The URL
shortens libpq's keepalives and ``tcp_user_timeout`` to a second or two
(the library's own are 40 s: ``backends/postgres/_schema.py``) so that the
test is quick.
"""

from __future__ import annotations

import sys

import pytest

from tests.cluster._workers import Worker
from tests.cluster.conftest import shm_or_tmp
from unbundled.consistency import KV
from unbundled.testing.netns import NetNamespaces
from unbundled.testing.pginstance import PostgresInstance

pytestmark = pytest.mark.postgres

FAST_FAILURE = (
    "tcp_user_timeout=2000&keepalives_idle=1&keepalives_interval=1&keepalives_count=2"
    "&connect_timeout=2"
)
DETECT_S_MAX = 10.0  # from the cut to the worker's first error


def test_a_worker_cut_off_gets_typed_errors_then_recovers(nets: NetNamespaces) -> None:
    ns = nets.add("worker")
    with PostgresInstance(listen=("127.0.0.1", ns.host_addr), parent=shm_or_tmp()) as pg:
        # Another host indeed: the database's loopback address is not reachable from there.
        probe = nets.run(
            ns,
            [
                sys.executable,
                "-c",
                f"import socket; socket.create_connection(('127.0.0.1', {pg.port}), 2)",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert probe.returncode != 0 and "ConnectionRefused" in probe.stderr, probe

        url = f"{pg.url_at(ns.host_addr)}?schema=netns&{FAST_FAILURE}"
        worker = Worker(nets, ns, "tests.cluster._nsworker", url)
        for _ in range(3):
            assert worker.wait_for(lambda r: "ok" in r, 30), worker.stderr()

        nets.cut(ns)
        worker.drain(0.05)  # what was in flight before the cut
        error = worker.wait_for(lambda r: "error" in r, DETECT_S_MAX + 5)
        assert error is not None, f"no error while cut off: {worker.seen[-5:]}; {worker.stderr()}"
        assert error["error"] in ("Unavailable", "Timeout") and error["retryable"], error
        assert error["s"] < DETECT_S_MAX, error  # the call did not hang
        again = worker.wait_for(lambda r: True, DETECT_S_MAX)  # still failing, still typed
        assert again is not None and again.get("error") in ("Unavailable", "Timeout"), again

        nets.restore(ns)
        back = worker.wait_for(lambda r: "ok" in r, 30)
        assert back is not None, f"not back after restore: {worker.seen[-5:]}"

        with KV.open(f"{pg.url}?schema=netns") as kv:  # the host sees its writes
            beat = kv.read("beat")
            assert beat is not None and int(beat.value) >= back["ok"]
