"""Docs are tested: every Python block in README.md and docs/ runs, in order,
in an empty directory; relative links resolve; every test a guarantee cites exists."""

from __future__ import annotations

import doctest
import os
import re
from pathlib import Path

import pytest

import unbundled.log.api

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)#]+)(#[^)]*)?\)")


def _python_blocks(page: Path) -> list[str]:
    return FENCE.findall(page.read_text())


@pytest.mark.parametrize(
    "page", [p for p in PAGES if _python_blocks(p)], ids=lambda p: str(p.relative_to(ROOT))
)
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    try:
        for number, block in enumerate(_python_blocks(page), 1):
            code = compile(block, f"{page.name}:block{number}", "exec", dont_inherit=True)
            exec(code, namespace)
    finally:
        # Close whatever the page left open, so the next page starts clean.
        for value in namespace.values():
            close = getattr(value, "close", None)
            if isinstance(value, unbundled.Log) and callable(close):
                close()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    for target, _ in LINK.findall(page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


DEFINES = r"^(?:async def {name}\(|def {name}\(|{name} = )"


@pytest.mark.parametrize(
    "part",
    [
        "log",
        "cdc",
        "eventstore",
        "idempotency",
        "causal-consistency",
        "consistency",
        "isolation-levels-measured",
        "transactions",
        "streams",
    ],
)
def test_guarantees_cite_existing_tests(part: str) -> None:
    # A test is a function, or a name bound to one (a state machine's TestCase).
    page = ROOT / "docs" / "explanation" / f"{part}.md"
    # `tests/x/test_y.py` cites a file; `tests/x/test_y.py::test_z` one test in it.
    cited = set(re.findall(r"`(tests/[\w/.]+)(?:::(\w+))?`", page.read_text()))
    assert cited, "the guarantees must name the tests that check them"
    missing = sorted(
        f"{path}::{name}" if name else path
        for path, name in cited
        if not (ROOT / path).exists()
        or (name and not re.search(DEFINES.format(name=name), (ROOT / path).read_text(), re.M))
    )
    assert not missing, f"guarantees cite missing tests: {missing}"


def test_library_docstring_examples() -> None:
    result = doctest.testmod(unbundled.log.api, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_every_docs_page_is_in_a_diataxis_section() -> None:
    sections = {"tutorial", "how-to", "reference", "explanation"}
    for page in (ROOT / "docs").rglob("*.md"):
        assert page.relative_to(ROOT / "docs").parts[0] in sections, page
    assert os.path.exists(ROOT / "docs" / "explanation" / "design-rules.md")
