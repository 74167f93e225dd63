"""Typed events and their evolution ("data outlives code").

Declare events as frozen ``msgspec`` structs: fast to encode and decode, and
validated on decode. Each event class has a stored *type name* (default: the
class name) and a *schema version*. When a class changes, register an
upcaster from the old version: stored events are upgraded on read, in a
chain (v1 -> v2 -> v3), and never rewritten.

>>> class Deposited(Event):
...     amount: int
>>> serializer = Serializer([Deposited])
>>> kind, version, data = serializer.encode(Deposited(amount=5))
>>> (kind, version, data)
('Deposited', 1, b'{"amount":5}')
>>> serializer.decode(kind, version, data)
Deposited(amount=5)
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import msgspec

from ..errors import CorruptionError, EventSchemaMismatch, UsageError

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Base class of typed events. Set ``event_type`` / ``schema_version`` as
    class variables to override the stored name (default: the class name) and
    the version (default: 1). ``personal_data`` names fields encrypted with
    the key of the subject that ``data_subject`` names (crypto-shredding: see
    :mod:`unbundled.eventstore.shredding`)."""

    event_type: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1
    personal_data: ClassVar[tuple[str, ...]] = ()
    data_subject: ClassVar[str] = ""


class Metadata(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """Stored with every event: why it happened. ``correlation_id`` ties a whole
    conversation together, ``causation_id`` names the message that caused it."""

    # gc=False: every event read makes one, and as a tracked object each one
    # counted towards a cyclic-GC pass (a fifth of the time of reading $all).
    # Metadata is JSON-shaped data and never part of a reference cycle.

    correlation_id: str | None = None
    causation_id: str | None = None
    user: dict[str, Any] = msgspec.field(default_factory=dict)


_encoder = msgspec.json.Encoder()
_decode_dict = msgspec.json.Decoder(dict[str, Any]).decode
_decode_metadata = msgspec.json.Decoder(Metadata).decode


def type_name(cls: type[Event]) -> str:
    return cls.event_type or cls.__name__


class Serializer:
    """Maps event classes to stored (type, schema version, JSON) and back."""

    def __init__(self, events: Iterable[type[Event]] = ()) -> None:
        self._by_name: dict[str, type[Event]] = {}
        self._decoders: dict[str, msgspec.json.Decoder[Any]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        for cls in events:
            self.register(cls)

    def register(self, *classes: type[Event]) -> None:
        """Make ``classes`` (Event subclasses) known by their type names, so
        stored events of those types decode to them. Registering a class again is a
        no-op. Raises ``UsageError`` for a class that is not an Event subclass, or
        for a second class with a type name already taken."""
        for cls in classes:
            if not (isinstance(cls, type) and issubclass(cls, Event)):
                raise UsageError(f"{cls!r} is not an Event subclass")
            name = type_name(cls)
            known = self._by_name.get(name)
            if known is not None and known is not cls:
                raise UsageError(f"two event classes are named {name!r}: {known} and {cls}")
            self._by_name[name] = cls
            self._decoders[name] = msgspec.json.Decoder(cls)

    def upcaster(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register ``fn`` to turn a stored ``event_type`` at ``from_version``
        into ``from_version + 1`` (a dict in, a dict out)."""

        def register(fn: Upcaster) -> Upcaster:
            self._upcasters[(event_type, from_version)] = fn
            return fn

        return register

    def current_decoders(self) -> dict[tuple[str, int], msgspec.json.Decoder[Any]]:
        """Decoders by (type, schema version) for registered types at their
        current version: the reads' fast path (``decode`` handles the rest)."""
        return {
            (name, cls.schema_version): self._decoders[name] for name, cls in self._by_name.items()
        }

    def class_for(self, event_type: str) -> type[Event] | None:
        """The class registered for ``event_type``, or ``None``."""
        return self._by_name.get(event_type)

    def encode(self, event: Event) -> tuple[str, int, bytes]:
        """``(type name, schema version, JSON)`` of ``event``, checked against
        its class: ``UsageError`` naming the field and the value if it does
        not fit (msgspec does not check types when a struct is made or
        encoded, only when decoded), so nothing stored fails a later read."""
        cls = type(event)
        name = type_name(cls)
        if self._by_name.get(name) is not cls:
            self.register(cls)
        try:
            data = _encoder.encode(event)
            # Decoding is what every read does, so it is the check: the
            # cheapest complete one (about 0.2 us for a small event).
            self._decoders[name].decode(data)
        except (TypeError, msgspec.ValidationError) as exc:
            raise misfit(name, event, exc) from None
        return name, cls.schema_version, data

    def decode(self, event_type: str, schema_version: int, data: bytes) -> Any:
        """The typed event (upcast to its class's version); a dict for an
        unknown type. ``EventSchemaMismatch`` if the stored event does not
        fit today's class (or no upcaster leads there); ``CorruptionError``
        if the stored data is not JSON at all."""
        cls = self._by_name.get(event_type)
        upcast: dict[str, Any] | None = None
        try:
            if cls is None:
                return _decode_dict(data)
            if schema_version == cls.schema_version:
                return self._decoders[event_type].decode(data)
            upcast = self.upcast(event_type, schema_version, _decode_dict(data), cls.schema_version)
            return msgspec.convert(upcast, cls)
        except msgspec.ValidationError as exc:  # JSON, but not fitting the class
            raise drifted(event_type, schema_version, data, upcast, exc) from None
        except msgspec.DecodeError as exc:  # not JSON: not something we wrote
            raise CorruptionError(
                f"stored {event_type} v{schema_version} is not JSON: {exc}",
                event_type=event_type,
                schema_version=schema_version,
            ) from exc

    def upcast(
        self, event_type: str, version: int, data: dict[str, Any], target: int
    ) -> dict[str, Any]:
        """``data`` of ``event_type`` at ``version`` upgraded to ``target``
        through the registered upcasters; ``EventSchemaMismatch`` if one is
        missing or the stored version is newer than the code."""
        stored = version
        while version < target:
            step = self._upcasters.get((event_type, version))
            if step is None:
                raise EventSchemaMismatch(
                    f"stored {event_type} v{stored} needs an upcaster: none is registered "
                    f"for {event_type} v{version} -> v{version + 1}",
                    event_type=event_type,
                    schema_version=stored,
                    field=None,
                    missing_from=version,
                )
            data = step(data)
            version += 1
        if version > target:
            raise EventSchemaMismatch(
                f"stored {event_type} v{version} is newer than the code (v{target}): "
                "deploy the newer code",
                event_type=event_type,
                schema_version=version,
                field=None,
            )
        return data

    @staticmethod
    def encode_metadata(metadata: Metadata) -> bytes:
        """``metadata`` as the JSON bytes stored with an event; ``TypeError``
        if a value in ``user`` cannot be encoded (``EventStore.append`` turns that
        into a ``UsageError`` before writing anything)."""
        return _encoder.encode(metadata)

    @staticmethod
    def decode_metadata(raw: bytes) -> Metadata:
        """Stored metadata bytes as :class:`Metadata`; ``CorruptionError`` if
        they are not the JSON of a ``Metadata``."""
        try:
            return _decode_metadata(raw)
        except msgspec.DecodeError as exc:
            raise CorruptionError(f"stored event metadata does not decode: {exc}") from exc


# --- naming what does not fit ------------------------------------------------------

_AT = re.compile(r" - at `\$([^`]*)`$")
_MISSING = re.compile(r"missing required field `([^`]*)`")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_SHOWN_CHARS_MAX = 100  # of a value's repr in a message


def _where(exc: Exception) -> tuple[str, str | None]:
    """msgspec's reason and the path it names, as ``amount`` or
    ``lines[2].sku`` (``None``: the event as a whole)."""
    text = str(exc)
    found = _AT.search(text)
    reason, path = (text[: found.start()], found.group(1)) if found else (text, "")
    missing = _MISSING.search(reason)
    if missing:
        path += f".{missing.group(1)}"
    return reason, path.lstrip(".") or None


def _value_at(value: Any, field: str) -> tuple[bool, Any]:
    """The value at ``field`` (a path from :func:`_where`) inside an event or
    decoded JSON, and whether it was found."""
    try:
        for name, index in _STEP.findall("." + field):
            if index == "...":  # a dict value: msgspec does not say under which key
                return True, value
            if index:
                value = value[int(index)]
            elif isinstance(value, dict):
                value = value[name]
            else:
                attrs = {f.encode_name: f.name for f in msgspec.structs.fields(type(value))}
                value = getattr(value, attrs.get(name, name))
    except (LookupError, TypeError, AttributeError):
        return False, None
    return True, value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS_MAX else text[: _SHOWN_CHARS_MAX - 3] + "..."


def misfit(event_type: str, event: Any, exc: Exception) -> UsageError:
    """The error for an event that does not fit its own class (at append)."""
    if isinstance(exc, TypeError):  # the encoder met a value JSON cannot hold
        return UsageError(
            f"event {event_type} cannot be stored as JSON: {exc}; nothing was written",
            event_type=event_type,
            field=None,
            value=None,
        )
    reason, field = _where(exc)
    found, value = _value_at(event, field) if field is not None else (False, None)
    what = f"field {field}" if field is not None else "it"
    shown = f" = {_shown(value)}" if found else ""
    return UsageError(
        f"event {event_type}: {what}{shown} does not fit its class: {reason}; nothing was written",
        event_type=event_type,
        field=field,
        value=_shown(value) if found else None,
    )


def drifted(
    event_type: str,
    schema_version: int,
    data: bytes,
    upcast: dict[str, Any] | None,
    exc: Exception,
) -> EventSchemaMismatch:
    """The error for a stored event that does not fit today's class."""
    reason, field = _where(exc)
    found, value = False, None
    if field is not None:
        with contextlib.suppress(msgspec.DecodeError):
            found, value = _value_at(upcast if upcast is not None else _decode_dict(data), field)
    at = f" at field {field}" if field is not None else ""
    shown = f" (stored value {_shown(value)})" if found else ""
    upcasted = " after upcasting" if upcast is not None else ""
    return EventSchemaMismatch(
        f"stored {event_type} v{schema_version} does not fit today's class{upcasted}: "
        f"{reason}{at}{shown}; register an upcaster for it or fix the class",
        event_type=event_type,
        schema_version=schema_version,
        field=field,
    )
