"""Errors that point the right way (issue 9, item 8).

Each message is checked as a person reads it: it names the offending value
or path, says what to do, carries no Python reprs, and comes with the exit
status of its family. Read-only file systems are real read-only bind mounts.
"""

from __future__ import annotations

import contextlib
import gc
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from unbundled import Idempotency, Log, NotFound, UsageError, backends
from unbundled.backends import SERVES, MemoryBackend, SqliteBackend
from unbundled.backends.nats import NatsBackend
from unbundled.backends.postgres import PostgresBackend
from unbundled.backends.redis import RedisBackend
from unbundled.cli import cli
from unbundled.consistency import KV
from unbundled.consistency.kv.model import model as kv_model
from unbundled.errors import BackendError, Unavailable
from unbundled.transaction import capabilities

from .test_cli import run

BYTES_REPR = re.compile(r"(^|[\s(\[{,=:])b['\"]")  # b'5' after a space, bracket, ...
REFUSED_NATS = "nats://127.0.0.1:1"  # nothing listens on port 1: refused at once


def invoke(*args: str, input: str | None = None) -> tuple[int, str]:
    """The CLI's exit status and stderr (no --db default: the test gives it)."""
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    assert "Traceback" not in result.stderr
    return result.exit_code, result.stderr


def assert_plain(message: str) -> None:
    """A message for people: no bytes reprs, no doubled quotes, no raw
    exception reprs, one error line."""
    assert message.startswith("error: "), message
    assert not BYTES_REPR.search(message), message
    for tell in ("''s", "Error(", "\\n"):
        assert tell not in message, f"{tell!r} in {message!r}"


# --- a missing database ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (("topics", "list"), "create a topic first (`unbundled topics create`)"),
        (("consume", "t"), "create a topic first"),
        (("events", "read", "$all"), "append an event first (`unbundled events append`)"),
        (("projections", "status"), "append an event first"),
        (("idempotency", "list"), "nothing has stored idempotency keys there yet"),
        (("idempotency", "show", "k"), "nothing has stored idempotency keys there yet"),
        (("kv", "get", "k"), "write a key first (`unbundled kv put`)"),
    ],
)
def test_a_missing_database_says_how_to_make_one_for_that_command(
    tmp_path: Path, args: tuple[str, ...], hint: str
) -> None:
    db = tmp_path / "missing.db"
    status, stderr = invoke("--db", str(db), *args)
    assert status == 3
    assert f"no database at '{db}': {hint}" in stderr
    assert_plain(stderr)
    assert not db.exists()


def test_a_directory_or_a_missing_directory_is_named(tmp_path: Path) -> None:
    status, stderr = invoke("--db", str(tmp_path), "topics", "create", "t")
    assert status == 2
    assert f"'{tmp_path}' is a directory, not a database file" in stderr
    assert_plain(stderr)
    nowhere = tmp_path / "no" / "such.db"
    status, stderr = invoke("--db", str(nowhere), "topics", "create", "t")
    assert status == 3
    assert f"cannot create '{nowhere}': there is no directory '{nowhere.parent}'" in stderr
    status, stderr = invoke("--db", str(nowhere), "events", "read", "$all")
    assert status == 3
    assert f"no database at '{nowhere}': there is no directory '{nowhere.parent}'" in stderr
    # The library says the same, whatever opens it.
    with pytest.raises(UsageError, match="is a directory"):
        Log.open(tmp_path)
    with pytest.raises(NotFound, match="there is no directory"):
        Idempotency.open(f"sqlite:///{nowhere}")


# --- URLs: which command takes which ----------------------------------------------


@pytest.mark.parametrize(
    ("url", "command", "args", "store", "takes"),
    [
        ("redis://127.0.0.1:6379", "events read", ("$all",), backends.EVENTS, "nats://"),
        (
            "redis://127.0.0.1:6379",
            "events append",
            ("s", "--type", "A"),
            backends.EVENTS,
            "memory://",
        ),
        ("redis://127.0.0.1:6379", "kv get", ("k",), backends.KV, "nats://"),
        ("redis://127.0.0.1:6379", "topics list", (), backends.LOG, "postgresql://"),
        ("rediss://127.0.0.1:6379", "produce", ("t",), backends.LOG, "a SQLite file"),
    ],
)
def test_a_store_that_does_not_serve_the_command_is_named_with_those_that_do(
    url: str, command: str, args: tuple[str, ...], store: str, takes: str
) -> None:
    """Refused before connecting, naming the command, what it works on and
    the URLs it takes (a nats:// event store used to hear about "the log")."""
    status, stderr = invoke("--db", url, *command.split(), *args)
    assert status == 8
    scheme = url.split("://", maxsplit=1)[0].replace("rediss", "redis")
    assert f"`unbundled {command}` works on {store}, which {scheme}:// " in stderr
    assert takes in stderr and "does not serve" in stderr
    assert_plain(stderr)


def test_db_help_says_which_commands_take_each_url() -> None:
    result = CliRunner().invoke(cli, ["--help"], terminal_width=200)
    text = " ".join(result.stdout.split())
    assert "?mode=ro" in text and "memory://" in text
    assert "postgresql://user@host/db?schema=name for topics, produce, consume" in text
    assert "redis://host:port/db?prefix=name for idempotency;" in text
    assert "nats://host:port?bucket=name for topics, produce, consume, groups" in text


BACKENDS = {
    "memory": MemoryBackend,
    "sqlite": SqliteBackend,
    "postgresql": PostgresBackend,
    "redis": RedisBackend,
    "nats": NatsBackend,
}


@pytest.mark.parametrize("scheme", list(SERVES))
def test_the_table_of_what_each_url_serves_agrees_with_the_backends(scheme: str) -> None:
    """SERVES (which the CLI's help and errors come from) against the backend
    classes themselves: the capabilities (protocols) each implements."""
    cls = BACKENDS[scheme]
    serves = SERVES[scheme]
    for part in (backends.LOG, backends.EVENTS, backends.IDEMPOTENCY, backends.KV):
        lacking = capabilities.missing(cls, part)
        assert (not lacking) == (part in serves), (part, [p.__name__ for p in lacking])


# --- read-only files ----------------------------------------------------------------


@contextlib.contextmanager
def read_only_view(source: Path, target: Path) -> Iterator[Path]:
    """``source`` mounted read-only at ``target`` (a bind mount; root only)."""
    target.mkdir()
    bind = ["mount", "--bind", str(source), str(target)]
    bound = subprocess.run(bind, capture_output=True, check=False)
    if bound.returncode != 0:
        pytest.skip(f"no bind mounts here ({bound.stderr.decode().strip()}): needs root")
    try:
        remount = ["mount", "-o", "remount,ro,bind", str(target)]
        subprocess.run(remount, check=True, capture_output=True)
        yield target
    finally:
        # A failed open's statements live on in its exception's traceback
        # (a reference cycle) and keep the file open until collected.
        gc.collect()
        subprocess.run(["umount", str(target)], check=True, capture_output=True)


READS = [
    ("topics", "list"),
    ("topics", "describe", "t"),
    ("groups", "list"),
    ("consume", "t", "--from-beginning"),
    ("events", "read", "$all"),
    ("events", "streams"),
    ("events", "subscribe", "--after", "0", "--timeout", "0"),
    ("projections", "status"),
    ("idempotency", "list"),
    ("kv", "get", "k"),
]


def fill(db: Path) -> None:
    run(str(db), "topics", "create", "t")
    run(str(db), "produce", "t", input="hello\n")
    run(str(db), "events", "append", "s-1", "--type", "Opened")
    run(str(db), "kv", "put", "k", "v")


def test_read_commands_work_on_a_read_only_file_system(tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.mkdir()
    fill(source / "x.db")
    with read_only_view(source, tmp_path / "ro") as view:
        db = str(view / "x.db")
        for args in READS:
            status, stderr = invoke("--db", db, *args)
            assert status == 0, (args, stderr)
        assert run(db, "consume", "t", "--from-beginning").stdout == "hello\n"
        # A write says why it cannot, and what reads instead.
        status, stderr = invoke("--db", db, "produce", "t", input="more\n")
        assert status == 7
        assert f"{db} cannot be written here (a read-only file system or no permission)" in stderr
        assert "?mode=ro" in stderr
        assert_plain(stderr)
        assert sorted(p.name for p in view.iterdir()) == ["x.db"]  # nothing created


def test_a_write_ahead_log_on_a_read_only_file_system(tmp_path: Path) -> None:
    """A copy taken while a writer had the file open: with its index (-shm)
    the committed records in the -wal are read; without it they cannot be,
    which is an error, never an answer that misses them."""
    with Log.open(tmp_path / "live.db", sync="off") as log:
        log.create_topic("t")
        log.append("t", b"in the wal")
        for name, parts in (("whole", ("", "-wal", "-shm")), ("torn", ("", "-wal"))):
            (tmp_path / name).mkdir()
            for part in parts:
                shutil.copy(tmp_path / f"live.db{part}", tmp_path / name / f"x.db{part}")
    with read_only_view(tmp_path / "whole", tmp_path / "ro-whole") as view:
        assert run(str(view / "x.db"), "consume", "t", "--from-beginning").stdout == "in the wal\n"
    with read_only_view(tmp_path / "torn", tmp_path / "ro-torn") as view:
        status, stderr = invoke("--db", str(view / "x.db"), "topics", "list")
        assert status == 7
        assert "holds commits that were never checkpointed" in stderr
        with pytest.raises(BackendError, match="never checkpointed"):
            Log.open(f"sqlite:///{view / 'x.db'}?mode=ro")


def test_mode_ro_refuses_writes_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    fill(db)
    with Log.open(f"sqlite:///{db}?mode=ro") as log:
        assert [r.value for r in log.read("t")] == [b"hello"]
        with pytest.raises(UsageError, match="opened read-only"):
            log.append("t", b"no")
    with pytest.raises(NotFound, match="no database at"):
        Log.open(f"sqlite:///{tmp_path / 'absent.db'}?mode=ro")
    assert not (tmp_path / "absent.db").exists()
    with pytest.raises(UsageError, match="the only option is mode=ro"):
        Log.open(f"sqlite:///{db}?journal=off")


# --- other messages -------------------------------------------------------------------


def test_check_isolation_takes_a_plain_path(tmp_path: Path) -> None:
    db = tmp_path / "iso.db"
    args = ("check", "isolation", str(db), "--test", "G0", "--level", "serializable", "--json")
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert '"test": "G0"' in result.stdout


@pytest.mark.parametrize("url", ["memory://", "sqlite"])
def test_a_result_that_cannot_be_stored_is_a_usage_error_naming_its_type(
    tmp_path: Path, url: str
) -> None:
    class Receipt:
        """Not JSON: msgspec cannot encode it."""

    store = url if url == "memory://" else str(tmp_path / "idem.db")
    with Idempotency.open(store) as idem:
        with pytest.raises(UsageError, match="cannot store a result of type Receipt") as info:
            idem.call("order-1", {"n": 1}, lambda attempt: Receipt())
        assert not isinstance(info.value, TypeError)
        assert idem.get("order-1") is None  # nothing stored, the key is free again
        assert idem.call("order-1", {"n": 1}, lambda attempt: {"ok": True}) == {"ok": True}


def test_a_refused_nats_connection_is_said_in_words() -> None:
    with pytest.raises(Unavailable) as info:
        KV.open(REFUSED_NATS)
    assert info.value.message == (
        f"cannot connect to NATS at {REFUSED_NATS}: connection refused "
        "(is nats-server running there, with JetStream?)"
    )
    status, stderr = invoke("--db", REFUSED_NATS, "kv", "get", "k")
    assert status == 7
    assert_plain(stderr)


def test_bytes_in_checker_messages_read_as_text() -> None:
    kv = kv_model()
    assert kv.operation_text(("write", "k", b"5"), 1) == "write('k', '5') -> 1"
    assert kv.operation_text(("read", "k"), (b"5", 1)) == "read('k') -> ('5', 1)"
    assert kv.state_text(frozenset({("k", (b"5", 1))})) == "'k': '5'@1"
    assert kv.operation_text(("write", "k", b"\xff"), 1) == "write('k', b'\\xff') -> 1"


def test_a_topic_name_is_not_followed_by_a_quoted_possessive(tmp_path: Path) -> None:
    db = str(tmp_path / "raw.db")
    run(db, "topics", "create", "raw", "--record-bytes-max", "10")
    too_big = run(db, "produce", "raw", "--key", "k", input="x" * 10 + "\n", code=5)
    assert "record of 11 bytes exceeds the record_bytes_max of topic 'raw' (10 bytes)" in (
        too_big.stderr
    )
    assert_plain(too_big.stderr.splitlines()[-1])


BAD_INVOCATIONS = [
    ("--db", "{tmp}", "topics", "list"),
    ("--db", "{tmp}/no/x.db", "produce", "t"),
    ("--db", "{tmp}/x.db", "events", "read", "$all"),
    ("--db", "{tmp}/x.db", "idempotency", "show", "k"),
    ("--db", "redis://127.0.0.1:6379", "events", "read", "$all"),
    ("--db", "redis://127.0.0.1:6379", "groups", "list"),
    ("--db", "sqlite://x.db", "topics", "list"),
    ("--db", "sqlite:///x.db?cache=shared", "topics", "list"),
    ("--db", "bogus://x", "topics", "list"),
    ("--db", REFUSED_NATS, "kv", "put", "k", "v"),
]


@pytest.mark.parametrize("args", BAD_INVOCATIONS, ids=lambda a: " ".join(a[1:]))
def test_every_error_message_is_one_plain_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    """The siblings: whatever goes wrong at opening, one plain line that
    names the value, and a family exit status (never 1, never a traceback)."""
    status, stderr = invoke(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert status in (2, 3, 7, 8), stderr
    assert_plain(stderr)
    assert stderr.count("\n") == 1
