"""A lost acknowledgement on NATS (guarantee N2 of docs/explanation/log.md).

The server is frozen with SIGSTOP while appends are in flight: the client's
messages wait in the socket, no acknowledgement comes, and every append
times out. After SIGCONT the server stores what it was sent. A single
record without a producer has no message id, so the backend must not send
it again (a second copy would be stored); a batch's records have ids and
are sent again, and the stream keeps one copy of each. Either way the log
ends with each record exactly once.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import require
from unbundled import Log, Timeout, Unavailable
from unbundled.testing.natscluster import NatsCluster, nats_server_unavailable

SETTLE_S = 10.0
FREEZE_S = 10.0


def _freeze(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until every one of its threads is stopped.

    ``kill`` only starts a group stop: one thread is woken to begin it, and
    on a loaded machine it can wait for a CPU while the server's other
    threads still read and acknowledge (CI once saw an append acknowledged
    after the kill returned)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + FREEZE_S
    tasks = Path(f"/proc/{pid}/task")
    while True:
        states = []
        for task in tasks.iterdir():
            try:
                # The state follows the name in parentheses, which may hold spaces.
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):
                continue  # a thread that just ended
        if states and all(state in ("T", "t") for state in states):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} not stopped after {FREEZE_S} s: {states}")
        time.sleep(0.001)


def _values_once_settled(log: Log, expected: int) -> list[bytes]:
    """The topic's values once ``expected`` records are in, and a while after
    (a copy arriving late would show)."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        info = log.describe_topic("t")
        if sum(p.records for p in info.partitions) >= expected:
            break
        time.sleep(0.05)
    time.sleep(1.0)
    return [r.value for r in log.read("t") if r.value is not None]


def test_a_single_append_whose_ack_is_lost_is_not_sent_again(tmp_path: Path) -> None:
    require(nats_server_unavailable())
    with NatsCluster(tmp_path / "nats", nodes=1, sync_interval=None) as cluster:
        pid = cluster.node(0).process.pid  # type: ignore[union-attr]
        with Log.open(f"{cluster.url}?bucket=lostack", timeout_s=1.0) as log:
            log.create_topic("t")
            _freeze(pid)
            try:
                with pytest.raises(Timeout) as single:
                    log.append("t", b"once")
                assert "not sent again" in str(single.value)
                with pytest.raises((Timeout, Unavailable)):
                    log.append_batch("t", [b"a", b"b"])  # sent three times, same ids
            finally:
                os.kill(pid, signal.SIGCONT)
            assert sorted(_values_once_settled(log, 3)) == [b"a", b"b", b"once"]
