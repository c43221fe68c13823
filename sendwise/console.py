"""Terminal output shared by every command: one rich console, error handling, progress bars."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from features.errors import SendwiseError

# Piped or captured output has no terminal width; rich would wrap tables at 80 columns.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(width=_WIDTH)
errors = Console(stderr=True, width=_WIDTH)

P = ParamSpec("P")
R = TypeVar("R")

def reports_user_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the errors a user can fix (:class:`SendwiseError`) into a red one-line message and exit
    code 2; any other exception is a bug and keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except SendwiseError as exc:
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
