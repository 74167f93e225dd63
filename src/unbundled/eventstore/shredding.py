"""Crypto-shredding: personal data that can be forgotten in an append-only store.

Events are never rewritten, so "delete this customer's personal data" cannot
mean deleting events. Instead an event class names its personal fields and
the field that identifies whose data they are (the *data subject*)::

    class Registered(Event):
        personal_data = ("email", "name")     # must be Optional: None once forgotten
        data_subject = "customer_id"
        customer_id: str
        email: str | None
        name: str | None

On append, those fields are encrypted with the subject's own key (AES-256-GCM,
one random 32-byte key per subject, kept by the backend); on read they are
decrypted. ``EventStore.forget(subject)`` deletes the key for good: from then
on every event of that subject reads with its personal fields ``None`` while
the rest (amounts, ids, times) stays readable, and new personal data for the
subject is refused (``SubjectForgotten``). Backups made after the forget hold
no key either; the ciphertext left in old events is unreadable noise.

Stored layout (the event's JSON stays valid for its class, so a reader
without keys sees exactly the "forgotten" view)::

    {"customer_id": "c-1", "email": null, "name": null,
     "$personal": {"subject": "c-1", "data": "<base64 nonce | ciphertext | tag>"}}

The plaintext is the JSON object of the personal fields, authenticated
together with the stored event type and the subject. The nonce is derived
from the key and the plaintext (a synthetic IV), so encrypting the same event
twice gives the same bytes: a retried append stays idempotent. The price is
that two events of one subject with equal personal data have equal
ciphertext; nothing else is revealed.

Needs the ``cryptography`` package: ``pip install 'unbundled[crypto]'``.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import msgspec

from ..errors import CorruptionError, NotSupported, UsageError
from .serialization import Event

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError as exc:  # pragma: no cover - exercised in a test by hiding the package
    raise NotSupported(
        "crypto-shredding needs the cryptography package: pip install 'unbundled[crypto]'",
        extra="crypto",
    ) from exc

__all__ = ["ENVELOPE", "Shredder", "SubjectKeys"]

#: The JSON key that holds an event's sealed personal fields.
ENVELOPE = "$personal"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # the GCM standard nonce

_encoder = msgspec.json.Encoder()
_decode_dict = msgspec.json.Decoder(dict[str, Any]).decode


class SubjectKeys(Protocol):
    """Where subjects' keys live: every event-store backend."""

    def subject_key(self, subject: str, new_key: bytes) -> bytes:
        """See :meth:`unbundled.eventstore.EventStoreBackend.subject_key`."""

    def find_subject_keys(self, subjects: Sequence[str]) -> dict[str, bytes | None]:
        """See :meth:`unbundled.eventstore.EventStoreBackend.find_subject_keys`."""


class _Sealed(msgspec.Struct, frozen=True):
    subject: str
    data: bytes  # nonce | AES-GCM ciphertext and tag; base64 in JSON


class _Spec(NamedTuple):
    personal: tuple[str, ...]  # the personal fields' JSON names
    subject: str  # the subject field's attribute name


def _allows_none(kind: Any) -> bool:
    while isinstance(kind, msgspec.inspect.Metadata):  # Annotated[..., Meta(...)]
        kind = kind.type
    if isinstance(kind, msgspec.inspect.NoneType | msgspec.inspect.AnyType):
        return True
    return isinstance(kind, msgspec.inspect.UnionType) and any(
        isinstance(t, msgspec.inspect.NoneType) for t in kind.types
    )


def personal_spec(cls: type[Event]) -> _Spec:
    """Check what ``cls`` declares (fields exist, personal ones accept None,
    the subject is a separate field) and return it. ``UsageError`` if wrong."""
    personal, subject = cls.personal_data, cls.data_subject
    name = cls.__name__
    if isinstance(personal, str) or not all(isinstance(p, str) for p in personal):
        raise UsageError(f"{name}.personal_data must be a tuple of field names, got {personal!r}")
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = {f.name: f for f in info.fields}
    unknown = [p for p in (*personal, subject) if p not in fields]
    if not subject or unknown:
        raise UsageError(
            f"{name} declares personal data {personal!r} with data subject {subject!r}: "
            f"both must name fields of {name}" + (f" (unknown: {unknown})" if unknown else ""),
            event_type=name,
        )
    if subject in personal:
        raise UsageError(
            f"{name}.{subject} cannot be both the data subject and personal data: "
            "the subject must stay readable to find its key",
            event_type=name,
        )
    not_optional = [p for p in personal if not _allows_none(fields[p].type)]
    if not_optional:
        raise UsageError(
            f"personal fields of {name} must accept None (they read as None once the "
            f"subject is forgotten): declare {not_optional} as Optional",
            event_type=name,
        )
    return _Spec(tuple(fields[p].encode_name for p in personal), subject)


def _subkey(key: bytes, label: bytes) -> bytes:
    return hmac.digest(key, b"unbundled/shredding/" + label, "sha256")


def encrypt(key: bytes, aad: bytes, plaintext: bytes) -> bytes:
    # Synthetic IV: the nonce is a MAC of the plaintext, so only identical
    # messages share a nonce (and then their ciphertexts are identical too).
    nonce = hmac.digest(_subkey(key, b"nonce"), aad + b"\0" + plaintext, "sha256")
    nonce = nonce[:NONCE_BYTES]
    return nonce + AESGCM(_subkey(key, b"aes")).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, aad: bytes, sealed: bytes) -> bytes:
    nonce, body = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
    return AESGCM(_subkey(key, b"aes")).decrypt(nonce, body, aad)


def _aad(event_type: str, subject: str) -> bytes:
    return event_type.encode() + b"\0" + subject.encode()


class Shredder:
    """Seals events' personal fields on write and unseals them on read.

    Stateless apart from a cache of checked event classes; keys are always
    read from the backend, so a subject forgotten by another process reads as
    forgotten here at once.
    """

    def __init__(self) -> None:
        self._specs: dict[type[Event], _Spec] = {}

    def _spec(self, cls: type[Event]) -> _Spec:
        found = self._specs.get(cls)
        if found is None:
            found = self._specs[cls] = personal_spec(cls)  # a race only checks twice
        return found

    def seal(self, keys: SubjectKeys, event: Event, event_type: str, data: bytes) -> bytes:
        """``data`` (the event's JSON) with its personal fields encrypted under
        the subject's key (created on first use). Raises ``SubjectForgotten``
        for a forgotten subject: its personal data may not be written again."""
        spec = self._spec(type(event))
        subject = getattr(event, spec.subject)
        if not isinstance(subject, str) or not subject:
            raise UsageError(
                f"{type(event).__name__}.{spec.subject} names the data subject and must be "
                f"a non-empty string, got {subject!r}",
                event_type=event_type,
            )
        fields = _decode_dict(data)
        personal = {name: fields.get(name) for name in spec.personal}
        if all(value is None for value in personal.values()):
            return data  # nothing personal to protect
        for name in spec.personal:
            fields[name] = None
        key = keys.subject_key(subject, os.urandom(KEY_BYTES))
        sealed = encrypt(key, _aad(event_type, subject), _encoder.encode(personal))
        fields[ENVELOPE] = _Sealed(subject, sealed)
        return _encoder.encode(fields)

    def unseal(self, keys: SubjectKeys, event_type: str, data: bytes) -> bytes:
        """``data`` with the personal fields decrypted, or left ``None`` if the
        subject was forgotten (or its key is unknown here). ``CorruptionError``
        if the ciphertext does not authenticate under the subject's key."""
        fields = _decode_dict(data)
        raw = fields.pop(ENVELOPE, None)
        if raw is None:
            return data
        try:
            sealed = msgspec.convert(raw, _Sealed)
        except msgspec.ValidationError as exc:
            raise CorruptionError(
                f"stored {event_type} has a malformed personal-data envelope: {exc}",
                event_type=event_type,
            ) from exc
        key = keys.find_subject_keys([sealed.subject]).get(sealed.subject)
        if key is not None:
            try:
                plaintext = decrypt(key, _aad(event_type, sealed.subject), sealed.data)
            except InvalidTag as exc:
                raise CorruptionError(
                    f"the personal data of a stored {event_type} does not authenticate "
                    f"under the key of subject {sealed.subject!r}",
                    event_type=event_type,
                    subject=sealed.subject,
                ) from exc
            fields.update(_decode_dict(plaintext))
        return _encoder.encode(fields)
