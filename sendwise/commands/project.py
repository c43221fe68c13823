"""``sendwise init`` (a project for one shop) and ``sendwise run`` (its scheduled retraining job)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from features.errors import InputError, SendwiseError
from features.importers import ImportFormat, parse_mapping
from sendwise.commands.common import ProjectOption
from sendwise.console import console, errors, reports_user_errors
from sendwise.project import Project, create_project, find_project
from sendwise.run import ExitCode, RunLockedError, run_project
from serving.consent import ConsentRule


@reports_user_errors
def init(
    directory: Annotated[Path, typer.Argument(help="Project folder (created; must not hold a sendwise.yaml).")],
    data: Annotated[Path | None, typer.Option(help="Directory of contract tables (read where it is).")] = None,
    import_: Annotated[tuple[ImportFormat, Path] | None, typer.Option(
        "--import", metavar="FORMAT FILE",
        help=f"A shop's export, converted into DIRECTORY/data now and at every run; FORMAT: "
             f"{', '.join(f.value for f in ImportFormat if f is not ImportFormat.MOVIELENS)}.")] = None,
    mapping: Annotated[list[str] | None, typer.Option(
        "--map", metavar="COLUMN=SOURCE", help='For --import csv or shopify: contract column = source column, e.g. '
                                              'ordered_at="Paid at" (repeatable).')] = None,
    demo: Annotated[bool, typer.Option("--demo", help="The built-in demo shop (generated into DIRECTORY/data).")] = False,
    name: Annotated[str | None, typer.Option(help="Project name (default: the folder's name).")] = None,
    timezone: Annotated[str, typer.Option(help="Time zone of timestamps without one (IANA name).")] = "UTC",
    currency: Annotated[str, typer.Option(help="ISO code of the catalog's prices.")] = "GBP",
    consent: Annotated[ConsentRule, typer.Option(help="Who may be emailed (see docs/projects.md).")] = ConsentRule.RECORDED,
    customers: Annotated[int, typer.Option(help="With --demo: customers in the generated shop.")] = 10_000,
) -> None:
    """Create a project for one shop: DIRECTORY/sendwise.yaml, then check its data."""
    project = create_project(directory, data=data, import_=import_, mapping=parse_mapping(mapping or []), demo=demo,
                             name=name, timezone=timezone, currency=currency, consent=consent, customers=customers)
    folder = shlex.quote(str(directory))
    console.print(f"project [bold]{project.name}[/] written to {project.file}; next: "
                  f"`sendwise run --project {folder}` trains, then `sendwise serve --project {folder}`.")


def project_or_here(option: Path | None) -> Project:
    project = find_project(option)
    if project is None:
        raise InputError("no project: pass --project DIR, or run in a folder holding sendwise.yaml "
                         "(create one with `sendwise init DIR`).")
    return project


def run(project: ProjectOption = None) -> None:
    """The retraining job a scheduler calls: validate, backtest and refit every model, promote winners,
    write the serving snapshot and the run report. Exit codes: 0 done, 2 settings or data to fix,
    3 another run of the project is running, 4 a model failed (its champion stays), 1 a bug."""
    try:
        result = run_project(project_or_here(project))
    except RunLockedError as exc:
        errors.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.LOCKED) from exc
    except SendwiseError as exc:
        errors.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.USER_ERROR) from exc
    if result.exit_code is not ExitCode.OK:
        errors.print(f"[bold red]{len(result.failures)} model(s) failed[/]: "
                     + "; ".join(f"{f.model}: {f.error}" for f in result.failures), highlight=False, soft_wrap=True)
    raise typer.Exit(result.exit_code)
