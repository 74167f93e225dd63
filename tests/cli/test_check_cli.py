"""``unbundled check linearizable``: last line, exit status, the picture."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from unbundled.cli import cli

DATA = Path(__file__).resolve().parents[1] / "data" / "porcupine"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["check", "linearizable", *args])


def last_line(result: Result) -> str:
    return result.stdout.rstrip("\n").splitlines()[-1]


def test_linearizable_exits_0() -> None:
    result = run(str(DATA / "jepsen" / "etcd_002.log"))  # format and model: detected
    assert result.exit_code == 0, result.output
    assert last_line(result) == "linearizable"
    assert "77 operations, 23 clients, 1 partition(s)" in result.stdout


def test_violation_exits_1_and_draws_it(tmp_path: Path) -> None:
    page = tmp_path / "out.html"
    result = run(
        str(DATA / "kv" / "c10-bad.txt"),
        "--model",
        "kv",
        "--format",
        "porcupine-kv",
        "--html",
        str(page),
    )
    assert result.exit_code == 1, result.output
    assert last_line(result) == "not linearizable"
    assert "violation: no valid order once client" in result.stdout
    assert "shortest failing prefix:" in result.stdout
    html = page.read_text()
    assert "<svg" in html and "c10-bad.txt: not linearizable" in html


def test_unknown_exits_2(tmp_path: Path) -> None:
    """Many concurrent appends and an impossible read: far more orders than a
    zero budget allows, so the answer is unknown, never linearizable."""
    path = tmp_path / "hard.jsonl"
    events = [
        {"process": i, "type": "invoke", "f": "append", "key": "k", "value": f"{i},"}
        for i in range(22)
    ]
    events += [{"process": i, "type": "ok"} for i in range(22)]
    events += [
        {"process": 99, "type": "invoke", "f": "get", "key": "k"},
        {"process": 99, "type": "ok", "value": "impossible"},
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    result = run(str(path), "--model", "kv", "--budget", "0.1")
    assert result.exit_code == 2, result.output
    assert last_line(result) == "unknown"
    assert "gave up after 0.1 s" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"process": 1, "type": "invoke", "f": "read"}\n{oops\n', "bad.jsonl:2: not JSON"),
        ('{"process": 1, "type": "ok"}\n', "bad.jsonl:1: process 1 completes a call"),
        ("\nnot a history\n", "bad.jsonl:2: cannot tell the format"),
    ],
)
def test_bad_input_exits_3_naming_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    result = run(str(path))
    assert result.exit_code == 3
    assert message in result.stderr
    assert result.stdout == ""


def test_missing_file_and_bad_options_exit_3(tmp_path: Path) -> None:
    missing = run(str(tmp_path / "nope.jsonl"))
    assert missing.exit_code == 3 and "nope.jsonl: cannot read" in missing.stderr
    bad_model = run(str(tmp_path / "nope.jsonl"), "--model", "graph")
    assert bad_model.exit_code == 3
    mismatch = run(str(DATA / "jepsen" / "etcd_000.log"), "--format", "jepsen", "--model", "kv")
    assert mismatch.exit_code == 3 and "use --model register" in mismatch.stderr


def test_a_value_the_model_cannot_handle_exits_3(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    events = [
        {"process": 1, "type": "invoke", "f": "put", "key": "k", "value": 1},
        {"process": 1, "type": "ok"},
        {"process": 1, "type": "invoke", "f": "append", "key": "k", "value": "s"},
        {"process": 1, "type": "ok"},
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    result = run(str(path), "--model", "kv")
    assert result.exit_code == 3 and "mixed.jsonl" in result.stderr


def test_the_installed_command() -> None:
    """The real console script, in a real process: stdout's last line and the status."""
    exe = shutil.which("unbundled", path=str(Path(sys.executable).parent))
    assert exe is not None
    done = subprocess.run(
        [exe, "check", "linearizable", str(DATA / "jepsen" / "etcd_000.log"), "--format", "jepsen"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[-1] == "not linearizable"
