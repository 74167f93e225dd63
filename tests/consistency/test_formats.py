"""History files: what each format means, and errors that name file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unbundled import UsageError
from unbundled.consistency.checker import (
    UNKNOWN,
    History,
    Operation,
    Recorder,
    check,
    generate_history,
    kv,
    parse_history,
    register,
    to_jsonl,
)
from unbundled.consistency.checker._formats import detect, resolve

JEPSEN = """\
INFO  jepsen.util - 0\t:invoke\t:write\t4
INFO  jepsen.util - 1\t:invoke\t:read\tnil
INFO  jepsen.util - 0\t:ok\t:write\t4
INFO  jepsen.util - 1\t:ok\t:read\t4
INFO  jepsen.util - 2\t:invoke\t:cas\t[1 3]
INFO  jepsen.util - 2\t:fail\t:cas\t[1 3]
INFO  jepsen.util - 3\t:invoke\t:cas\t[4 1]
INFO  jepsen.util - 3\t:info\t:cas\t:timed-out
INFO  jepsen.util - 4\t:invoke\t:read\tnil
INFO  jepsen.util - 4\t:fail\t:read\t:timed-out
INFO  jepsen.util - 5\t:invoke\t:cas\t[4 2]
INFO  jepsen.util - 5\t:ok\t:cas\t[4 2]
INFO  jepsen.util - 6\t:invoke\t:write\t0
"""


def rows(text: str, fmt: str, model: str = "register") -> list[tuple[Any, ...]]:
    history = parse_history("h.txt", fmt, model, text=text)
    return [(o.client, o.input, o.output, o.call_time, o.return_time) for o in history]


def test_jepsen_events_become_operations() -> None:
    assert rows(JEPSEN, "jepsen") == [
        (0, ("write", 4), None, 1.0, 3.0),
        (1, ("read",), 4, 2.0, 4.0),
        (2, ("cas", 1, 3), False, 5.0, 6.0),  # failed cas: completed, did not swap
        (3, ("cas", 4, 1), UNKNOWN, 7.0, None),  # info: never returned
        (4, ("read",), UNKNOWN, 9.0, 10.0),  # timed-out read: returned, any value
        (5, ("cas", 4, 2), True, 11.0, 12.0),
        (6, ("write", 0), UNKNOWN, 13.0, None),  # open at the end of the file
    ]
    assert check(parse_history("h", "jepsen", text=JEPSEN), register()).ok


def test_porcupine_kv_edn_maps() -> None:
    text = (
        '{:process 3, :type :invoke, :f :append, :key "7", :value "x 3 12 y"}\n'
        '{:process 0, :type :invoke, :f :get, :key "7", :value nil}\n'
        '{:process 3, :type :ok, :f :append, :key "7", :value "x 3 12 y"}\n'
        '{:process 0, :type :ok, :f :get, :key "7", :value "x 3 12 y"}\n'
        '{:process 1, :type :invoke, :f :put, :key "say \\"hi\\"", :value "v"}\n'
        '{:process 1, :type :ok, :f :put, :key "say \\"hi\\"", :value "v"}\n'
    )
    assert rows(text, "porcupine-kv", "kv") == [
        (3, ("append", "7", "x 3 12 y"), None, 1.0, 3.0),
        (0, ("get", "7"), "x 3 12 y", 2.0, 4.0),
        (1, ("put", 'say "hi"', "v"), None, 5.0, 6.0),
    ]
    assert check(parse_history("h", "porcupine-kv", "kv", text=text), kv(initial="")).ok


def jsonl(*events: dict[str, Any]) -> str:
    return "\n".join(json.dumps(e) for e in events) + "\n"


def test_jsonl_register_with_times() -> None:
    text = jsonl(
        {"process": 1, "type": "invoke", "f": "write", "value": 3, "time": 10},
        {"process": 2, "type": "invoke", "f": "read", "time": 11},
        {"process": 1, "type": "ok", "f": "write", "time": 12},
        {"process": 2, "type": "ok", "f": "read", "value": 3, "time": 15},
        {"client": "c", "type": "invoke", "f": "cas", "value": [3, 4], "time": 16},
        {"client": "c", "type": "info", "time": 17},
        {"process": 1, "type": "invoke", "f": "cas", "value": [9, 1], "time": 18},
        {"process": 1, "type": "fail", "time": 19},
        {"process": 1, "type": "invoke", "f": "write", "value": [1, 2], "time": 20},
        {"process": 1, "type": "fail", "time": 21},  # a failed write: no effect, dropped
        {"process": 1, "type": "invoke", "f": "delete", "time": 22},
        {"process": 1, "type": "ok", "time": 23},
    )
    assert rows(text, "jsonl") == [
        (1, ("write", 3), None, 10.0, 12.0),
        (2, ("read",), 3, 11.0, 15.0),
        ("c", ("cas", 3, 4), UNKNOWN, 16.0, None),
        (1, ("cas", 9, 1), False, 18.0, 19.0),
        (1, ("delete",), None, 22.0, 23.0),
    ]


def test_jsonl_kv_line_numbers_as_times(tmp_path: Path) -> None:
    path = tmp_path / "kv.jsonl"
    path.write_text(
        jsonl(
            {"process": 0, "type": "invoke", "f": "put", "key": "a", "value": {"x": [1]}},
            {"process": 0, "type": "ok"},
        )
        + "\n"  # blank lines are skipped but still count
        + jsonl(
            {"process": 0, "type": "invoke", "f": "get", "key": "a"},
            {"process": 0, "type": "ok", "f": "get", "value": {"x": [1]}},
        )
    )
    history = parse_history(path, "jsonl", "kv")
    assert [(o.input, o.output, o.call_time, o.return_time) for o in history] == [
        (("put", "a", (("x", (1,)),)), None, 1.0, 2.0),
        (("get", "a"), (("x", (1,)),), 4.0, 5.0),
    ]
    assert history.source == str(path)
    assert check(history, kv()).ok


BAD_JSONL = [
    ("{not json", "h.jsonl:1: not JSON"),
    ("[1, 2]", "h.jsonl:1: each line must be a JSON object"),
    ('{"type": "invoke", "f": "read"}', "h.jsonl:1: needs a process"),
    ('{"process": 1, "f": "read"}', 'h.jsonl:1: needs a "type"'),
    ('{"process": 1, "type": "invoke"}', "h.jsonl:1: an invoke needs an operation"),
    ('{"process": 1, "type": "invoke", "f": "frob"}', "h.jsonl:1: unknown operation 'frob'"),
    ('{"process": 1, "type": "ok"}', "h.jsonl:1: process 1 completes a call it never invoked"),
    ('{"process": 1, "type": "invoke", "f": "cas", "value": 3}', "h.jsonl:1: cas needs"),
    (
        '{"process": 1, "type": "invoke", "f": "read", "key": "k"}',
        "h.jsonl:1: this history has keys",
    ),
    ('{"process": 1, "type": "invoke", "f": "append", "value": "s"}', "h.jsonl:1: append needs"),
    (
        '{"process": 1, "type": "invoke", "f": "read"}\n'
        '{"process": 1, "type": "invoke", "f": "read"}',
        "h.jsonl:2: process 1 invokes while its call on line 1 is open",
    ),
    (
        '{"process": 1, "type": "invoke", "f": "read"}\n{"process": 1, "type": "ok", "f": "write"}',
        "h.jsonl:2: completes 'write' but line 1 invoked 'read'",
    ),
    (
        '{"process": 1, "type": "invoke", "f": "read"}\n{"process": 1, "type": "done"}',
        "h.jsonl:2: unknown event type 'done'",
    ),
    (
        '{"process": 1, "type": "invoke", "f": "read", "time": 1}\n{"process": 1, "type": "ok"}',
        'h.jsonl:2: "time" must be on every line or on none',
    ),
    ('{"process": 1, "type": "invoke", "f": "read", "time": "x"}', 'h.jsonl:1: "time" must be'),
    (
        '{"process": 1, "type": "invoke", "f": "read", "time": 5}\n'
        '{"process": 1, "type": "ok", "time": 4}',
        "h.jsonl:2: completion is earlier than its invoke",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_JSONL)
def test_jsonl_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_history("h.jsonl", "jsonl", "register", text=text)
    assert info.value.message.startswith(message), info.value.message
    assert info.value.details["file"] == "h.jsonl"
    assert f":{info.value.details['line']}:" in info.value.message


def test_kv_model_needs_keys() -> None:
    with pytest.raises(UsageError, match=r"h:1: --model kv needs a key"):
        parse_history("h", "jsonl", "kv", text='{"process": 1, "type": "invoke", "f": "read"}')


def test_jepsen_errors_name_file_and_line() -> None:
    with pytest.raises(UsageError, match=r"^e.log:2: not a Jepsen log line"):
        parse_history("e.log", "jepsen", text=JEPSEN.splitlines()[0] + "\ngarbage\n")
    with pytest.raises(UsageError, match=r"^e.log:1: cannot read the value 'x7'"):
        parse_history("e.log", "jepsen", text="INFO  jepsen.util - 0 :invoke :write x7\n")


def test_edn_errors_name_file_and_line() -> None:
    good = '{:process 0, :type :invoke, :f :get, :key "1", :value nil}\n'
    with pytest.raises(UsageError, match=r"^k.txt:2: cannot read EDN at column 2"):
        parse_history("k.txt", "porcupine-kv", "kv", text=good + "{[1 2]}\n")
    with pytest.raises(UsageError, match=r"^k.txt:1: missing :type"):
        parse_history("k.txt", "porcupine-kv", "kv", text="{:process 0, :f :get}\n")
    with pytest.raises(UsageError, match=r"^k.txt:1: expected one EDN map"):
        parse_history("k.txt", "porcupine-kv", "kv", text=":process 0\n")


def test_format_and_model_mismatches() -> None:
    with pytest.raises(UsageError, match="use --model register"):
        parse_history("e.log", "jepsen", "kv", text="")
    with pytest.raises(UsageError, match="use --model kv"):
        parse_history("k.txt", "porcupine-kv", "register", text="")
    with pytest.raises(UsageError, match="unknown format"):
        parse_history("x", "csv", text="")
    with pytest.raises(UsageError, match="unknown model"):
        parse_history("x", "jsonl", "queue", text="")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"missing.jsonl: cannot read"):
        parse_history(tmp_path / "missing.jsonl")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsageError, match=r"binary.jsonl: cannot read"):
        parse_history(binary)


def test_empty_files_are_empty_histories() -> None:
    for fmt, model in (("jepsen", "register"), ("porcupine-kv", "kv"), ("jsonl", "register")):
        assert len(parse_history("e", fmt, model, text="\n\n")) == 0


def test_the_format_and_model_are_told_apart_by_the_content() -> None:
    edn = '{:process 0, :type :invoke, :f :get, :key "1", :value nil}\n'
    keyed = '{"process": 1, "type": "invoke", "f": "read", "key": "k"}\n'
    plain = '{"process": 1, "type": "invoke", "f": "read"}\n'
    assert detect("h", JEPSEN) == ("jepsen", "register")
    assert detect("h", "\n" + edn) == ("porcupine-kv", "kv")
    assert detect("h", keyed) == ("jsonl", "kv")
    assert detect("h", plain) == ("jsonl", "register")
    # An explicit choice wins; auto fills in only what was not given.
    assert resolve("h", keyed, "jsonl", "auto") == ("jsonl", "kv")
    assert resolve("h", plain, "auto", "kv") == ("jsonl", "kv")
    assert resolve("h", edn, "porcupine-kv", "auto") == ("porcupine-kv", "kv")
    assert len(parse_history("h", text=JEPSEN)) == len(parse_history("h", "jepsen", text=JEPSEN))
    with pytest.raises(UsageError, match=r"^h:2: cannot tell the format .*give --format"):
        detect("h", "\nhello\n")


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    model=st.sampled_from(["register", "kv"]),
    crash_rate=st.sampled_from([0.0, 0.2]),
)
def test_to_jsonl_reads_back_as_the_same_history(seed: int, model: str, crash_rate: float) -> None:
    history = generate_history(40, keys=3, clients=4, seed=seed, crash_rate=crash_rate, model=model)
    text = to_jsonl(history)
    assert detect("h.jsonl", text) == ("jsonl", model)
    back = parse_history("h.jsonl", text=text)
    assert [(o.client, o.input, o.call_time, o.return_time) for o in back] == [
        (o.client, o.input, o.call_time, o.return_time) for o in history
    ]
    reads = [o.output for o in history if o.input[0] in ("read", "get", "cas")]
    assert reads == [o.output for o in back if o.input[0] in ("read", "get", "cas")]
    spec = register() if model == "register" else kv()
    assert check(back, spec).verdict is check(history, spec).verdict


def test_to_jsonl_keeps_failed_cas_timed_out_reads_and_crashes() -> None:
    rec = Recorder()
    rec.invoke("a", ("cas", 1, 2), time=0)
    rec.ok("a", False, time=1)
    rec.invoke("b", ("read",), time=0)
    rec.ok("b", UNKNOWN, time=2)
    rec.invoke(7, ("write", (1, 2)), time=1)
    rec.info(7)
    history = rec.history()
    lines = [json.loads(line) for line in to_jsonl(history).splitlines()]
    assert [(e["process"], e["type"]) for e in lines] == [
        ("a", "invoke"),
        ("b", "invoke"),
        ("a", "fail"),
        (7, "invoke"),
        (7, "info"),
        ("b", "fail"),
    ]
    assert lines[3]["value"] == [1, 2]
    back = parse_history("h.jsonl", text=to_jsonl(history))
    assert {(o.client, o.output, o.return_time) for o in back} == {
        ("a", False, 1),
        ("b", UNKNOWN, 2),
        (7, UNKNOWN, None),
    }


def test_to_jsonl_refuses_what_it_cannot_write_faithfully() -> None:
    def one(client: Any, input: Any, output: Any = None) -> History:
        return History.of([Operation(client, input, output, 0, 1)])

    with pytest.raises(UsageError, match="only the register and kv models"):
        to_jsonl(one("a", ("enqueue", 1)))
    with pytest.raises(UsageError, match="clients that are str or int"):
        to_jsonl(one(("a", 1), ("read",), 1))
    with pytest.raises(UsageError, match="not JSON"):
        to_jsonl(one("a", ("write", b"bytes")))
    with pytest.raises(UsageError, match="unknown answer"):
        to_jsonl(one("a", ("cas", 1, 2), UNKNOWN))
    overlapping = History.of(
        [Operation("a", ("read",), 1, 0, 5), Operation("a", ("read",), 1, 1, 2)]
    )
    with pytest.raises(UsageError, match="no faithful jsonl form"):
        to_jsonl(overlapping)
