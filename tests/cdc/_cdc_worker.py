"""The worker of the CDC crash test (tests/cdc/test_cdc_crash.py).

Run as ``python -m tests.cdc._cdc_worker <log.db> <connector> <die_at>`` from the
repository root. It runs the connector's producer (as `unbundled cdc run` does) and says
``stored <position>`` after each batch it stored. With ``die_at`` = n > 0 it kills itself
with SIGKILL at its n-th store, right after the log transaction committed and before the
source is told (the window where a careless connector loses or doubles changes).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys

import unbundled
from tests.crash._children import exit_with_parent, guarded, say
from unbundled.cdc import CDCProducer, get_connector


def main(path: str, name: str, die_at: int) -> None:
    exit_with_parent()
    faulthandler.dump_traceback_later(25, exit=False)  # a stuck worker shows where
    db = unbundled.open(path, sync="full")
    producer = CDCProducer(db, get_connector(db, name))
    source = producer._source
    confirm = source.confirm
    stores = 0

    def confirm_or_die(position: unbundled.cdc.SourcePosition) -> None:
        nonlocal stores
        stores += 1
        say(f"stored {position}")
        if stores == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        confirm(position)

    source.confirm = confirm_or_die  # type: ignore[method-assign]
    say("started")
    producer.run(poll_s=0.2)


if __name__ == "__main__":
    guarded(lambda: main(sys.argv[1], sys.argv[2], int(sys.argv[3])))()
