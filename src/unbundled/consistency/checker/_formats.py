"""History files: ``jepsen``, ``porcupine-kv`` and ``jsonl``.

Every format is a sequence of *events*, one per line, Jepsen-style: an
``invoke`` starts an operation of a process, and the next ``ok``, ``fail`` or
``info`` of the same process completes it. Times are line numbers unless the
format carries its own. What each completion means:

* ``ok``: returned; the completion's value is the output of a read/get,
  ``True`` for a compare-and-set.
* ``fail``: returned *without effect*. A failed compare-and-set is kept as a
  completed cas that did not swap (output ``False``), as Porcupine does; a
  failed read (timed out) is kept with an unknown output; any other failed
  operation is dropped.
* ``info``: no answer (crash, timeout): unknown outcome, may take effect at any
  later point or never. So is an ``invoke`` still open at the end of the file.

``jepsen``: Jepsen's text log of a single register, as in Porcupine's etcd
test data::

    INFO  jepsen.util - 3  :invoke  :cas   [1 4]
    INFO  jepsen.util - 3  :fail    :cas   [1 4]

fields: process, ``:invoke``/``:ok``/``:fail``/``:info``, ``:read``/``:write``/
``:cas``, value (``nil``, an integer, ``[expected new]``, ``:timed-out``).

``porcupine-kv``: one EDN map per line, as in Porcupine's kv test data
(every key starts as ``""``)::

    {:process 3, :type :invoke, :f :append, :key "7", :value "x 3 12 y"}

``jsonl``: one JSON object per line (blank lines are skipped)::

    {"process": 1, "type": "invoke", "f": "write", "value": 3, "time": 10}
    {"process": 1, "type": "ok", "f": "write", "time": 12}
    {"process": 2, "type": "invoke", "f": "read", "time": 11}
    {"process": 2, "type": "ok", "f": "read", "value": 3, "time": 15}
    {"process": 3, "type": "invoke", "f": "cas", "value": [3, 4]}
    {"process": 3, "type": "info"}

* ``process`` (or ``client``): a string or integer; required.
* ``type``: ``invoke``, ``ok``, ``fail`` or ``info``; required.
* ``f``: ``read`` (alias ``get``), ``write`` (``put``), ``cas``, ``delete``,
  ``append``; required on ``invoke``, optional on completions (if given, it
  must match).
* ``key``: required with ``--model kv`` (on invoke), not allowed with
  ``--model register``.
* ``value``: on invoke the argument (write/put/append: the value; cas:
  ``[expected, new]``); on ``ok`` of a read the value read (``null`` =
  absent). JSON values are kept as they are; lists become tuples.
* ``time``: optional; a number on every line or on none (then the line
  number is the time). Registers and keys start absent (``null``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import UsageError
from ..history import UNKNOWN, History, Operation

__all__ = ["FORMATS", "MODELS", "detect", "parse_history", "resolve", "to_jsonl"]

#: The history file formats :func:`parse_history` reads (``format=``).
FORMATS = ("jepsen", "porcupine-kv", "jsonl")
MODELS = ("register", "kv")

_F_ALIASES = {"get": "read", "put": "write"}


def _error(file: str, line: int, message: str) -> UsageError:
    return UsageError(f"{file}:{line}: {message}", file=file, line=line)


@dataclass(frozen=True)
class _Event:
    line: int
    process: Hashable
    type: str  # invoke | ok | fail | info
    f: str | None
    key: Any
    value: Any
    time: float


def _to_input(file: str, event: _Event, model: str) -> tuple[Any, ...]:
    f = event.f
    if f is None:
        raise _error(file, event.line, "an invoke needs an operation (f)")
    if model == "kv" and event.key is None:
        raise _error(file, event.line, "--model kv needs a key on every invoke")
    if model == "register" and event.key is not None:
        raise _error(file, event.line, "this history has keys: use --model kv")
    if f == "cas":
        pair = event.value
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise _error(file, event.line, f"cas needs [expected, new], not {pair!r}")
        args: tuple[Any, ...] = (pair[0], pair[1])
    elif f in ("write", "append"):
        args = (event.value,)
    elif f in ("read", "delete"):
        args = ()
    else:
        raise _error(file, event.line, f"unknown operation {f!r}")
    if model == "kv":
        name = {"read": "get", "write": "put"}.get(f, f)
        return (name, event.key, *args)
    if f == "append":
        raise _error(file, event.line, "append needs --model kv")
    return (f, *args)


def _pair(file: str, events: Iterator[_Event], model: str) -> History:
    """Match completions to invokes (the most recent of the same process)."""
    open_calls: dict[Hashable, tuple[_Event, tuple[Any, ...]]] = {}
    ops: list[Operation] = []
    last_line = 0
    for event in events:
        last_line = event.line
        if event.type == "invoke":
            if event.process in open_calls:
                first = open_calls[event.process][0].line
                raise _error(
                    file,
                    event.line,
                    f"process {event.process!r} invokes while its call on line {first} is open",
                )
            open_calls[event.process] = (event, _to_input(file, event, model))
            continue
        if event.type not in ("ok", "fail", "info"):
            raise _error(file, event.line, f"unknown event type {event.type!r}")
        if event.process not in open_calls:
            raise _error(
                file, event.line, f"process {event.process!r} completes a call it never invoked"
            )
        call, input = open_calls.pop(event.process)
        if event.f is not None and event.f != call.f:
            raise _error(
                file,
                event.line,
                f"completes {event.f!r} but line {call.line} invoked {call.f!r}",
            )
        if event.time < call.time:
            raise _error(file, event.line, "completion is earlier than its invoke")
        op = call.f
        if event.type == "info":
            ops.append(Operation(call.process, input, UNKNOWN, call.time, None))
        elif event.type == "ok":
            output = _output(op, event.value)
            ops.append(Operation(call.process, input, output, call.time, event.time))
        elif op == "cas":
            ops.append(Operation(call.process, input, False, call.time, event.time))
        elif op == "read":
            ops.append(Operation(call.process, input, UNKNOWN, call.time, event.time))
        # Any other fail: the operation certainly had no effect; leave it out.
    for call, input in open_calls.values():
        ops.append(Operation(call.process, input, UNKNOWN, call.time, None))
    if last_line == 0:
        return History.of([], source=file)
    ops.sort(key=lambda o: o.call_time)
    return History.of(ops, source=file)


def _output(f: str | None, value: Any) -> Any:
    if f == "read":
        return value
    if f == "cas":
        return True
    return None


# --- jepsen ---------------------------------------------------------------------------

_JEPSEN_LINE = re.compile(r"jepsen\.util\s+-\s+(\S+)\s+:(\w+)\s+:([\w-]+)\s*(.*?)\s*$")


def _jepsen_value(file: str, line: int, text: str) -> Any:
    if text in ("nil", ""):
        return None
    if text.startswith(":"):  # :timed-out and friends: no value
        return None
    if text.startswith("[") and text.endswith("]"):
        return tuple(_jepsen_value(file, line, part) for part in text[1:-1].split())
    try:
        return int(text)
    except ValueError:
        raise _error(file, line, f"cannot read the value {text!r}") from None


def _jepsen_events(file: str, lines: list[str]) -> Iterator[_Event]:
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        found = _JEPSEN_LINE.search(text)
        if found is None:
            raise _error(file, number, "not a Jepsen log line (INFO jepsen.util - P :type :f v)")
        process_text, kind, f, value_text = found.groups()
        try:
            process: Hashable = int(process_text)
        except ValueError:
            process = process_text
        value = _jepsen_value(file, number, value_text)
        yield _Event(number, process, kind, f, None, value, float(number))


# --- porcupine-kv (EDN maps) ----------------------------------------------------------

_EDN_TOKEN = re.compile(r'\s*(?:,\s*)?(:[\w.?!*+-]+|"(?:[^"\\]|\\.)*"|nil|-?\d+|[{}])')


def _edn_map(file: str, line: int, text: str) -> dict[str, Any]:
    tokens: list[str] = []
    position = 0
    stripped = text.rstrip()
    while position < len(stripped):
        found = _EDN_TOKEN.match(stripped, position)
        if found is None:
            raise _error(file, line, f"cannot read EDN at column {position + 1}")
        tokens.append(found.group(1))
        position = found.end()
    if len(tokens) < 2 or tokens[0] != "{" or tokens[-1] != "}" or len(tokens) % 2:
        raise _error(file, line, "expected one EDN map {:key value, ...}")
    result: dict[str, Any] = {}
    for name, raw in zip(tokens[1:-1:2], tokens[2:-1:2], strict=True):
        if not name.startswith(":"):
            raise _error(file, line, f"map keys must be keywords, not {name}")
        result[name[1:]] = _edn_value(raw)
    return result


def _edn_value(raw: str) -> Any:
    if raw == "nil":
        return None
    if raw.startswith('"'):
        return json.loads(raw)
    if raw.startswith(":"):
        return raw[1:]
    return int(raw)


def _porcupine_kv_events(file: str, lines: list[str]) -> Iterator[_Event]:
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        fields = _edn_map(file, number, text)
        for required in ("process", "type", "f"):
            if required not in fields:
                raise _error(file, number, f"missing :{required}")
        f = _F_ALIASES.get(fields["f"], fields["f"])
        yield _Event(
            number,
            fields["process"],
            fields["type"],
            f,
            fields.get("key"),
            fields.get("value"),
            float(number),
        )


# --- jsonl ----------------------------------------------------------------------------


def _jsonl_events(file: str, lines: list[str]) -> Iterator[_Event]:
    timed: bool | None = None
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _error(file, number, f"not JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(fields, dict):
            raise _error(file, number, "each line must be a JSON object")
        process = fields.get("process", fields.get("client"))
        if process is None or not isinstance(process, (str, int)):
            raise _error(file, number, "needs a process (a string or an integer)")
        kind = fields.get("type")
        if not isinstance(kind, str):
            raise _error(file, number, 'needs a "type": invoke, ok, fail or info')
        f = fields.get("f")
        if f is not None and not isinstance(f, str):
            raise _error(file, number, '"f" must be a string')
        has_time = "time" in fields
        if timed is None:
            timed = has_time
        elif timed != has_time:
            raise _error(file, number, '"time" must be on every line or on none')
        when = fields["time"] if has_time else number
        if isinstance(when, bool) or not isinstance(when, (int, float)):
            raise _error(file, number, '"time" must be a number')
        key = fields.get("key")
        yield _Event(
            number,
            process,
            kind,
            None if f is None else _F_ALIASES.get(f, f),
            _frozen(key),
            _frozen(fields.get("value")),
            float(when),
        )


def _frozen(value: Any) -> Any:
    """JSON lists become tuples so values are hashable model states."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value


_READERS: dict[str, Callable[[str, list[str]], Iterator[_Event]]] = {
    "jepsen": _jepsen_events,
    "porcupine-kv": _porcupine_kv_events,
    "jsonl": _jsonl_events,
}


def detect(file: str, text: str) -> tuple[str, str]:
    """``(format, model)`` of a history, from its first non-blank line (and,
    for ``jsonl``, whether any line has a ``key``). A user who has to say
    ``--format jepsen`` for an obviously Jepsen file is doing the tool's job."""
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        return "jsonl", "register"  # empty: any format parses it, as an empty history
    number, first = lines[0]
    if first.startswith("{:") or first.startswith("{ :"):
        return "porcupine-kv", "kv"
    if first.startswith("{"):
        keyed = any('"key"' in line for _, line in lines)
        return "jsonl", "kv" if keyed else "register"
    if _JEPSEN_LINE.search(first):  # the same pattern the reader parses with
        return "jepsen", "register"
    raise _error(
        file,
        number,
        "cannot tell the format (not a JSON object, an EDN map or a Jepsen log line); "
        f"give --format ({', '.join(FORMATS)})",
    )


def resolve(file: str, text: str, format: str, model: str) -> tuple[str, str]:
    """``format`` and ``model`` with ``auto`` replaced by what ``text`` holds."""
    if format == "auto":
        format, found = detect(file, text)
        return format, found if model == "auto" else model
    if model != "auto":
        return format, model
    if format == "porcupine-kv" or (format == "jsonl" and '"key"' in text):
        return format, "kv"
    return format, "register"


def parse_history(
    path: str | Path, format: str = "auto", model: str = "auto", *, text: str | None = None
) -> History:
    """Read a history file (or ``text``, named ``path`` in errors).

    ``format``: one of :data:`FORMATS`, or ``auto`` (see :func:`detect`);
    ``model``: ``register`` or ``kv``, which decides the input vocabulary
    (see :mod:`._model`), or ``auto`` (what the file holds). Raises
    :class:`~unbundled.UsageError` whose message starts ``file:line:`` (and
    whose ``details`` hold ``file`` and ``line``) for a malformed line, or
    ``file:`` if the file cannot be read.
    """
    file = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{file}: cannot read: {exc}", file=file) from None
    format, model = resolve(file, text, format, model)
    if format not in _READERS:
        raise UsageError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
    if model not in MODELS:
        raise UsageError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    if format == "jepsen" and model != "register":
        raise UsageError(f"{file}: the jepsen format holds one register: use --model register")
    if format == "porcupine-kv" and model != "kv":
        raise UsageError(f"{file}: the porcupine-kv format holds a map: use --model kv")
    return _pair(file, _READERS[format](file, text.splitlines()), model)


# --- writing ---------------------------------------------------------------------------

# (input name, input length) -> (jsonl f, keyed): the register and kv vocabularies,
# told apart by length where they share a name (cas, delete).
_WRITABLE = {
    ("read", 1): ("read", False),
    ("write", 2): ("write", False),
    ("cas", 3): ("cas", False),
    ("delete", 1): ("delete", False),
    ("get", 2): ("read", True),
    ("put", 3): ("write", True),
    ("append", 3): ("append", True),
    ("cas", 4): ("cas", True),
    ("delete", 2): ("delete", True),
}


def _thawed(value: Any) -> Any:
    """Tuples back to JSON lists (the reader turns them into tuples again)."""
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    return value


def _invoke_fields(op: Operation) -> dict[str, Any]:
    """The invoke event of one operation of the :func:`register` or :func:`kv`
    vocabulary; ``UsageError`` naming the operation for anything else."""
    input = op.input
    found = (
        _WRITABLE.get((input[0], len(input)))
        if isinstance(input, tuple) and input and isinstance(input[0], str)
        else None
    )
    if found is None:
        raise UsageError(
            f"operation {op!r}: only the register and kv models' inputs can be written as jsonl"
        )
    f, keyed = found
    fields: dict[str, Any] = {"f": f}
    if keyed:
        fields["key"] = input[1]
    args = input[2:] if keyed else input[1:]
    if f == "cas":
        fields["value"] = [args[0], args[1]]
    elif args:
        fields["value"] = args[0]
    return fields


def to_jsonl(history: History) -> str:
    """``history`` in the ``jsonl`` format, with its times: what
    :func:`parse_history` reads back into an equal history, so a history
    recorded in a program can be saved and checked later with
    ``unbundled check linearizable FILE``.

    Only the :func:`register` and :func:`kv` input vocabularies, clients that
    are ``str`` or ``int``, and JSON values can be written (``UsageError``
    names the first operation that cannot). A compare-and-set that returned
    with an unknown answer has no ``jsonl`` form either (``fail`` means "did
    not swap", ``info`` "never returned").
    """
    events: list[tuple[float, int, dict[str, Any]]] = []
    # seq: a client's events in the order it did them, so that at one instant
    # a completion stays before the same client's next invoke (and after its own).
    for seq, op in enumerate(sorted(history, key=lambda o: (o.call_time, o.id))):
        if isinstance(op.client, bool) or not isinstance(op.client, (str, int)):
            raise UsageError(f"operation {op!r}: jsonl needs clients that are str or int")
        fields = _invoke_fields(op)
        f = fields["f"]
        base = {"process": op.client}
        events.append((op.call_time, 2 * seq, {**base, "type": "invoke", **fields}))
        if op.return_time is None:
            done: dict[str, Any] = {"type": "info"}
            when = op.call_time
        elif op.output is UNKNOWN and f == "read":
            done, when = {"type": "fail"}, op.return_time  # a read that timed out
        elif op.output is UNKNOWN and f == "cas":
            raise UsageError(f"operation {op!r}: a returned cas with an unknown answer")
        elif f == "cas":
            done, when = {"type": "ok" if op.output else "fail"}, op.return_time
        elif f == "read":
            done, when = {"type": "ok", "value": op.output}, op.return_time
        else:
            done, when = {"type": "ok"}, op.return_time
        events.append((when, 2 * seq + 1, {**base, **done, "f": f}))
    events.sort(key=lambda event: (event[0], event[1]))
    lines = []
    for when, _, fields in events:
        fields["time"] = when
        try:
            lines.append(json.dumps({k: _thawed(v) for k, v in fields.items()}))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"event {fields!r}: not JSON: {exc}") from None
    text = "".join(line + "\n" for line in lines)
    # What is written must read back as the same history; a client with two
    # calls open at once, say, has no jsonl form.
    model = "kv" if any(fields.get("key") is not None for _, _, fields in events) else "register"
    try:
        back = parse_history("history.jsonl", "jsonl", model, text=text)
    except UsageError as exc:
        raise UsageError(f"this history has no faithful jsonl form: {exc.message}") from None
    if _facts(back) != _facts(history):
        raise UsageError("this history has no faithful jsonl form: it reads back differently")
    return text


def _facts(history: History) -> list[tuple[Any, ...]]:
    """What the models look at: the output of a write, put, append or delete
    is ignored by them, and has no place in jsonl."""
    return sorted(
        (
            repr(o.client),
            repr(o.input),
            repr(o.output if o.input[0] in ("read", "get", "cas") else None),
            float(o.call_time),
            -1.0 if o.return_time is None else float(o.return_time),
        )
        for o in history
    )
