"""User errors print one line and exit 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from features.errors import InputError, NotFoundError, SendwiseError
from features.validate import ContractError
from sendwise.console import reports_user_errors


def _app(error: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @reports_user_errors
    def fail() -> None:
        raise error

    return app


@pytest.mark.parametrize("error", [SendwiseError("bad"), InputError("bad"), NotFoundError("bad"), ContractError("bad")])
def test_a_user_error_is_one_line_and_exit_2(error):
    result = CliRunner().invoke(_app(error), [])
    assert result.exit_code == 2
    assert "error: bad" in result.stderr
    assert "Traceback" not in result.output + result.stderr


@pytest.mark.parametrize("error", [KeyError("x"), ValueError("x"), LookupError("x"), FileNotFoundError("x")])
def test_a_bug_is_not_reported_as_a_user_error(error):
    result = CliRunner().invoke(_app(error), [])
    assert result.exit_code == 1  # the exception reaches the runner with its traceback
    assert result.exception is error
    assert "error: x" not in result.stderr
