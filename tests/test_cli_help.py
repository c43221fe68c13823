"""Every command's --help reads well in an 80-column terminal: what a user types (no ``<bool>`` after a
flag, choices as ``[a|b]``, TEXT/INTEGER/PATH/DATE, arguments in capitals), nothing cut off."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import typer.main
from typer.testing import CliRunner

from sendwise.cli import app
from sendwise.console import iso

runner = CliRunner()


def _commands(command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))
TYPER_TYPES = re.compile(r"<(bool|int|float|str|path|date|datetime|list\[[^]]*\]|[a-z0-9_|-]+\|[a-z0-9_|-]+)>")


def help_of(path: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_reached() -> None:
    assert {("score",), ("train", "recommender"), ("privacy", "forget"), ("data", "import", "shopify")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "sendwise")
def test_help_at_80_columns(path: tuple[str, ...]) -> None:
    text = help_of(path)
    assert not TYPER_TYPES.search(text), TYPER_TYPES.search(text)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert not re.search(r"\{\w+\}", usage), usage  # arguments as DATA_DIR, not {data_dir}
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, wide
    cut = [line for line in text.splitlines() if "…" in line]
    assert not cut, cut  # an option name or a word rich had to cut off


def test_flags_choices_and_arguments_read_as_typed() -> None:
    text = " ".join(help_of(("train", "recommender")).split())
    assert "--model MODEL auto, als, bpr, itemknn, reranker." in text and "--as-of DATE" in text and "--k INTEGER" in text
    text = " ".join(help_of(("recommend",)).split())
    assert "--include-purchased Allow" in text and "--no-include-purchased" not in text
    assert "--category TEXT" in text and "--allow-foreign-models Use" in text
    text = help_of(("data", "validate"))
    assert "[DATA_DIR]" in text and "--encoding [utf-8|latin-1|utf-16]" in " ".join(text.split())
    assert "FORGET [OPTIONS] CUSTOMER_IDS..." in help_of(("privacy", "forget")).upper()


def test_every_training_command_takes_an_engine() -> None:
    for model in ("churn", "propensity", "recommender"):
        assert "--engine [duckdb|spark]" in " ".join(help_of(("train", model)).split()), model


@pytest.mark.parametrize(("when", "shown"), [
    ("2011-12-09", "2011-12-09"), ("2011-12-09T12:50:00", "2011-12-09T12:50:00"),
    ("2011-12-09T12:50:00.000001", "2011-12-09T12:50:00"), (None, "-"),
])
def test_dates_in_output_are_iso_8601(when: str | None, shown: str) -> None:
    assert iso(None if when is None else pd.Timestamp(when)) == shown
    assert iso(pd.NaT) == "-"
