"""The log's contract where records and offset commits cannot share one
transaction (NATS JetStream): what is promised instead, checked.

These replace the checks marked ``records_with_offsets`` in
:mod:`unbundled.testing.contract_groups` on a target whose
``records_with_offsets`` is false (see :class:`~._log_kit.LogTarget`):

* a transaction that appends *and* commits offsets is refused with
  ``NotSupported`` naming what and where, and leaves nothing; one that only
  appends, or only commits, works;
* a fenced member's commit alone is refused (``StaleGeneration``) and
  changes no offset;
* the work a fenced member did is redone by the partition's new owner, and
  outputs appended through an idempotent producer numbered by the input's
  offsets land once: effectively-once by dedupe, instead of exactly-once
  by one transaction.
"""

from __future__ import annotations

from ..errors import NotSupported, PartitionNotFound, StaleGeneration, UsageError
from ..log import TopicPartition
from ._log_kit import Check, LogTarget, poll_until, raises, read_all, without_records_with_offsets
from .clock import SimClock


@without_records_with_offsets
def check_transaction_of_records_and_offsets_is_refused(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("a", 2)
        log.create_topic("b")
        tp = TopicPartition("b", 0)
        tx = log.transaction()
        tx.append("a", b"1", key=b"k")
        tx.commit_offsets(group="g", offsets={tp: 2})
        err = raises(NotSupported, tx.commit)
        assert err.details["backend"] == target.name, err.details
        assert "offset" in err.details["part"], err.details
        assert read_all(log, "a") == [] and log.groups() == [], "a refused transaction wrote"
        raises(UsageError, lambda: tx.append("a", b"2"))  # finished transactions refuse
        with log.transaction() as only_records:
            only_records.append_batch("b", [b"2", b"3"])
        assert [r.value for r in read_all(log, "b")] == [b"2", b"3"]
        with log.transaction() as only_offsets:
            only_offsets.commit_offsets(group="g", offsets={tp: 2})
        assert log.describe_group("g").committed == {tp: 2}
        bad = log.transaction()
        bad.commit_offsets(group="g", offsets={TopicPartition("b", 5): 1})
        raises(PartitionNotFound, bad.commit)
        assert log.describe_group("g").committed == {tp: 2}


@without_records_with_offsets
def check_fenced_work_is_redone_effectively_once(target: LogTarget) -> None:
    """A member whose lease ran out wrote part of its outputs; its commit is
    fenced; the heir redoes everything through the same producer id with the
    input offsets as sequences: every output once."""
    clock = SimClock()
    with target.open(clock) as log:
        log.create_topic("in")
        log.create_topic("out")
        inputs = [b"%d" % i for i in range(10)]
        log.append_batch("in", inputs)
        zombie = log.consumer("in", group="g", member_id="zombie", lease_ms=1000)
        records = poll_until(zombie, 10)
        outputs = log.producer("worker")
        for record in records[:6]:  # the zombie's work, cut short
            outputs.append("out", record.value, sequence=record.offset)
        clock.advance(1001)
        heir = log.consumer("in", group="g", member_id="heir", lease_ms=1000, auto_commit=False)
        again = poll_until(heir, 10)
        err = raises(StaleGeneration, zombie.commit)
        assert err.details["member_id"] == "zombie"
        assert log.describe_group("g").committed == {}, "a fenced commit changed offsets"
        redo = log.producer("worker")  # a new incarnation: the zombie's is fenced
        for record in again:
            redo.append("out", record.value, sequence=record.offset)
        heir.commit()
        assert [r.value for r in log.read("out")] == inputs, "every output exactly once"
        assert log.describe_group("g").committed == {TopicPartition("in", 0): 10}
        zombie.close()
        heir.close()


CHECKS: list[Check] = [
    check_transaction_of_records_and_offsets_is_refused,
    check_fenced_work_is_redone_effectively_once,
]
