"""Dates on the command line are ISO 8601 only (``10/09/2011`` is October 9th in one country and
September 10th in another), and an as_of in the future is an error: every date option of every
command, refused with exit 2 before any data is read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.dates import parse_iso_date
from features.errors import InputError
from features.snapshot import write_snapshot
from features.tables import Tables
from sendwise.cli import app

runner = CliRunner()

# every command with a date option, the option, and the other arguments it needs (a missing data
# directory: the date must be refused before anything is read)
COMMANDS = [
    (["features", "build", "--out", "f.parquet"], "--as-of"),
    (["features", "training-set", "--out", "t.parquet"], "--as-of"),
    (["features", "training-set", "--out", "t.parquet"], "--last"),
    (["features", "snapshot", "--out", "s.parquet"], "--as-of"),
    (["train", "churn"], "--as-of"),
    (["train", "propensity"], "--as-of"),
    (["train", "recommender"], "--as-of"),
    (["evaluate", "recommender"], "--as-of"),
    (["score", "--out", "s.csv"], "--as-of"),
    (["recommend", "--out", "r.csv"], "--as-of"),
]


def invoke(tmp_path: Path, args: list[str]) -> str:
    result = runner.invoke(app, [*args, "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize(("command", "option"), COMMANDS, ids=lambda c: " ".join(c) if isinstance(c, list) else c)
def test_a_date_that_is_not_iso_8601_is_refused(tmp_path: Path, command: list[str], option: str) -> None:
    out = invoke(tmp_path, [*command, option, "10/09/2011"])
    assert "10/09/2011" in out and "ISO 8601" in out and "nowhere" not in out


@pytest.mark.parametrize(("command", "option"), COMMANDS, ids=lambda c: " ".join(c) if isinstance(c, list) else c)
def test_an_as_of_in_the_future_is_refused(tmp_path: Path, command: list[str], option: str) -> None:
    out = invoke(tmp_path, [*command, option, "2031-01-01"])
    assert "in the future" in out and "nowhere" not in out


def test_other_date_options_are_iso_too(tmp_path: Path) -> None:
    out = invoke(tmp_path, ["evaluate", "recommender", "--as-of", "2011-09-01", "--until", "1/12/2011"])
    assert "ISO 8601" in out
    out = invoke(tmp_path, ["models", "promote", "churn", "--as-of", "9/10/2011"])
    assert "ISO 8601" in out
    result = runner.invoke(app, ["data", "generate", "--out", str(tmp_path / "g"), "--start", "01/07/2024"])
    assert result.exit_code == 2 and "ISO 8601" in result.output
    result = runner.invoke(app, ["data", "generate", "--out", str(tmp_path / "g"), "--end", "2031-01-01"])
    assert result.exit_code == 2 and "in the future" in " ".join(result.output.split())
    assert not (tmp_path / "g").exists()


def test_iso_8601_forms_are_read_as_utc() -> None:
    assert parse_iso_date("2011-10-09") == datetime(2011, 10, 9)
    assert parse_iso_date("2011-10-09T10:30") == datetime(2011, 10, 9, 10, 30)
    assert parse_iso_date("2011-10-09 10:30:15") == datetime(2011, 10, 9, 10, 30, 15)
    assert parse_iso_date("2011-10-09T10:30:00Z") == datetime(2011, 10, 9, 10, 30)
    assert parse_iso_date("2011-10-09T10:30:00+02:00") == datetime(2011, 10, 9, 8, 30)
    for text in ("10/09/2011", "9 Oct 2011", "2011/10/09", "yesterday", ""):
        with pytest.raises(InputError, match="ISO 8601"):
            parse_iso_date(text)


def test_a_past_as_of_still_works(tmp_path: Path, tiny_frames: dict) -> None:
    for name, frame in tiny_frames.items():
        frame.to_parquet(tmp_path / f"{name}.parquet")
    result = runner.invoke(app, ["features", "build", "--data", str(tmp_path), "--as-of", "2024-01-20T00:00:00Z",
                                 "--out", str(tmp_path / "f.parquet")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["features", "training-set", "--data", str(tmp_path), "--as-of", "2024-01-10",
                                 "--as-of", "2024-01-15", "--horizon", "3", "--out", str(tmp_path / "t.parquet")])
    assert result.exit_code == 0, result.output


def test_write_snapshot_refuses_a_future_as_of(tiny_tables: Tables, tmp_path: Path) -> None:
    later = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=1)
    with pytest.raises(InputError, match="in the future"):
        write_snapshot(tiny_tables, tmp_path / "s.parquet", as_of=later)
    assert not (tmp_path / "s.parquet").exists()
