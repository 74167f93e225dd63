"""The registry of URL schemes (issue 10, structure): backends register what
they serve, every part opens through one ``open``, and no part imports a
backend to do it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from unbundled import EventStore, Idempotency, Log, NotSupported, UsageError, _registry, backends
from unbundled._ground import SyncLevel
from unbundled.backends import MemoryBackend
from unbundled.consistency import KV


@pytest.fixture
def registry() -> Iterator[None]:
    """Whatever a test registers is gone afterwards (SERVES feeds the CLI's help)."""
    _registry.url_scheme("")  # the shipped backends first, so they are kept too
    serves, forms = dict(_registry.SERVES), dict(_registry.URL_FORMS)
    schemes, aliases = dict(_registry._SCHEMES), dict(_registry._ALIASES)
    yield
    _restore(_registry.SERVES, serves)
    _restore(_registry.URL_FORMS, forms)
    _restore(_registry._SCHEMES, schemes)
    _restore(_registry._ALIASES, aliases)


def _restore(table: dict[str, Any], saved: dict[str, Any]) -> None:
    table.clear()
    table.update(saved)


class Opened:
    """An opener that hands out memory backends and remembers them."""

    def __init__(self) -> None:
        self.backends: list[MemoryBackend] = []

    def __call__(
        self, url: str, *, sync: SyncLevel, clock: Callable[[], int], **options: Any
    ) -> MemoryBackend:
        backend = MemoryBackend(clock=clock)
        backend.url = url
        self.backends.append(backend)
        return backend


@pytest.mark.usefixtures("registry")
def test_a_registered_scheme_opens_the_parts_it_serves_and_refuses_the_others() -> None:
    opened = Opened()
    _registry.register("toy", opened, (backends.LOG,), form="toy://name", aliases=("toys",))
    assert _registry.url_scheme("toys://a") == "toy"
    assert backends.SERVES["toy"] == (backends.LOG,)
    with Log.open("toy://a") as log:
        log.create_topic("t")
        assert log.append("t", b"x").offset == 0
    with pytest.raises(NotSupported) as info:
        EventStore.open("toys://b")
    # Opened, then refused and closed, naming what it serves and what serves the part.
    assert info.value.message.startswith("the backend at 'toys://b' serves the log, not the event")
    assert "memory://" in info.value.message and "toy://" not in info.value.message
    assert opened.backends[-1]._closed


@pytest.mark.usefixtures("registry")
def test_a_scheme_may_refuse_before_connecting() -> None:
    opened = Opened()

    def early(url: str) -> NotSupported:
        return NotSupported(f"{url}: toy keys only", url=url)

    _registry.register("toy", opened, (backends.KV,), form="toy://", refuse_early=early)
    with pytest.raises(NotSupported, match="toy://x: toy keys only"):
        Idempotency.open("toy://x")
    assert opened.backends == []  # nothing was opened
    with KV.open("toy://x") as kv:
        assert kv.write("k", b"v") == 1


def test_every_part_opens_through_one_open_and_the_old_names_still_work() -> None:
    assert isinstance(_registry.open("memory://", serving=backends.LOG), MemoryBackend)
    assert isinstance(backends.open_backend("memory://"), MemoryBackend)
    assert isinstance(backends.open_kv_backend("memory://"), MemoryBackend)
    assert backends.SERVES["nats"] == (
        backends.LOG,
        backends.EVENTS,
        backends.IDEMPOTENCY,
        backends.KV,
    )
    with pytest.raises(UsageError, match="unknown backend URL scheme 'toy'"):
        _registry.open("toy://x")
    with pytest.raises(UsageError, match="a backend URL or path is required"):
        _registry.open("")


def test_a_part_needs_no_backend_until_a_url_is_opened() -> None:
    """The parts import no backend: the backends are loaded by name when the
    first URL is opened, so the import graph points down."""
    code = (
        "import sys, unbundled\n"
        "from unbundled.consistency import KV\n"
        "assert 'unbundled.backends' not in sys.modules, 'imported with the parts'\n"
        "unbundled.Log.open('memory://').close()\n"
        "assert 'unbundled.backends' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_a_scheme_must_serve_known_parts() -> None:
    with pytest.raises(UsageError, match="must serve some of the parts"):
        _registry.register("toy", Opened(), ("the moon",), form="toy://")
    with pytest.raises(UsageError, match="must serve some of the parts"):
        _registry.register("toy", Opened(), (), form="toy://")
    assert "toy" not in _registry.SERVES
