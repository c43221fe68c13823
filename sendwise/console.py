"""Terminal output shared by every command: one rich console, error handling, progress bars."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from features.validate import ContractError

# Piped or captured output has no terminal width; rich would wrap tables at 80 columns.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(width=_WIDTH)
errors = Console(stderr=True, width=_WIDTH)

P = ParamSpec("P")
R = TypeVar("R")

USER_ERRORS = (ContractError, ValidationError, ValueError, FileNotFoundError, LookupError)


def reports_user_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the errors a user can fix into a red one-line message and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as exc:
            errors.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from exc

    return wrapper


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
