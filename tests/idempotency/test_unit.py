"""The pure parts of idempotency keys: key validation, the fingerprint's
canonical form, and every transition of ``_core``, table-driven."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from unbundled import limits
from unbundled.errors import StaleToken, UsageError
from unbundled.idempotency import Idempotency, IdempotencyRecord, _core

NOW = 1_000_000
LEASE, KEEP = 100, 10_000


def rec(**changes: Any) -> IdempotencyRecord:
    """A live record held by token 2, changed by ``changes``."""
    base = IdempotencyRecord(
        "k", "fp", "in_progress", 2, NOW + 50, NOW + 5_000, NOW - 100, NOW - 10
    )
    return msgspec.structs.replace(base, **changes)


# --- keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "",
        " ",
        "a b",
        "x" * (limits.idempotency_key_chars_max + 1),
        "naïve",
        "a\nb",
        "a\x00",
        "semi;colon",
        "quote'",
        "ключ",
        None,
        12,
        b"bytes",
    ],
)
def test_bad_keys_are_refused_by_name(key: object) -> None:
    with pytest.raises(UsageError) as caught:
        _core.check_key(key)
    assert repr(key) in str(caught.value)
    assert caught.value.details["key"] == key


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "x" * limits.idempotency_key_chars_max,
        "550e8400-e29b-41d4-a716-446655440000",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "aGVsbG8_d29ybGQ=",
        "a.b_c:d@e/f+g=h~i-j",
    ],
)
def test_good_keys_pass(key: str) -> None:
    assert _core.check_key(key) == key


def test_phase_names_are_checked() -> None:
    assert _core.check_phase("charge") == "charge"
    for bad in ("", "x" * 101, None, 3):
        with pytest.raises(UsageError):
            _core.check_phase(bad)


def test_derived_keys_are_checked_too() -> None:
    with Idempotency.open("memory://") as idem, idem.run("r" * 250, None) as attempt:
        assert attempt.derived_key("bank") == "r" * 250 + ":bank"
        with pytest.raises(UsageError, match="must be 1 to"):
            attempt.derived_key("too-long")
        idem.complete(attempt, None)


# --- fingerprints ----------------------------------------------------------------------


def test_key_order_is_irrelevant() -> None:
    a = {"amount": 10, "to": {"iban": "X", "name": "bob"}, "tags": ["b", "a"]}
    b = {"tags": ["b", "a"], "to": {"name": "bob", "iban": "X"}, "amount": 10}
    assert _core.fingerprint(a) == _core.fingerprint(b)
    # List order and values are not.
    assert _core.fingerprint(a) != _core.fingerprint({**a, "tags": ["a", "b"]})
    assert _core.fingerprint({"n": 1}) != _core.fingerprint({"n": 1.0})
    assert _core.fingerprint({"n": 1}) != _core.fingerprint({"n": "1"})


def test_bytes_are_hashed_raw() -> None:
    for raw in (b"", b'{"b":1,"a":2}', bytes(range(256))):
        expected = hashlib.sha256(raw).hexdigest()[:32]
        assert _core.fingerprint(raw) == expected
        assert _core.fingerprint(bytearray(raw)) == expected
        assert _core.fingerprint(memoryview(raw)) == expected
    # Bytes are not re-parsed: a reordered JSON body is another request.
    assert _core.fingerprint(b'{"a":1,"b":2}') != _core.fingerprint(b'{"b":2,"a":1}')
    # A str is JSON-encoded (quoted), so it differs from its bytes.
    assert _core.fingerprint("abc") != _core.fingerprint(b"abc")
    assert _core.fingerprint("abc") == hashlib.sha256(b'"abc"').hexdigest()[:32]


def test_none_is_the_fixed_fingerprint_of_fingerprinting_off() -> None:
    assert _core.fingerprint(None) == hashlib.sha256(b"null").hexdigest()[:32]
    with Idempotency.open("memory://", fingerprint=False) as idem:
        assert idem.fingerprint({"a": 1}) == idem.fingerprint({"b": 2}) == _core.fingerprint(None)


def test_unencodable_payloads_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="cannot fingerprint a payload of type object"):
        _core.fingerprint(object())
    with pytest.raises(UsageError, match="of type dict"):
        _core.fingerprint({"n": complex(1, 2)})


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=6))
def test_fingerprint_ignores_insertion_order(payload: dict[str, Any]) -> None:
    reversed_payload = dict(reversed(list(payload.items())))
    assert _core.fingerprint(payload) == _core.fingerprint(reversed_payload)
    assert len(_core.fingerprint(payload)) == 32


# --- claims --------------------------------------------------------------------------------

CLAIMS: list[tuple[str, IdempotencyRecord | None, str, str, dict[str, Any] | None]] = [
    # (case, stored record, fingerprint asked, outcome, what the stored record becomes)
    (
        "absent",
        None,
        "fp",
        "claimed",
        {
            "token": 1,
            "state": "in_progress",
            "lease_until_ms": NOW + LEASE,
            "expires_ms": NOW + KEEP,
            "created_ms": NOW,
            "updated_ms": NOW,
            "phases": {},
        },
    ),
    (
        "expired completed",
        rec(state="completed", result=b"1", expires_ms=NOW),
        "other",
        "claimed",
        {"token": 1, "fingerprint": "other", "result": None, "state": "in_progress"},
    ),
    (
        "expired held",
        rec(expires_ms=NOW - 1, phases={"p": b"1"}),
        "fp",
        "claimed",
        {"token": 1, "phases": {}},
    ),
    ("mismatch while held", rec(), "other", "mismatch", None),
    ("mismatch when done", rec(state="completed", result=b"1"), "other", "mismatch", None),
    ("completed", rec(state="completed", result=b"1", lease_until_ms=0), "fp", "completed", None),
    ("completed error", rec(state="completed", result=b"{}", error=True), "fp", "completed", None),
    ("held, lease live", rec(lease_until_ms=NOW + 1), "fp", "in_progress", None),
    (
        "held, lease ends now",
        rec(lease_until_ms=NOW, phases={"p": b"1"}),
        "fp",
        "claimed",
        {
            "token": 3,
            "lease_until_ms": NOW + LEASE,
            "expires_ms": NOW + KEEP,
            "updated_ms": NOW,
            "created_ms": NOW - 100,
            "phases": {"p": b"1"},
        },
    ),
    (
        "take-over keeps a later expiry",
        rec(lease_until_ms=NOW - 1, expires_ms=NOW + 2 * KEEP),
        "fp",
        "claimed",
        {"token": 3, "expires_ms": NOW + 2 * KEEP},
    ),
]


@pytest.mark.parametrize(
    ("stored", "fp", "outcome", "becomes"), [c[1:] for c in CLAIMS], ids=[c[0] for c in CLAIMS]
)
def test_decide_claim(
    stored: IdempotencyRecord | None, fp: str, outcome: str, becomes: dict[str, Any] | None
) -> None:
    claim, new = _core.decide_claim(stored, "k", fp, NOW, LEASE, KEEP)
    assert claim.outcome == outcome
    if becomes is None:
        assert new is None, "a read-only answer wrote a record"
        assert claim.record == stored
        return
    assert new is not None and claim.record == new and new.key == "k"
    for name, value in becomes.items():
        assert getattr(new, name) == value, (name, getattr(new, name), value)


# --- fenced transitions ---------------------------------------------------------------------

STALE: list[tuple[str, IdempotencyRecord | None, int]] = [
    ("absent", None, 2),
    ("expired", rec(expires_ms=NOW), 2),
    ("older token", rec(), 1),
    ("newer token", rec(), 3),
    ("completed", rec(state="completed", result=b"1"), 2),
]


@pytest.mark.parametrize(("stored", "token"), [c[1:] for c in STALE], ids=[c[0] for c in STALE])
def test_stale_tokens_are_fenced(stored: IdempotencyRecord | None, token: int) -> None:
    with pytest.raises(StaleToken) as caught:
        _core.decide_complete(stored, "k", token, b"1", False, NOW, KEEP)
    assert caught.value.details == {"key": "k", "token": token}
    assert "'k'" in str(caught.value)
    with pytest.raises(StaleToken):
        _core.decide_phase(stored, "k", token, "p", b"1", NOW)
    assert not _core.decide_release(stored, token, NOW)


def test_complete_stores_the_result() -> None:
    held = rec(lease_until_ms=NOW - 1, phases={"p": b"2"})  # a lapsed lease nobody took
    done = _core.decide_complete(held, "k", 2, b'"r"', True, NOW, KEEP)
    assert done == msgspec.structs.replace(
        held,
        state="completed",
        result=b'"r"',
        error=True,
        lease_until_ms=0,
        expires_ms=NOW + KEEP,
        updated_ms=NOW,
    )


def test_phase_adds_a_recovery_point() -> None:
    held = rec(phases={"a": b"1"})
    after = _core.decide_phase(held, "k", 2, "b", b"2", NOW)
    assert after.phases == {"a": b"1", "b": b"2"} and after.updated_ms == NOW
    assert held.phases == {"a": b"1"}, "the stored record was mutated"
    assert _core.decide_phase(after, "k", 2, "a", b"9", NOW).phases["a"] == b"9"


def test_release() -> None:
    assert _core.decide_release(rec(), 2, NOW)
    assert _core.decide_release(rec(lease_until_ms=NOW - 1), 2, NOW)
    # Nothing recorded: the record goes; phases recorded: only the lease goes.
    assert _core.after_release(rec(), NOW) is None
    kept = _core.after_release(rec(phases={"p": b"1"}), NOW)
    assert kept is not None and kept.lease_until_ms == NOW and kept.token == 2
    claim, taken = _core.decide_claim(kept, "k", "fp", NOW, LEASE, KEEP)
    assert claim.outcome == "claimed" and taken is not None and taken.token == 3
    assert taken.phases == {"p": b"1"}
    assert _core.settled(kept, NOW)


@pytest.mark.parametrize(
    ("stored", "settled"),
    [
        (None, True),
        (rec(), False),
        (rec(lease_until_ms=NOW), True),
        (rec(state="completed", result=b"1"), True),
        (rec(expires_ms=NOW), True),
    ],
)
def test_settled(stored: IdempotencyRecord | None, settled: bool) -> None:
    assert _core.settled(stored, NOW) is settled


def test_live() -> None:
    assert _core.live(rec(expires_ms=NOW + 1), NOW) is not None
    assert _core.live(rec(expires_ms=NOW), NOW) is None
    assert _core.live(None, NOW) is None


def test_record_encoding_round_trips() -> None:
    full = rec(
        state="completed", result=bytes(range(256)), error=True, phases={"a": b"\x00\xff", "b": b""}
    )
    for record in (rec(), full):
        assert _core.decode_record(_core.encode_record(record)) == record


# --- facade settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"lease_ms": 99},
        {"lease_ms": 1.5},
        {"retention_ms": 50},
        {"lease_ms": 2_000, "retention_ms": 1_000},
        {"lease_ms": True},
    ],
)
def test_bad_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        Idempotency.open("memory://", **settings)
