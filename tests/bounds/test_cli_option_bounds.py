"""Every numeric CLI option is bounded, and an out-of-range value is a clean
usage error (issue 9, item 4).

The options are found by walking the click commands, so an option added
later is covered without touching this file; one added without both bounds
fails ``test_every_numeric_option_has_both_bounds``. For each option,
hypothesis draws values below, above and outside its range (huge ints,
NaN, the infinities, words) and checks the command refuses it the way it
refuses any bad option (exit 2; ``check linearizable`` uses 3), names the
option, prints no traceback, and creates nothing at ``--db``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unbundled.cli import cli

NumberType = (
    click.IntRange | click.FloatRange | click.types.IntParamType | click.types.FloatParamType
)


def numeric_options() -> Iterator[tuple[list[str], click.Command, click.Option]]:
    def walk(
        command: click.Command, path: list[str]
    ) -> Iterator[tuple[list[str], click.Command, click.Option]]:
        if isinstance(command, click.Group):
            for name, sub in sorted(command.commands.items()):
                yield from walk(sub, [*path, name])
            return
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, NumberType):
                yield path, command, param

    yield from walk(cli, [])


OPTIONS = list(numeric_options())
IDS = [" ".join(path) + " " + option.opts[0] for path, _, option in OPTIONS]


def test_the_walk_finds_the_options_it_should() -> None:
    # If this shrinks, the walk stopped seeing options (and the test below would pass vacuously).
    assert len(OPTIONS) >= 19
    assert "topics create --retention-ms" in IDS and "consume --timeout" in IDS


@pytest.mark.parametrize(("path", "command", "option"), OPTIONS, ids=IDS)
def test_every_numeric_option_has_both_bounds(
    path: list[str], command: click.Command, option: click.Option
) -> None:
    kind = option.type
    assert isinstance(kind, click.IntRange | click.FloatRange), (
        f"{' '.join(path)} {option.opts[0]} takes an unbounded number: give it a "
        "click.IntRange / cli._bounds type with bounds from unbundled.limits"
    )
    assert kind.min is not None and kind.max is not None


def arguments(command: click.Command) -> list[str]:
    """Placeholders for the command's positional arguments (valid as text)."""
    return ["x" for param in command.params if isinstance(param, click.Argument)]


def out_of_range(option: click.Option) -> st.SearchStrategy[str]:
    kind = option.type
    assert isinstance(kind, click.IntRange | click.FloatRange)
    low, high = kind.min, kind.max
    assert low is not None and high is not None
    words = st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "-1e400", "ten", "", "0x10"])
    if isinstance(kind, click.IntRange):
        numbers = st.integers(max_value=int(low) - 1) | st.integers(min_value=int(high) + 1)
        fractions = st.floats(allow_nan=False, allow_infinity=False).filter(
            lambda f: not f.is_integer()
        )
        return numbers.map(str) | fractions.map(repr) | words
    floats = st.floats(max_value=low, exclude_max=True) | st.floats(
        min_value=high, exclude_min=True
    )
    return floats.map(repr) | words


def usage_exit_code(runner: CliRunner, db: Path, path: list[str], command: click.Command) -> int:
    """How this command exits on a bad option: what an unknown option gets."""
    result = runner.invoke(cli, ["--db", str(db), *path, *arguments(command), "--no-such-option"])
    return result.exit_code


@pytest.mark.parametrize(("path", "command", "option"), OPTIONS, ids=IDS)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=st.data())
def test_an_out_of_range_value_is_a_clean_usage_error(
    path: list[str],
    command: click.Command,
    option: click.Option,
    tmp_path: Path,
    data: st.DataObject,
) -> None:
    db = tmp_path / "never-created.db"
    runner = CliRunner()
    expected = usage_exit_code(runner, db, path, command)
    assert expected in (2, 3)
    value = data.draw(out_of_range(option), label="value")
    args = ["--db", str(db), *path, *arguments(command), f"{option.opts[0]}={value}"]
    result = runner.invoke(cli, args, input="")
    assert result.exit_code == expected, (args, result.output)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert "Invalid value for" in result.output and option.opts[0] in result.output
    assert not db.exists(), "the command opened the store before refusing the value"


def test_the_issue_retention_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """The reproduction of item 4: the value used to be accepted, and the
    first maintenance pass then killed the writer thread."""
    db = tmp_path / "r.db"
    result = CliRunner().invoke(
        cli, ["--db", str(db), "topics", "create", "r", "--retention-ms", "9" * 24]
    )
    assert result.exit_code == 2 and "--retention-ms" in result.output
    assert not db.exists()


def test_nan_is_not_a_timeout(tmp_path: Path) -> None:
    """``--timeout nan`` used to wait for ever (NaN fails every comparison)."""
    db = tmp_path / "n.db"
    result = CliRunner().invoke(cli, ["--db", str(db), "events", "subscribe", "--timeout", "nan"])
    assert result.exit_code == 2 and "nan is not a number of seconds" in result.output
