"""Several processes on one SQLite file: concurrent writers, consumer-group
failover after SIGKILL, fencing of a paused (SIGSTOP) member, and tailing
across processes. Real processes, real file; timeouts only bound the waits."""

from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict
from pathlib import Path

from unbundled import Log, NotFound, TopicPartition
from unbundled.backends import SqliteBackend
from unbundled.testing.child import ChildProcess

from ._helpers import check_alive, reaped, spawn, wait_until


def _positions(lines: list[str]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for line in lines:
        if line.startswith("ack "):
            _, value, where = line.split(" ")
            partition, offset = where.split(":")
            assert value not in out, f"{value} acknowledged twice"
            out[value] = (int(partition), int(offset))
    return out


def test_processes_appending_to_one_file_lose_and_double_nothing(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    processes, threads, count = 4, 3, 150
    with Log.open(db, sync="full") as log, reaped() as children:
        log.create_topic("shared", 4)
        lines: dict[str, list[str]] = {}
        for n in range(processes):
            children.append(spawn("appender", db, f"p{n}", threads, count))
            lines[f"p{n}"] = []
        # This process writes too, so its writer's cached end offsets go stale
        # under it while the others commit.
        local: list[str] = []

        def write_locally() -> None:
            for i in range(200):
                position = log.append("shared", b"local-%d" % i, key=b"local")
                local.append(f"ack local-{i} {position.partition}:{position.offset}")

        writer = threading.Thread(target=write_locally)
        writer.start()

        def pump() -> None:
            for name, child in zip(lines, children, strict=True):
                lines[name].extend(child.read_lines(0))

        def finished() -> bool:
            return all("done" in got for got in lines.values())

        wait_until(finished, 120, "every appender to finish", pump)
        writer.join(timeout=60)
        assert not writer.is_alive()
        for name, child in zip(lines, children, strict=True):
            assert child.wait(30) == 0, f"{name}: {child.stderr_text()}"

        acked = _positions([line for got in lines.values() for line in got] + local)
        assert len(acked) == processes * threads * count + 200
        stored: dict[str, tuple[int, int]] = {}
        for partition, end in log.end_offsets("shared").items():
            records = list(log.scan("shared", partition))
            assert [r.offset for r in records] == list(range(end)), "offsets are not dense"
            last: dict[bytes | None, int] = {}
            for record in records:
                value = (record.value or b"").decode()
                assert value not in stored, f"{value} is stored twice"
                stored[value] = (partition, record.offset)
                # One writer thread per key: its records keep their order.
                name, _, number = value.rpartition("-")
                if record.key is not None:
                    assert last.get(record.key, -1) < int(number), f"{name} out of order"
                    last[record.key] = int(number)
        assert stored == acked  # every acknowledged record, where it was reported, nothing else


# --- consumer groups across processes -----------------------------------------------------


class Members:
    """Consumer-group member processes and what they reported."""

    def __init__(self, db: Path, children: list[ChildProcess], lease_ms: int) -> None:
        self.db = db
        self.children = children
        self.lease_ms = lease_ms
        self.procs: dict[str, ChildProcess] = {}
        self.lines: dict[str, list[str]] = defaultdict(list)
        self.dead: set[str] = set()

    def start(self, member_id: str, mode: str = "auto", instance_id: str = "") -> ChildProcess:
        """Start a member process; with ``instance_id`` a static one, whose
        real member id is in its ``ready`` line (``member_id`` is then a label)."""
        child = spawn(
            "member", self.db, "g", member_id, self.lease_ms, mode, instance_id, stdin=True
        )
        self.children.append(child)
        self.procs[member_id] = child
        return child

    def pump(self) -> None:
        for member_id, child in self.procs.items():
            self.lines[member_id].extend(child.read_lines(0))
            if member_id not in self.dead:
                check_alive(child, member_id)

    def kill(self, member_id: str) -> None:
        self.dead.add(member_id)
        self.procs[member_id].kill()
        self.lines[member_id].extend(self.procs[member_id].drain())

    def got(self, member_id: str | None = None) -> set[tuple[int, int]]:
        out = set()
        for name, lines in self.lines.items():
            if member_id is not None and name != member_id:
                continue
            for line in lines:
                if line.startswith("got "):
                    partition, offset = line[4:].split(":")
                    out.add((int(partition), int(offset)))
        return out

    def expect(self, member_id: str, prefix: str, timeout_s: float = 30.0) -> str:
        """The next line from ``member_id`` that starts with ``prefix``."""
        child = self.procs[member_id]
        line = child.wait_for(
            lambda text: text.startswith(prefix), timeout_s, self.lines[member_id]
        )
        assert line is not None, f"{member_id} never said {prefix!r}: {child.stderr_text()}"
        return line


def _owners(log: Log) -> dict[str, set[int]]:
    try:
        info = log.describe_group("g")
    except NotFound:  # nobody joined yet
        return {}
    return {m.member_id: {tp.partition for tp in m.partitions} for m in info.members}


def _drained(log: Log) -> bool:
    try:
        lag = log.lag("g")
    except NotFound:
        return False
    return bool(lag) and all(left == 0 for _, _, left in lag.values())


def _fill(log: Log, count: int) -> None:
    log.append_batch("work", [b"%d" % i for i in range(count)])
    # append_batch puts keyless records in one partition: spread some more by key.
    for i in range(count):
        log.append("work", b"k%d" % i, key=b"%d" % i)


def test_a_killed_members_partitions_move_to_the_survivors(tmp_path: Path) -> None:
    db = tmp_path / "group.db"
    with Log.open(db, sync="normal") as log, reaped() as children:
        log.create_topic("work", 6)
        _fill(log, 120)
        members = Members(db, children, lease_ms=800)
        for name in ("m0", "m1", "m2"):
            members.start(name)

        def balanced() -> bool:
            owners = _owners(log)
            return sorted(len(p) for p in owners.values()) == [2, 2, 2] and _drained(log)

        wait_until(balanced, 60, "three members sharing six partitions", members.pump)
        taken = _owners(log)["m1"]
        members.kill("m1")  # SIGKILL: it cannot leave the group; its lease must run out
        ends_at_kill = log.end_offsets("work")
        _fill(log, 120)

        def taken_over() -> bool:
            owners = _owners(log)
            return set(owners) == {"m0", "m2"} and set().union(*owners.values()) == set(range(6))

        wait_until(taken_over, 60, "the survivors to take m1's partitions", members.pump)
        wait_until(lambda: _drained(log), 60, "the survivors to catch up", members.pump)

        # Nothing lost: every offset of every partition reached some member.
        ends = log.end_offsets("work")
        everything = {(p, o) for p, end in ends.items() for o in range(end)}
        assert members.got() >= everything
        # m1's partitions' new records went to the survivors.
        later = {(p, o) for p in taken for o in range(ends_at_kill[p], ends[p])}
        assert later and later <= members.got("m0") | members.got("m2")
        committed = log.describe_group("g").committed
        assert committed == {TopicPartition("work", p): end for p, end in ends.items()}


def test_a_paused_member_cannot_commit_over_the_new_owner(tmp_path: Path) -> None:
    db = tmp_path / "fence.db"
    with Log.open(db, sync="normal") as log, reaped() as children:
        log.create_topic("work", 4)
        log.create_topic("work.out", 1)
        members = Members(db, children, lease_ms=800)
        for name in ("a0", "a1"):
            members.start(name)
        stale = members.start("s", mode="manual")
        members.expect("s", "ready")
        stale.send("poll")  # s joins, gets its share, and waits for records

        def has_share() -> bool:
            owners = _owners(log)
            return len(owners) == 3 and bool(owners.get("s"))

        wait_until(has_share, 60, "s to join the group", members.pump)
        _fill(log, 60)
        polled = members.expect("s", "polled")
        mine = {int(p) for p in polled.split(" ")[2].split(",")}
        assert mine and members.got("s"), polled

        stale.signal(signal.SIGSTOP)  # paused past its lease, like a long GC or a frozen VM

        def fenced_out() -> bool:
            owners = _owners(log)
            return "s" not in owners and set().union(*owners.values()) == set(range(4))

        wait_until(fenced_out, 60, "the others to expire s and take its partitions", members.pump)
        wait_until(lambda: _drained(log), 60, "the new owners to commit", members.pump)
        before = log.describe_group("g").committed

        stale.signal(signal.SIGCONT)
        # With positions from before the pause: a transaction (output + offsets)
        # and a plain commit are both fenced, and the transaction's output is
        # not visible either.
        stale.send("txcommit")
        answer = members.expect("s", "stale")
        assert int(answer.split(" ")[1]) in mine
        stale.send("commit")
        answer = members.expect("s", "stale")
        assert int(answer.split(" ")[1]) in mine
        assert log.describe_group("g").committed == before  # the new owners' offsets stand
        assert log.end_offsets("work.out") == {0: 0}

        # s recovers by joining again, and the group still loses nothing.
        stale.send("poll")
        _fill(log, 60)
        members.expect("s", "polled")
        stale.send("txcommit")
        members.expect("s", "committed")
        assert log.end_offsets("work.out") == {0: 1}  # now it owns what it commits
        wait_until(lambda: _drained(log), 60, "the group to catch up", members.pump)
        ends = log.end_offsets("work")
        assert members.got() >= {(p, o) for p, end in ends.items() for o in range(end)}
        stale.send("exit")
        members.expect("s", "bye")


def test_a_restarted_static_member_takes_its_partitions_back_before_its_lease(
    tmp_path: Path,
) -> None:
    """Static membership across processes: a new incarnation of a worker
    (same ``instance_id``) owns its predecessor's partitions long before the
    predecessor's lease could have run out, whether that one was SIGKILLed or
    is a paused zombie; the other member keeps its partitions throughout; the
    zombie's late transaction is fenced and its next poll tells it to stop."""
    db = tmp_path / "static.db"
    lease_s = 60.0  # what a restart would wait without static membership
    with Log.open(db, sync="normal") as log, reaped() as children:
        log.create_topic("work", 4)
        log.create_topic("work.out", 1)
        members = Members(db, children, lease_ms=int(lease_s * 1000))
        members.start("a0")
        zombie = members.start("s", mode="manual", instance_id="w1")
        zombie_id = members.expect("s", "ready").split(" ")[1]
        zombie.send("poll")

        def shared() -> bool:
            owners = _owners(log)
            return sorted(len(p) for p in owners.values()) == [2, 2]

        wait_until(shared, 60, "a0 and s to share the partitions", members.pump)
        _fill(log, 40)
        polled = members.expect("s", "polled")
        mine = {int(p) for p in polled.split(" ")[2].split(",")}
        theirs = _owners(log)["a0"]
        assert mine == _owners(log)[zombie_id] and not mine & theirs

        zombie.signal(signal.SIGSTOP)  # frozen with records it will never commit
        for label in ("s2", "s3"):
            stopped = time.monotonic()
            members.start(label, instance_id="w1")
            member_id = members.expect(label, "ready").split(" ")[1]

            def back(member_id: str = member_id) -> bool:
                return _owners(log).get(member_id) == mine

            wait_until(back, lease_s / 2, f"{label} to take w1's partitions", members.pump)
            assert time.monotonic() - stopped < lease_s, "it waited out the lease"
            assert _owners(log) == {"a0": theirs, member_id: mine}, "nothing else moved"
            wait_until(lambda: _drained(log), 60, f"{label} to catch up", members.pump)
            if label == "s2":
                # The zombie wakes: its transaction is fenced and writes nothing...
                before = log.describe_group("g").committed
                zombie.signal(signal.SIGCONT)
                zombie.send("txcommit")
                assert int(members.expect("s", "stale").split(" ")[1]) in mine
                assert log.describe_group("g").committed == before
                assert log.end_offsets("work.out") == {0: 0}
                # ...and its next poll says it was replaced, instead of rejoining.
                zombie.send("poll")
                assert members.expect("s", "fenced") == f"fenced {member_id}"
                assert _owners(log) == {"a0": theirs, member_id: mine}
                zombie.send("exit")
                members.expect("s", "bye")
                assert zombie.wait(30) == 0, zombie.stderr_text()
                members.dead.add("s")
                members.kill("s2")  # then s2 dies for real: s3 takes over
        _fill(log, 40)
        wait_until(lambda: _drained(log), 60, "the group to catch up", members.pump)
        ends = log.end_offsets("work")
        assert members.got() >= {(p, o) for p, end in ends.items() for o in range(end)}


def test_a_tailing_consumer_wakes_up_on_another_process_append(tmp_path: Path) -> None:
    db = tmp_path / "tail.db"
    with Log.open(db, sync="full") as log, reaped() as children:
        log.create_topic("tail", 2)
        child = spawn("tail", db)
        children.append(child)
        assert child.wait_for(lambda line: line == "ready", 60) is not None, child.stderr_text()
        for i in range(3):
            log.append("tail", b"hello-%d" % i, key=b"%d" % i)
            line = child.wait_for(f"got hello-{i}".__eq__, 30)
            assert line is not None, f"the tail never saw hello-{i}: {child.stderr_text()}"


def test_connections_racing_to_create_one_file_all_succeed(tmp_path: Path) -> None:
    """Regression: openers of a file being created saw it as foreign
    (``CorruptionError``: application_id 0 but tables present, read from two
    snapshots) or failed at once with "database is locked" (SQLite answers a
    concurrent switch to WAL without calling the busy handler). Threads race
    harder than processes, so this fails quickly without the fix."""
    for trial in range(100):
        opened, errors = _open_at_once(tmp_path / f"race-{trial}.db", 8)
        assert not errors, f"trial {trial}: {errors[0]!r}"
        assert opened == 8


def _open_at_once(path: Path, count: int) -> tuple[int, list[BaseException]]:
    barrier = threading.Barrier(count)
    opened: list[SqliteBackend] = []
    errors: list[BaseException] = []

    def open_it() -> None:
        barrier.wait()
        try:
            opened.append(SqliteBackend(path, sync="off", maintenance_interval_s=None))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for backend in opened:
        backend.close()
    return len(opened), errors


def test_processes_racing_to_create_one_file_all_succeed(tmp_path: Path) -> None:
    db = tmp_path / "race.db"
    with reaped() as children:
        start_at = time.time() + 1.0  # all open the missing file at about the same moment
        children.extend(spawn("create", db, start_at) for _ in range(6))
        lines: list[str] = []
        for child in children:
            assert child.wait(60) == 0, child.stderr_text()
            lines.extend(child.drain())
    acked = _positions(lines)
    assert len(acked) == 6
    with Log.open(db) as log:
        assert log.topics() == ["t"]
        stored = {
            (r.value or b"").decode(): (r.partition, r.offset)
            for p in range(2)
            for r in log.scan("t", p)
        }
    assert stored == acked


def test_a_busy_writer_does_not_starve_other_processes(tmp_path: Path) -> None:
    """Regression: while one process appended flat out, another process's writes
    (here: consumer-group heartbeats) waited seconds for the file's write lock,
    since SQLite's busy handler naps up to 100 ms between tries and the busy
    writer frees the lock only for moments. Members' leases ran out and the
    group rebalanced with nobody gone."""
    db = tmp_path / "busy.db"
    with Log.open(db, sync="full") as log, reaped() as children:
        log.create_topic("work", 4)
        log.create_topic("busy", 4)
        members = Members(db, children, lease_ms=1500)
        members.start("m0")
        members.start("m1")

        def settled() -> bool:
            owners = _owners(log)
            return sorted(len(p) for p in owners.values()) == [2, 2]

        wait_until(settled, 60, "two members sharing four partitions", members.pump)
        wait_until(lambda: False, 0.5, "", members.pump, fail=False)  # pending releases settle
        generation = log.describe_group("g").generation
        stop = threading.Event()

        def flat_out() -> None:
            while not stop.is_set():
                log.append("busy", b"x" * 100, key=b"k")

        writers = [threading.Thread(target=flat_out) for _ in range(8)]
        for writer in writers:
            writer.start()
        try:
            wait_until(stop.is_set, 4.0, "", members.pump, fail=False)  # 4 s flat out
        finally:
            stop.set()
            for writer in writers:
                writer.join(timeout=60)
        info = log.describe_group("g")
        assert {m.member_id for m in info.members} == {"m0", "m1"}
        assert info.generation == generation, "a live member was expired: its heartbeat starved"
