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

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import msgspec

from ..errors import CorruptionError, UsageError

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
        return self._by_name.get(event_type)

    def encode(self, event: Event) -> tuple[str, int, bytes]:
        cls = type(event)
        name = type_name(cls)
        if self._by_name.get(name) is not cls:
            self.register(cls)
        return name, cls.schema_version, _encoder.encode(event)

    def decode(self, event_type: str, schema_version: int, data: bytes) -> Any:
        """The typed event (upcast to its class's version); a dict for an
        unknown type. ``CorruptionError`` if stored data does not decode."""
        cls = self._by_name.get(event_type)
        try:
            if cls is None:
                return _decode_dict(data)
            if schema_version == cls.schema_version:
                return self._decoders[event_type].decode(data)
            return msgspec.convert(
                self.upcast(event_type, schema_version, _decode_dict(data), cls.schema_version),
                cls,
            )
        except msgspec.DecodeError as exc:  # malformed JSON, or not fitting the class
            raise CorruptionError(
                f"stored {event_type} v{schema_version} does not decode: {exc}",
                event_type=event_type,
            ) from exc

    def upcast(
        self, event_type: str, version: int, data: dict[str, Any], target: int
    ) -> dict[str, Any]:
        while version < target:
            step = self._upcasters.get((event_type, version))
            if step is None:
                raise UsageError(
                    f"no upcaster registered for {event_type} v{version} -> v{version + 1}",
                    event_type=event_type,
                    version=version,
                )
            data = step(data)
            version += 1
        if version > target:
            raise UsageError(
                f"stored {event_type} v{version} is newer than the code (v{target}): "
                "deploy the newer code",
                event_type=event_type,
                version=version,
            )
        return data

    @staticmethod
    def encode_metadata(metadata: Metadata) -> bytes:
        return _encoder.encode(metadata)

    @staticmethod
    def decode_metadata(raw: bytes) -> Metadata:
        try:
            return _decode_metadata(raw)
        except msgspec.DecodeError as exc:
            raise CorruptionError(f"stored event metadata does not decode: {exc}") from exc
