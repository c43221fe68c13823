"""``sendwise privacy export`` and ``sendwise privacy forget``. Both read the project (``--project DIR``,
or the current directory's): its data, its MLflow store, its exposure log, state folder and event log,
and (export) its model names; options given win."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table as RichTable

from features.errors import InputError, NotFoundError
from features.event_store import EventSource
from features.io import Encoding, atomic_write
from features.redis_log import NO_PROJECT, RedisLocation
from sendwise.commands.common import DataOption, EncodingOption, ProjectOption, Resolved, resolve
from sendwise.console import console, errors, reports_user_errors
from sendwise.privacy.export import export_customer
from sendwise.privacy.forget import forget_customers
from sendwise.privacy.live_stores import OUTBOX, TIMERS
from sendwise.privacy.stores import (
    EVENT_LOG_HELP,
    EXPOSURE_LOG_HELP,
    MLRUNS_HELP,
    NO_EXPOSURE_LOG_HELP,
    NO_MLRUNS_HELP,
    STATE_DIR_HELP,
    check_outside,
    resolve_event_log,
    resolve_exposure_log,
    resolve_mlruns,
    resolve_state_dir,
)
from serving.config import ONLINE_STORE_ENV, PROJECT_ENV, recorded_event_log

privacy_app = typer.Typer(help="Customers' data: export everything held about one, forget some.",
                          no_args_is_help=True)

MlrunsDir = Annotated[Path | None, typer.Option(metavar="DIR", help=MLRUNS_HELP, show_default=False)]
NoMlruns = Annotated[bool, typer.Option("--no-mlruns", help=NO_MLRUNS_HELP)]
ExposureLogFile = Annotated[Path | None, typer.Option(metavar="FILE", help=EXPOSURE_LOG_HELP, show_default=False)]
NoExposureLog = Annotated[bool, typer.Option("--no-exposure-log", help=NO_EXPOSURE_LOG_HELP)]
EventLogFile = Annotated[Path | None, typer.Option(metavar="FILE", help=EVENT_LOG_HELP, show_default=False)]
StateDir = Annotated[Path | None, typer.Option(metavar="DIR", help=STATE_DIR_HELP, show_default=False)]
ExtraFiles = Annotated[list[Path] | None, typer.Option(
    "--file", metavar="PATH",
    help="Another file (or folder) with customer rows: snapshot, training set, scores; repeat.")]
PRIVATE = 0o600  # a new export file: personal data, readable by its owner only


class NothingMatchedError(NotFoundError):
    """A customer id to forget was found nowhere (most likely a typo)."""


class ForgetIncompleteError(InputError):
    """Some files could not be searched: the customers may remain in them."""


def _stores(run: Resolved, mlruns: Path | None, no_mlruns: bool, exposure_log: Path | None,
            no_exposure_log: bool, state_dir: Path | None, file: list[Path] | None, event_log: Path | None
            ) -> tuple[Path | None, Path | None, list[Path], EventSource | None, Path | None, Path | None]:
    """The MLflow store, the exposure log, the files, the event log, the state folder (its outbox and
    timers) and an earlier file event log to search: the options, else the project's stores (mlruns/
    or its tracking_uri's folder, state/exposures.jsonl, state/, its online store or state/events.jsonl),
    else the defaults. With an online store (the project's, or SENDWISE_ONLINE_STORE) the event log is
    there; a file log left from before it is searched too."""
    project = run.project
    if project is None:
        mlruns, exposure_log = resolve_mlruns(mlruns, no_mlruns), resolve_exposure_log(exposure_log, no_exposure_log)
        state = resolve_state_dir(state_dir, exposure_log)
    else:
        mlruns = resolve_mlruns(mlruns, no_mlruns, project.mlruns, project.settings.tracking_uri)
        exposure_log = resolve_exposure_log(exposure_log, no_exposure_log, project.exposure_log)
        state = resolve_state_dir(state_dir, exposure_log, project.state)
    file_log = resolve_event_log(event_log, state)
    if event_log is not None:
        return mlruns, exposure_log, [*(file or []), *filter(None, [state])], file_log, state, None
    if project is not None:
        location = project.event_source  # an error when its service records Redis and no URL is set
        if not isinstance(location, RedisLocation):
            return mlruns, exposure_log, [*(file or []), *filter(None, [state])], file_log, state, None
    else:
        recorded = recorded_event_log(state) if state is not None else None
        online = os.environ.get(ONLINE_STORE_ENV)
        if online is None:
            if recorded is not None and recorded.get("kind") == "redis":
                raise InputError(f"the service of {state} keeps its events in Redis ({recorded.get('where')}), but "
                                 f"{ONLINE_STORE_ENV} is not set: set it so that the command searches them there.")
            return mlruns, exposure_log, [*(file or []), *filter(None, [state])], file_log, state, None
        namespace = (recorded.get("namespace") if recorded is not None and recorded.get("kind") == "redis"
                     else os.environ.get(PROJECT_ENV) or NO_PROJECT)
        location = RedisLocation(online, namespace)
    return mlruns, exposure_log, [*(file or []), *filter(None, [state])], location, state, file_log


@privacy_app.command("export")
@reports_user_errors
def export(customer_id: Annotated[str, typer.Argument(help="The customer's id.")],
           data: DataOption = None,
           mlruns: MlrunsDir = None,
           no_mlruns: NoMlruns = False,
           exposure_log: ExposureLogFile = None,
           no_exposure_log: NoExposureLog = False,
           state_dir: StateDir = None,
           event_log: EventLogFile = None,
           file: ExtraFiles = None,
           encoding: EncodingOption = Encoding.UTF_8,
           out: Annotated[Path | None, typer.Option(
               metavar="FILE", show_default=False,
               help="Write the JSON here, outside --data, --mlruns and the --file folders (forget does not "
                    "look for exports there); a new file is readable by its owner only "
                    "(default: standard output).")] = None,
           project: ProjectOption = None,
           ) -> None:
    """Everything held about CUSTOMER_ID (input rows, events, features, scores, recommendations, model
    rows, exposures, the service's segment transitions, trigger fires and timers) as one JSON document; with a project, scores and recommendations come from its
    champions."""
    run = resolve(project, data=data)
    data = run.need_data()
    mlruns, exposure_log, files, event_log, state, earlier = _stores(run, mlruns, no_mlruns, exposure_log,
                                                                     no_exposure_log, state_dir, file, event_log)
    if out is not None:
        check_outside(out, [("the data directory", data)] + ([("the MLflow store", mlruns)] if mlruns else [])
                      + [("--file", f) for f in files]
                      + ([("the exposure log", exposure_log)] if exposure_log else [])
                      + [("the event log", log) for log in (event_log, earlier) if isinstance(log, Path)])
    doc = export_customer(customer_id, data, mlruns, exposure_log, files, encoding=encoding, project=run.name,
                          timezone=run.timezone, event_log=event_log, state_dir=state, earlier_event_log=earlier)
    text = json.dumps(doc, indent=1, default=str)
    if out is None:
        typer.echo(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    created = False
    with contextlib.suppress(FileExistsError):  # a new file is created private; an existing one keeps its mode
        os.close(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE))
        created = True
    try:
        atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    except BaseException:
        if created:
            out.unlink(missing_ok=True)
        raise
    console.print(f"export of {customer_id} written to {out}")


@privacy_app.command("forget")
@reports_user_errors
def forget(customer_ids: Annotated[list[str], typer.Argument(help="The customers' ids.")],
           data: DataOption = None,
           mlruns: MlrunsDir = None,
           no_mlruns: NoMlruns = False,
           exposure_log: ExposureLogFile = None,
           no_exposure_log: NoExposureLog = False,
           state_dir: StateDir = None,
           event_log: EventLogFile = None,
           file: ExtraFiles = None,
           encoding: EncodingOption = Encoding.UTF_8,
           project: ProjectOption = None) -> None:
    """Remove CUSTOMER_IDS from the data, the files named, the exposure log (pseudonymised), the
    service's state folder (rejected rows, trigger outbox, timers) and event log, and the saved
    recommenders; a tombstone keeps them out of later imports and the running service.

    A service with segments must be stopped first (it holds the trigger outbox; the command refuses,
    changing nothing, while it does); start it again afterwards.

    Every store must exist: a --mlruns or --exposure-log (given or default) that is not there stops
    the command before anything is written; say --no-mlruns / --no-exposure-log where there is none.
    An id that matched nothing anywhere (and was not forgotten before), or a file that could not be
    read, fails the command with exit code 2 after everything else is done; the tombstone stays."""
    run = resolve(project, data=data)
    data = run.need_data()
    mlruns, exposure_log, files, event_log, state, earlier = _stores(run, mlruns, no_mlruns, exposure_log,
                                                                     no_exposure_log, state_dir, file, event_log)
    report = forget_customers(customer_ids, data, mlruns, exposure_log, files, encoding, event_log, state, earlier)
    table = RichTable(title=f"Forgot {len(report.forgotten)} customer(s)", title_justify="left")
    table.add_column("store")
    table.add_column("removed", justify="right")
    table.add_row(f"tombstone: {report.tombstones}", f"{len(report.customer_ids)} recorded")
    for path, n in report.file_rows.items():
        table.add_row(path, f"{n:,} rows")
    if exposure_log is None:
        table.add_row("exposure log: none (--no-exposure-log)", "")
    else:
        table.add_row(f"exposure log: {exposure_log}", f"{report.exposures:,} records pseudonymised")
    if event_log is not None:
        logs = f"{event_log} and {earlier}" if earlier is not None else str(event_log)
        table.add_row(f"event log: {logs}", f"{report.events:,} events removed")
    if state is not None and (state / OUTBOX).exists():
        table.add_row(f"trigger outbox: {state / OUTBOX}", f"{report.outbox:,} transitions removed")
    if state is not None and (state / TIMERS).exists():
        table.add_row(f"timers: {state / TIMERS}", f"{report.timers:,} records removed")
    if mlruns is None:
        table.add_row("MLflow store: none (--no-mlruns)", "")
    for path, n in report.recommender_rows.items():
        table.add_row(f"recommender: {path}", f"{n:,} customer rows")
    for path, n in report.holdout_rows.items():
        table.add_row(f"holdout scores: {path}", f"{n:,} rows")
    console.print(table)
    if report.nothing_left and not report.failed:
        console.print(f"Already forgotten, nothing of theirs was left: {', '.join(report.nothing_left)}.")
    if report.forgotten:
        console.print("The running service treats them as unknown from its next request; models trained before "
                      "keep what they learnt in shared parameters until the next training.")
    if report.failed:
        for path, why in report.failed.items():
            errors.print(f"[bold red]not searched:[/] {path}: {why}", highlight=False, soft_wrap=True)
        unmatched = f" ({', '.join(repr(c) for c in report.unmatched)} matched nothing elsewhere)" if report.unmatched else ""
        raise ForgetIncompleteError(
            f"{len(report.failed)} file(s) could not be searched (above): the customers' rows there, if any, "
            f"remain{unmatched}. Fix or move them and run the same forget again; the tombstone is recorded.")
    if report.unmatched:
        raise NothingMatchedError(
            f"{', '.join(repr(c) for c in report.unmatched)} matched no row or record in any store searched "
            f"({'; '.join(report.stores)}): nothing was removed for them. Check the id and the stores. Their "
            "tombstone was recorded anyway, so later imports and the service will skip them.")
