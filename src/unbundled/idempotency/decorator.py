"""``@idempotent``: make a function take effect once per idempotency key.

>>> from unbundled.idempotency import Idempotency, idempotent
>>> idem = Idempotency.open("memory://")
>>> charges = []
>>> @idempotent(idem, key=lambda order_id, amount: f"charge-{order_id}")
... def charge(order_id: str, amount: int) -> dict[str, int]:
...     charges.append(amount)
...     return {"charged": amount}
>>> charge("o-1", 10)
{'charged': 10}
>>> charge("o-1", 10)  # a retry: the stored result, no second charge
{'charged': 10}
>>> charges
[10]
>>> idem.close()

An ``async def`` function gets the async path (``AsyncIdempotency``); a plain
one the sync path. Either facade may be passed for either kind of function:
the decorator uses the other twin over the same backend and settings.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

import msgspec

from ..errors import UsageError
from .aio import AsyncIdempotency
from .api import Idempotency, IdempotencyBase

P = ParamSpec("P")
R = TypeVar("R")

KeyFunction = Callable[..., "str | None"]
PayloadFunction = Callable[..., Any]


def _arguments_of(fn: Callable[..., Any]) -> PayloadFunction:
    """The default payload: every argument by name, defaults applied (so
    ``f(1)``, ``f(x=1)`` and ``f(1, y=2)`` with default ``y=2`` are the same
    request), and a key reused with other arguments is refused
    (``IdempotencyKeyReused``) instead of replayed."""
    signature = inspect.signature(fn)

    def arguments(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    return arguments


def _settings(idem: IdempotencyBase) -> dict[str, Any]:
    return {
        "lease_ms": idem.lease_ms,
        "retention_ms": idem.retention_ms,
        "fingerprint": idem.fingerprinting,
        "deterministic": idem.deterministic,
        "encode": idem._encode,
        "decode": idem._decode,
    }


def _sync_twin(idem: IdempotencyBase) -> Idempotency:
    if isinstance(idem, Idempotency):
        return idem
    return Idempotency(idem.backend, **_settings(idem))


def _async_twin(idem: IdempotencyBase) -> AsyncIdempotency:
    if isinstance(idem, AsyncIdempotency):
        return idem
    return AsyncIdempotency(idem.backend, **_settings(idem))


def idempotent(
    idem: IdempotencyBase,
    *,
    key: KeyFunction,
    payload: PayloadFunction | None = None,
    returns: Any = None,
    wait_s: float | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function so that each key runs it once.

    ``key(*args, **kwargs)`` names the request (it must return a key: ``None``
    or ``""`` raises ``UsageError``, never a silent run without protection).
    ``payload(*args, **kwargs)`` is what is fingerprinted (default: all the
    arguments, which must then be JSON-encodable). A retry returns the stored
    result, decoded from JSON: pass ``returns=SomeType`` to convert it back
    (``msgspec.convert``), so the first call and a retry return the same type.
    Errors behave as in :meth:`Idempotency.call` (deterministic ones stored,
    others release the key); ``wait_s`` waits for an in-flight first call
    instead of raising ``RequestInProgress``.
    """
    if not callable(key):
        raise UsageError("@idempotent needs key=<a function of the arguments returning a key>")
    idem._check_wait(wait_s)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        name = getattr(fn, "__qualname__", repr(fn))
        fingerprinted = payload if payload is not None else _arguments_of(fn)

        def key_of(*args: Any, **kwargs: Any) -> str:
            found = key(*args, **kwargs)
            if found is None or found == "":
                raise UsageError(
                    f"the key function of @idempotent({name}) returned {found!r}: it must "
                    "return the request's idempotency key (a non-empty str)",
                    function=name,
                )
            if not isinstance(found, str):
                raise UsageError(
                    f"the key function of @idempotent({name}) returned a "
                    f"{type(found).__name__}, not a str",
                    function=name,
                )
            return found

        def typed(value: Any, replayed: bool) -> Any:
            # A fresh result is already what the function returned.
            return msgspec.convert(value, returns) if replayed and returns is not None else value

        if inspect.iscoroutinefunction(fn):
            aidem = _async_twin(idem)

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                async with aidem.run(
                    key_of(*args, **kwargs), fingerprinted(*args, **kwargs), wait_s=wait_s
                ) as attempt:
                    if attempt.replayed:
                        if attempt.error is not None:
                            raise attempt.error
                        return typed(attempt.result, True)
                    result = await cast(Callable[..., Awaitable[Any]], fn)(*args, **kwargs)
                    await aidem.complete(attempt, result)
                    return result

            return cast(Callable[P, R], run_async)

        sidem = _sync_twin(idem)

        @functools.wraps(fn)
        def run_sync(*args: P.args, **kwargs: P.kwargs) -> R:
            with sidem.run(
                key_of(*args, **kwargs), fingerprinted(*args, **kwargs), wait_s=wait_s
            ) as attempt:
                if attempt.replayed:
                    if attempt.error is not None:
                        raise attempt.error
                    replayed: R = typed(attempt.result, True)
                    return replayed
                result = fn(*args, **kwargs)
                sidem.complete(attempt, result)
                return result

        return run_sync

    return decorate
