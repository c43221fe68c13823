"""Terminal output shared by every command: one rich console, error handling, progress bars, dates
as ISO 8601, and ``--help`` in the plain forms of a command line (see :func:`plain_help_types`)."""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import typer
import typer.core
import typer.rich_utils
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


def iso(when: datetime | date | None) -> str:
    """``when`` as ISO 8601 for the terminal: ``2011-12-09`` at midnight, else ``2011-12-09T12:50:00``
    (to the second: a snapshot's moment just after the data's last row reads as that row's time);
    ``-`` for None or NaT. Never ``str(datetime)``'s ``2011-12-09 12:50:00``."""
    if when is None or pd.isna(when):
        return "-"
    if not isinstance(when, datetime):
        return when.isoformat()
    if (when.hour, when.minute, when.second, when.microsecond) == (0, 0, 0, 0):
        return f"{when:%Y-%m-%d}"
    return f"{when:%Y-%m-%dT%H:%M:%S}"


# typer's names of value types, as click and most command lines print them in --help
_TYPE_NAMES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "bool": "BOOLEAN", "path": "PATH", "Path": "PATH",
               "file": "FILE", "directory": "DIR", "dir": "DIR", "datetime": "DATE", "UUID": "UUID"}


def _plain_type(label: str, choice: bool) -> str:
    """``<list[str]>`` -> ``TEXT``, ``<a|b>`` -> ``[a|b]`` (choices), ``<int>`` -> ``INTEGER``."""
    inner = label.removeprefix("<").removesuffix(">")
    inner = re.sub(r"^list\[(.*)\]$", r"\1", inner)  # a repeatable option says so in its help
    if choice:
        return f"[{inner}]"
    return " ".join(_TYPE_NAMES.get(part, part.upper()) for part in inner.split(","))


def plain_help_types() -> None:
    """Make ``--help`` print what a user types, as click does: nothing after a flag (typer 0.2x
    writes ``--force <bool>``), choices as ``[als|bpr]``, ``TEXT``, ``INTEGER``, ``PATH`` instead
    of ``<str>``, ``<list[str]>``, ``<path>``, and arguments in capitals without braces
    (``DATA_DIR``, not ``{data_dir}``). One place for every command, init, run and serve included:
    each command's module imports this one. A ``metavar=`` given on an option still wins.
    tests/test_cli_help.py renders every command's help and fails when a typer upgrade changes it."""
    option, argument = getattr(typer.core, "TyperOption", None), getattr(typer.core, "TyperArgument", None)
    if option is None or argument is None or getattr(option, "_sendwise_plain", False):
        return
    typer_type = typer.core._TyperParameter.display_type

    def option_type(self: Any, ctx: Any) -> str | None:
        if self.metavar is not None:
            return self.metavar
        if self.is_flag or self.count:
            return None
        label = _plain_type(typer_type(self, ctx), self.type_descriptor.is_choice)
        return label + "..." if self.nargs != 1 else label

    def argument_type(self: Any, ctx: Any) -> str | None:
        return None if self.metavar is not None else _plain_type(typer_type(self, ctx), self.type_descriptor.is_choice)

    def argument_usage(self: Any) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")

    # one space between the columns of an options table instead of two: typer keeps empty columns
    # for short and negative names, and 80 columns must hold --allow-foreign-models and its choices
    typer.rich_utils.STYLE_OPTIONS_TABLE_PADDING = (0, 1, 0, 0)
    option.display_type_rich = option_type
    argument.display_type_rich = argument_type
    argument.display_name_raw = property(lambda self: self.metavar or (self.name or "").upper())
    argument._usage_display_name = argument_usage
    option._sendwise_plain = True


plain_help_types()


def shown_uri(uri: str) -> str:
    """``uri`` for printing: without a password or token (``https://user:token@host`` -> ``https://host``)."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
