"""Fixtures for the lazyfs tests: mounts that are always unmounted.

Without FUSE (no /dev/fuse, no fusermount3, no mfusepy) the tests skip with
how to enable them, except with CI=true, where they fail (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import CI
from unbundled.testing.lazyfs import ENABLE_HINT, LazyFS, fuse_unavailable

MakeLazyFS = Callable[..., LazyFS]


def require_fuse() -> None:
    reason = fuse_unavailable()
    if reason is None:
        return
    message = f"lazyfs needs FUSE: {reason}; to run these tests, {ENABLE_HINT}"
    if CI:
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


@pytest.fixture
def make_lazyfs(tmp_path: Path) -> Iterator[MakeLazyFS]:
    """``make_lazyfs(name="fs", seed=0)``: a started LazyFS over
    ``tmp_path/name/disk`` mounted at ``tmp_path/name/mnt``. Every one made is
    unmounted at the end of the test, whatever happened."""
    require_fuse()
    made: list[LazyFS] = []

    def make(name: str = "fs", seed: int = 0) -> LazyFS:
        fs = LazyFS(tmp_path / name / "disk", tmp_path / name / "mnt", seed=seed)
        made.append(fs)
        fs.__enter__()
        return fs

    try:
        yield make
    finally:
        for fs in made:
            fs.__exit__(None, None, None)


@pytest.fixture
def lazyfs(make_lazyfs: MakeLazyFS) -> LazyFS:
    """One started LazyFS (seed 0)."""
    return make_lazyfs()
