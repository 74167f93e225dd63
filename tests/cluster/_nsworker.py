"""A worker for the network-namespace tests: writes a heartbeat key to the
key-value store at ``argv[1]`` every 0.1 s and reports each outcome as a
JSON line (``{"ok": n}`` or ``{"error": "Timeout", ...}``) until killed."""

from __future__ import annotations

import json
import sys
import time

from unbundled.consistency import KV
from unbundled.errors import Error


def main() -> None:
    url = sys.argv[1]
    kv: KV | None = None
    n = 0
    while True:
        started = time.monotonic()
        try:
            if kv is None:
                kv = KV.open(url)
            kv.write("beat", str(n).encode())
            report: dict[str, object] = {"ok": n}
        except Error as exc:
            report = {
                "error": type(exc).__name__,
                "retryable": exc.retryable,
                "message": str(exc)[:300],
            }
        report["s"] = round(time.monotonic() - started, 3)
        print(json.dumps(report), flush=True)
        n += 1
        time.sleep(0.1)


if __name__ == "__main__":
    main()
