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
            os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(Timeout) as single:
                    log.append("t", b"once")
                assert "not sent again" in str(single.value)
                with pytest.raises((Timeout, Unavailable)):
                    log.append_batch("t", [b"a", b"b"])  # sent three times, same ids
            finally:
                os.kill(pid, signal.SIGCONT)
            assert sorted(_values_once_settled(log, 3)) == [b"a", b"b", b"once"]
