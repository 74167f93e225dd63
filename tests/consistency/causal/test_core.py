"""The causal store's pure core: dotted version vectors, siblings and
contexts, causal delivery, sessions; and the simulated network's faults."""

from __future__ import annotations

import pickle
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unbundled import CorruptionError, LimitExceeded, SessionBehind, UsageError, limits
from unbundled.consistency.causal import Context, ReplicaCore, Session, Update
from unbundled.consistency.causal._core import (
    apply_to_key,
    covers,
    decode_update,
    encode_update,
    merge,
)
from unbundled.testing.netsim import NetConfig, Network


def exchange(*cores: ReplicaCore, updates: list[Update]) -> None:
    """Deliver every update to every core (in the given order, buffering as needed)."""
    for core in cores:
        for update in updates:
            core.receive(update)


def values(core: ReplicaCore, key: str) -> list[bytes]:
    return sorted(core.peek(key).values)


# --- siblings and contexts ---------------------------------------------------------------


def test_concurrent_writes_become_siblings_everywhere() -> None:
    a, b = ReplicaCore("a"), ReplicaCore("b")
    ua = a.write("k", b"from-a")
    ub = b.write("k", b"from-b")
    exchange(a, b, updates=[ua, ub])
    for core in (a, b):
        read = core.read("k")
        assert sorted(read.values) == [b"from-a", b"from-b"]
        assert read.conflict
        with pytest.raises(UsageError):
            _ = read.value
    assert a.digest() == b.digest()


def test_a_write_with_the_context_supersedes_exactly_the_siblings_read() -> None:
    a, b, c = ReplicaCore("a"), ReplicaCore("b"), ReplicaCore("c")
    ua, ub = a.write("k", b"1"), b.write("k", b"2")
    exchange(a, b, c, updates=[ua, ub])
    seen = c.read("k")
    assert sorted(seen.values) == [b"1", b"2"]
    # A third write, concurrent with the read, arrives before the resolution.
    uc = b.write("k", b"3")
    c.receive(uc)
    resolution = c.write("k", b"1+2", context=seen.context)
    assert sorted(c.peek("k").values) == [b"1+2", b"3"]  # 3 was not seen: it stays
    exchange(a, b, updates=[uc, resolution])
    assert {core.digest() for core in (a, b, c)} == {c.digest()}
    final = a.read("k")
    resolved = a.write("k", b"all", context=final.context)
    assert a.peek("k").values == (b"all",)
    exchange(b, c, updates=[resolved])
    assert values(b, "k") == values(c, "k") == [b"all"]


def test_a_write_after_reading_on_the_same_replica_is_no_false_sibling() -> None:
    a = ReplicaCore("a")
    a.write("k", b"1")
    for n in range(2, 6):
        a.write("k", b"%d" % n, context=a.read("k").context)
    assert a.read("k").values == (b"5",)
    assert a.read("k").context.vector() == {"a": 5}


def test_a_blind_write_adds_a_sibling_and_a_delete_is_a_tombstone() -> None:
    a = ReplicaCore("a")
    a.write("k", b"1")
    a.write("k", b"2")  # no context: does not supersede 1
    assert sorted(a.read("k").values) == [b"1", b"2"]
    a.write("k", None, context=a.read("k").context)
    read = a.read("k")
    assert read.values == () and read.value is None
    assert len(read.siblings) == 1 and read.siblings[0].value is None
    assert not read.conflict
    assert read.context.vector() == {"a": 3}


def test_a_write_whose_client_saw_a_value_without_its_context_supersedes_nothing() -> None:
    """Guarantee 2 as documented: having seen a value (in the session) is not
    enough; only a write that passes the read's context supersedes it."""
    a, b = ReplicaCore("a"), ReplicaCore("b")
    b.apply(a.write("k", b"first"))
    me = Session()
    assert b.read("k", me).values == (b"first",)  # the client has seen it
    b.write("k", b"blind", session=me)
    assert sorted(b.read("k").values) == [b"blind", b"first"]
    b.write("k", b"resolved", context=b.read("k", me).context, session=me)
    assert b.read("k").values == (b"resolved",)


def test_delete_concurrent_with_a_write_keeps_the_write() -> None:
    a, b = ReplicaCore("a"), ReplicaCore("b")
    first = a.write("k", b"v")
    exchange(b, updates=[first])
    gone = a.write("k", None, context=a.read("k").context)
    kept = b.write("k", b"v2", context=b.read("k").context)
    exchange(a, b, updates=[gone, kept])
    assert values(a, "k") == values(b, "k") == [b"v2"]
    assert len(a.peek("k").siblings) == 2  # the tombstone stays, as a sibling


def test_a_context_is_for_its_key_only_and_survives_a_token() -> None:
    a = ReplicaCore("a")
    a.write("k", b"1")
    context = a.read("k").context
    assert Context.from_token(context.token()) == context
    with pytest.raises(UsageError):
        a.write("other", b"x", context=context)
    with pytest.raises(UsageError):
        Context.from_token("not a token!")
    with pytest.raises(UsageError):
        Context.from_token(Session({"a": 1}).token())


def test_a_context_the_replica_has_not_caught_up_with_is_refused() -> None:
    a, b = ReplicaCore("a"), ReplicaCore("b")
    a.write("k", b"1")
    context = a.read("k").context
    with pytest.raises(SessionBehind):
        b.write("k", b"2", context=context)
    assert b.applied == {} and b.store == {}


# --- causal delivery ---------------------------------------------------------------------


def test_an_update_waits_for_its_causes_from_another_replica() -> None:
    a, b, c = ReplicaCore("a"), ReplicaCore("b"), ReplicaCore("c")
    question = a.write("q", b"how?")
    b.receive(question)
    answer = b.write("r", b"like this", context=b.read("r").context)
    assert answer.deps == {"a": 1}
    assert c.receive(answer) == []  # the cause has not arrived
    assert c.peek("r").values == () and len(c.pending) == 1
    assert c.receive(question) == [question, answer]  # both, cause first
    assert c.peek("r").values == (b"like this",) and not c.pending


def test_duplicates_and_reordering_change_nothing() -> None:
    a, b = ReplicaCore("a"), ReplicaCore("b")
    updates = [
        a.write(f"k{n % 3}", b"%d" % n, context=a.read(f"k{n % 3}").context) for n in range(20)
    ]
    shuffled = updates * 2
    random.Random(3).shuffle(shuffled)
    for update in shuffled:
        b.receive(update)
    assert b.digest() == a.digest() and not b.pending


def test_a_full_buffer_drops_only_what_cannot_be_delivered() -> None:
    a = ReplicaCore("a")
    updates = [a.write("k", b"%d" % n) for n in range(10)]
    b = ReplicaCore("b", pending_max=3)
    for update in reversed(updates[1:]):
        b.receive(update)
    assert len(b.pending) == 3  # the rest were dropped; anti-entropy re-sends them
    assert b.receive(updates[0]) == [updates[0]]  # deliverable: taken although full
    for update in updates:
        b.receive(update)
    assert b.applied == {"a": 10} and not b.pending


def test_missing_lists_what_a_peer_lacks_in_a_causal_order() -> None:
    a, b = ReplicaCore("a", keep_history=True), ReplicaCore("b", keep_history=True)
    ua = [a.write("x", b"%d" % n) for n in range(3)]
    exchange(b, updates=ua)
    ub = b.write("y", b"y")
    missing = b.missing({"a": 1}, 10)
    assert [(u.origin, u.seq) for u in missing] == [("a", 2), ("a", 3), ("b", 1)]
    assert b.missing({"a": 1}, 2) == missing[:2]
    assert ub in missing
    with pytest.raises(UsageError):
        ReplicaCore("c").missing({}, 1)


def test_applying_out_of_causal_order_is_refused_as_corruption() -> None:
    a = ReplicaCore("a")
    first, second = a.write("k", b"1"), a.write("k", b"2")
    b = ReplicaCore("b")
    with pytest.raises(CorruptionError):
        b.apply(second)
    # A dot that is not the next one of its replica for the key.
    with pytest.raises(CorruptionError):
        apply_to_key(None, second)
    assert b.store == {}
    assert decode_update(encode_update(first)) == first
    with pytest.raises(CorruptionError):
        decode_update(b"\x93garbage")


# --- sessions ----------------------------------------------------------------------------


def test_a_session_is_served_only_by_a_replica_that_caught_up() -> None:
    a, b = ReplicaCore("a"), ReplicaCore("b")
    me = Session()
    update = a.write("k", b"mine", session=me)
    assert me.vector == {"a": 1}
    with pytest.raises(SessionBehind) as refused:
        b.read("k", me)
    assert refused.value.retryable and refused.value.details["missing"] == {"a": 1}
    with pytest.raises(SessionBehind):
        b.write("other", b"x", session=me)  # writes follow reads
    assert b.store == {}
    b.receive(update)
    assert b.read("k", me).values == (b"mine",)
    err = pickle.loads(pickle.dumps(refused.value))
    assert isinstance(err, SessionBehind) and err.details == refused.value.details


def test_reads_add_what_they_show_to_the_session() -> None:
    a, b = ReplicaCore("a"), ReplicaCore("b")
    exchange(a, updates=[b.write("k", b"from-b")])
    me = Session()
    a.read("k", me)
    assert me.vector == {"b": 1}  # not a's whole vector: only what was shown
    assert Session.from_token(me.token()).vector == me.vector
    with pytest.raises(UsageError):
        Session.from_token("@@")


def test_bad_arguments_are_usage_errors() -> None:
    core = ReplicaCore("a")
    with pytest.raises(UsageError):
        ReplicaCore("")
    with pytest.raises(UsageError):
        core.write("", b"x")
    with pytest.raises(UsageError):
        core.write("k", "text")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        core.write("k", b"x", context="ctx")  # type: ignore[arg-type]
    with pytest.raises(LimitExceeded):
        core.write("k" * (limits.causal_key_bytes_max + 1), b"x")
    with pytest.raises(LimitExceeded):
        core.write("k", b"x" * (limits.causal_value_bytes_max + 1))
    assert core.applied == {}


# --- vectors -------------------------------------------------------------------------------

vectors = st.dictionaries(st.sampled_from("abcd"), st.integers(1, 5), max_size=4)


@given(vectors, vectors, vectors)
def test_merge_is_a_join(a: dict[str, int], b: dict[str, int], c: dict[str, int]) -> None:
    assert merge(a, b) == merge(b, a)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert covers(merge(a, b), a) and covers(merge(a, b), b)
    assert covers(a, b) == (merge(a, b) == a)


# --- the simulated network -----------------------------------------------------------------


def test_the_network_delays_reorders_duplicates_and_cuts() -> None:
    config = NetConfig(delay_ms_min=1, delay_ms_max=100, duplicate_probability=0.5)
    net: Network[int] = Network(["a", "b", "c"], random.Random(1), config)
    for n in range(50):
        net.send("a", "b", n)
    net.advance(1000)
    got = [m for _, _, m in net.deliver_due()]
    assert sorted(set(got)) == list(range(50))  # no loss configured
    assert len(got) > 50 and got != sorted(got)  # duplicated and reordered
    net.send("a", "c", 1)
    net.partition([["a"], ["b", "c"]])
    net.send("a", "b", 2)
    net.advance(1000)
    assert list(net.deliver_due()) == []  # cut when sent, and cut in flight
    assert net.dropped >= 2
    net.heal()
    net.send("b", "a", 3)
    net.advance(1000)
    assert [m for _, _, m in net.deliver_due()] in ([3], [3, 3])
    with pytest.raises(UsageError):
        net.partition([["z"]])
    with pytest.raises(UsageError):
        NetConfig(drop_probability=2.0)


def test_the_network_is_a_function_of_its_seed() -> None:
    def run(seed: int) -> list[str]:
        net: Network[int] = Network(["a", "b"], random.Random(seed), NetConfig())
        for n in range(30):
            net.send("a", "b", n, str(n))
        net.advance(100)
        return net.trace + [str(m) for _, _, m in net.deliver_due()]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_the_docstring_examples_run() -> None:
    import doctest

    from unbundled.consistency.causal import api
    from unbundled.testing import netsim

    for module in (api, netsim):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
