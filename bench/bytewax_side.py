"""The competitor's side of ``bench/streams_bench.py``: Bytewax 0.21, run in this
process with ``bytewax.testing.run_main`` (one worker, no cluster, no broker).

The input is a ``TestingSource`` over already-built Python items ``(key,
datetime)``, emitted in batches of 10,000. The clock is an ``EventClock`` pinned
to event time: its ``now_getter`` returns a constant, so system time never moves
the watermark, and ``to_system_utc`` returns None, so the runtime never wakes up
on the system clock either. The watermark is then the largest event time seen
minus ``wait_for_system_duration``, which is set to the same out-of-orderness
bound as unbundled's flow (5 s), so both sides call the same events late (none,
with this workload) and close the same windows.

With ``recovery_dir`` set the flow runs with Bytewax's recovery on (its
exactly-once analogue): an SQLite recovery partition made by
``bytewax.recovery.init_db_dir`` and a snapshot of the window state at the end of
every epoch, whose length is system time (``epoch_interval``): Bytewax has no
epoch by record count or by event time.

Imported only inside ``bench/.venv`` (``bench/requirements.txt``), where Bytewax
is installed; it is never a dependency of unbundled.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import bytewax.operators as op  # type: ignore[import-not-found]
from bytewax.dataflow import Dataflow  # type: ignore[import-not-found]
from bytewax.operators.windowing import (  # type: ignore[import-not-found]
    EventClock,
    SessionWindower,
    TumblingWindower,
    count_window,
)
from bytewax.recovery import RecoveryConfig, init_db_dir  # type: ignore[import-not-found]
from bytewax.testing import TestingSink, TestingSource, run_main  # type: ignore[import-not-found]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The clock's "system time", never advancing: the watermark follows event time only.
PINNED_NOW = datetime(2000, 1, 1, tzinfo=UTC)
BATCH = 10_000
VERSION = version("bytewax")

Item = tuple[str, datetime]
Windows = set[tuple[str, int, int]]


def items(keys: Sequence[str], ts_ms: Sequence[int]) -> list[Item]:
    """Bytewax's input, built before the clock starts: ``(key, aware UTC datetime)``."""
    return [(k, EPOCH + timedelta(milliseconds=t)) for k, t in zip(keys, ts_ms, strict=True)]


def _ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def _key(item: Item) -> str:
    return item[0]


def _ts(item: Item) -> datetime:
    return item[1]


def _never(_: datetime) -> None:
    return None


def _pinned() -> datetime:
    return PINNED_NOW


def _clock(out_of_orderness_ms: int) -> Any:
    return EventClock(
        ts_getter=_ts,
        wait_for_system_duration=timedelta(milliseconds=out_of_orderness_ms),
        now_getter=_pinned,
        to_system_utc=_never,
    )


def _run(flow: Any, recovery_dir: Path | None, epoch_s: float) -> None:
    if recovery_dir is None:
        run_main(flow)
        return
    recovery_dir.mkdir(parents=True, exist_ok=True)
    init_db_dir(recovery_dir, 1)
    run_main(
        flow,
        epoch_interval=timedelta(seconds=epoch_s),
        recovery_config=RecoveryConfig(recovery_dir),
    )


def tumbling_counts(
    inputs: list[Item],
    window_ms: int,
    out_of_orderness_ms: int,
    recovery_dir: Path | None = None,
    epoch_s: float = 1.0,
) -> tuple[float, Windows]:
    """Count per key and tumbling window; the seconds ``run_main`` took and the
    windows as ``(key, start ms, count)``."""
    flow = Dataflow("tumbling")
    up = op.input("in", flow, TestingSource(inputs, batch_size=BATCH))
    windower = TumblingWindower(length=timedelta(milliseconds=window_ms), align_to=EPOCH)
    out = count_window("count", up, _clock(out_of_orderness_ms), windower, _key)
    got: list[tuple[str, tuple[int, int]]] = []
    op.output("out", out.down, TestingSink(got))
    started = time.perf_counter()
    _run(flow, recovery_dir, epoch_s)
    seconds = time.perf_counter() - started
    return seconds, {(key, wid * window_ms, n) for key, (wid, n) in got}


def session_counts(
    inputs: list[Item],
    gap_ms: int,
    out_of_orderness_ms: int,
    recovery_dir: Path | None = None,
    epoch_s: float = 1.0,
) -> tuple[float, Windows]:
    """Count per key and session (inactivity ``gap_ms``); the seconds and the
    sessions as ``(key, first event ms, count)``."""
    flow = Dataflow("sessions")
    up = op.input("in", flow, TestingSource(inputs, batch_size=BATCH))
    windower = SessionWindower(gap=timedelta(milliseconds=gap_ms))
    out = count_window("count", up, _clock(out_of_orderness_ms), windower, _key)
    counts: list[tuple[str, tuple[int, int]]] = []
    metas: list[tuple[str, tuple[int, Any]]] = []
    op.output("out", out.down, TestingSink(counts))
    op.output("meta", out.meta, TestingSink(metas))
    started = time.perf_counter()
    _run(flow, recovery_dir, epoch_s)
    seconds = time.perf_counter() - started
    opened = {(key, wid): _ms(meta.open_time) for key, (wid, meta) in metas}
    return seconds, {(key, opened[key, wid], n) for key, (wid, n) in counts}


__all__ = ["BATCH", "VERSION", "items", "session_counts", "tumbling_counts"]
