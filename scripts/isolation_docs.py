"""Measure SQLite, PostgreSQL and MariaDB with the isolation tester and write
the tables into docs/explanation/isolation-levels-measured.md.

    python scripts/isolation_docs.py

Each table sits between ``<!-- measured:NAME -->`` and ``<!-- /measured:NAME -->``
(NAME: sqlite, postgresql, mariadb, and the same with ``-how`` for the tables
that say how each anomaly was prevented); the three outcome tables also go
into the "summary" block of docs/explanation/consistency.md. tests/consistency/isolation
checks that the outcome tables are still what the servers do, and that the
two pages agree.
"""

from __future__ import annotations

import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from unbundled.consistency.isolation import Outcome, run_suite, to_markdown

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "explanation" / "isolation-levels-measured.md"
# The consistency page repeats the three outcome tables in its "summary" block.
SUMMARY_PAGE = ROOT / "docs" / "explanation" / "consistency.md"
URLS = {
    "sqlite": "sqlite://",
    "postgresql": "postgresql://postgres@127.0.0.1:5432/test",
    "mariadb": "mysql://root@127.0.0.1:3306/test",
}


def replace_block(text: str, name: str, body: str, page: Path = PAGE) -> str:
    """``text`` with the block named ``name`` replaced by ``body``."""
    pattern = re.compile(
        rf"(<!-- measured:{re.escape(name)} -->\n).*?(<!-- /measured:{re.escape(name)} -->)",
        re.DOTALL,
    )
    if not pattern.search(text):
        raise SystemExit(f"{page.name}: no block named {name!r}")
    return pattern.sub(lambda m: m.group(1) + "\n" + body + "\n" + m.group(2), text)


def measure() -> dict[str, list[Outcome]]:
    with ThreadPoolExecutor(len(URLS)) as pool:
        futures = {name: pool.submit(run_suite, url) for name, url in URLS.items()}
        return {name: future.result() for name, future in futures.items()}


def main() -> int:
    text = PAGE.read_text(encoding="utf-8")
    measured = measure()
    for name, outcomes in measured.items():
        text = replace_block(text, name, to_markdown(outcomes))
        text = replace_block(text, f"{name}-how", to_markdown(outcomes, caption=False, how=True))
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
    summary = "\n".join(to_markdown(outcomes) for outcomes in measured.values())
    text = replace_block(SUMMARY_PAGE.read_text(encoding="utf-8"), "summary", summary, SUMMARY_PAGE)
    SUMMARY_PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {SUMMARY_PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
