"""``sendwise privacy export`` and ``sendwise privacy forget``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table as RichTable

from features.cli import DataDir
from features.io import atomic_write
from sendwise.console import console, reports_user_errors
from sendwise.privacy.export import export_customer
from sendwise.privacy.forget import forget_customers

privacy_app = typer.Typer(help="Customers' data: export everything held about one, forget some.",
                          no_args_is_help=True)

MlrunsDir = Annotated[Path, typer.Option(help="MLflow store root (local artifacts).")]
ExposureLogFile = Annotated[Path, typer.Option(help="The service's exposure log.")]
ExtraFiles = Annotated[list[Path] | None, typer.Option(
    "--file", help="Another file (or folder) with customer rows: snapshot, training set, scores; repeat.")]


@privacy_app.command("export")
@reports_user_errors
def export(customer_id: Annotated[str, typer.Argument(help="The customer's id.")],
           data: DataDir,
           mlruns: MlrunsDir = Path("mlruns"),
           exposure_log: ExposureLogFile = Path("exposures/exposures.jsonl"),
           file: ExtraFiles = None,
           out: Annotated[Path | None, typer.Option(help="Write the JSON here (default: standard output).")] = None,
           ) -> None:
    """Everything held about CUSTOMER_ID (input rows, features, scores, recommendations, model rows,
    exposures) as one JSON document."""
    doc = export_customer(customer_id, data, mlruns, exposure_log, file or [])
    text = json.dumps(doc, indent=1, default=str)
    if out is None:
        typer.echo(text)
        return
    atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    console.print(f"export of {customer_id} written to {out}")


@privacy_app.command("forget")
@reports_user_errors
def forget(customer_ids: Annotated[list[str], typer.Argument(help="The customers' ids.")],
           data: DataDir,
           mlruns: MlrunsDir = Path("mlruns"),
           exposure_log: ExposureLogFile = Path("exposures/exposures.jsonl"),
           file: ExtraFiles = None) -> None:
    """Remove CUSTOMER_IDS from the data, the files named, the exposure log (pseudonymised) and the
    saved recommenders; a tombstone keeps them out of later imports and the running service."""
    report = forget_customers(customer_ids, data, mlruns, exposure_log, file or [])
    table = RichTable(title=f"Forgot {len(report.customer_ids)} customer(s)", title_justify="left")
    table.add_column("store")
    table.add_column("removed", justify="right")
    table.add_row(f"tombstone: {report.tombstones}", "recorded")
    for path, n in report.file_rows.items():
        table.add_row(path, f"{n:,} rows")
    table.add_row(f"exposure log: {exposure_log}", f"{report.exposures:,} records pseudonymised")
    for path, n in report.recommender_rows.items():
        table.add_row(f"recommender: {path}", f"{n:,} customer rows")
    for path, n in report.holdout_rows.items():
        table.add_row(f"holdout scores: {path}", f"{n:,} rows")
    console.print(table)
    console.print("The running service treats them as unknown from its next request; models trained before "
                  "keep what they learnt in shared parameters until the next training.")
