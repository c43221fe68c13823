"""``sendwise segments export``: every customer's segments (the project's ``segments.yaml``) as a file an
email platform imports, and how many customers each segment holds.

The customers and their features are the project's serving snapshot (``DIR/state/snapshot.parquet``,
written by ``sendwise run``); the model scores (churn_probability, purchase_probability, churn_risk)
come from the project's champions, loaded only when a segment reads one. See docs/segments.md.
"""

from __future__ import annotations

import json
import shlex
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich import box
from rich.table import Table as RichTable

from features.config import FeatureConfig
from features.errors import InputError, NotFoundError
from features.io import atomic_write, refuse_overwriting_inputs
from features.schema import CUSTOMER_ID
from features.snapshot import read_snapshot
from sendwise.commands.common import ProjectOption
from sendwise.commands.project import project_or_here
from sendwise.console import console, iso, reports_user_errors
from sendwise.pipeline import TRAIN_HINT, check_model
from sendwise.project import Project
from serving.segments import SEGMENTS_FILE, SegmentSet
from training.registry import CHAMPION, bundle_provenance, load_bundle, registered_name
from training.scoring import score_features

segments_app = typer.Typer(help="Dynamic segments (segments.yaml): export who is in which.", no_args_is_help=True)

MODEL_SCORES = ("churn_probability", "purchase_probability", "churn_risk")  # the columns score_features adds


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


def project_feature_config(project: Project) -> FeatureConfig:
    """The feature settings the project's snapshot was built with (as ``sendwise run``)."""
    file = project.settings.feature_config
    return FeatureConfig.load(project.path(file)) if file else FeatureConfig.current()


def with_scores(features: pd.DataFrame, scores: pd.DataFrame | None) -> pd.DataFrame:
    """The snapshot's features with the model scores of ``scores`` (one row per customer, as
    :func:`training.scoring.score_features` makes) joined by customer; without scores, the features."""
    if scores is None:
        return features
    return features.merge(scores[[CUSTOMER_ID, *MODEL_SCORES]], on=CUSTOMER_ID, how="left", validate="one_to_one")


def champion_scores(project: Project, features: pd.DataFrame) -> pd.DataFrame:
    """The project's champions' scores of ``features`` (as ``sendwise score --project`` loads them)."""
    project.use_tracking()
    churn = load_bundle("churn", CHAMPION, TRAIN_HINT, project.name)
    propensity = load_bundle("propensity", CHAMPION, TRAIN_HINT, project.name)
    for name, bundle in (("churn", churn), ("propensity", propensity)):
        check_model(registered_name(name, project.name), str(bundle.meta["version"]), bundle_provenance(bundle),
                    project.data, project.name, False)
        missing = [c for c in bundle.columns if c not in features.columns and "=" not in c]
        if missing:
            raise InputError(f"the snapshot {project.snapshot} lacks the {name} model's inputs "
                             f"{', '.join(missing[:4])}: it was built with other feature settings. "
                             f"`sendwise run --project {shlex.quote(str(project.root))}` rebuilds both.")
    return score_features(features, churn, propensity)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula


def spreadsheet_safe(value: object) -> object:
    """A text cell a spreadsheet would run as a formula (``=HYPERLINK(...)``), prefixed with ``'`` (OWASP's
    advice for CSV injection); anything else as it is. Customer ids come from the shop and from ``/events``."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def write_membership(membership: pd.DataFrame, out: Path, fmt: ExportFormat) -> None:
    """Write ``membership`` to ``out`` atomically: a CSV with a header (ids that would read as a formula
    prefixed with ``'``), or one JSON object per line."""
    if fmt is ExportFormat.CSV:
        safe = membership.assign(**{CUSTOMER_ID: membership[CUSTOMER_ID].map(spreadsheet_safe)})
        atomic_write(out, lambda tmp: safe.to_csv(tmp, index=False))
        return
    columns = list(membership.columns)
    text = "".join(json.dumps(dict(zip(columns, row, strict=True)), default=int) + "\n"
                   for row in membership.itertuples(index=False, name=None))
    atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def export_segments(project: Project, out: Path | None = None, fmt: ExportFormat | None = None) -> pd.DataFrame:
    """Write the membership of every customer of the project's snapshot to ``out`` (default:
    DIR/exports/segments-<snapshot date>.<format>) and return it."""
    folder = shlex.quote(str(project.root))
    segments_file = project.root / SEGMENTS_FILE
    if not segments_file.is_file():
        raise NotFoundError(f"{segments_file} does not exist: write the project's segments there (examples in "
                            "docs/segments.md).")
    segments = SegmentSet.load(segments_file, project_feature_config(project))
    if not segments.segments:
        raise InputError(f"{segments_file} declares no segments: add some under `segments:` (see docs/segments.md).")
    if not project.snapshot.is_file():
        raise NotFoundError(f"no serving snapshot at {project.snapshot}: `sendwise run --project {folder}` writes it.")
    if fmt is None:
        fmt = ExportFormat.JSONL if out is not None and out.suffix == ".jsonl" else ExportFormat.CSV
    features, meta = read_snapshot(project.snapshot)
    if out is None:
        out = project.root / "exports" / f"segments-{meta['as_of'][:10]}.{fmt.value}"
    refuse_overwriting_inputs(out, [segments_file, project.snapshot, project.file], data_dir=project.data)
    scores = champion_scores(project, features) if set(MODEL_SCORES) & set(segments.signals) else None
    membership = segments.membership(with_scores(features, scores))
    write_membership(membership, out, fmt)
    print_counts(membership, segments, out, meta["as_of"])
    return membership


def print_counts(membership: pd.DataFrame, segments: SegmentSet, out: Path, as_of: str) -> None:
    table = RichTable(title=f"segments of {len(membership):,} customers at {iso(pd.Timestamp(as_of))}",
                      box=box.SIMPLE_HEAD)
    for column, justify in (("segment", "left"), ("customers", "right"), ("share", "right"), ("rule", "left")):
        table.add_column(column, justify=justify)
    for segment in segments.segments:
        count = int(membership[segment.name].sum())
        share = f"{count / len(membership):.1%}" if len(membership) else "-"
        when = segment.when if isinstance(segment.when, str) else json.dumps(segment.when)
        table.add_row(segment.name, f"{count:,}", share, when)
    console.print(table)
    console.print(f"written to {out}", highlight=False)


@segments_app.command("export")
@reports_user_errors
def export(out: Annotated[Path | None, typer.Option(
               "--out", metavar="FILE", show_default=False,
               help="Output file (default: DIR/exports/segments-<snapshot date>.csv).")] = None,
           fmt: Annotated[ExportFormat | None, typer.Option(
               "--format", case_sensitive=False, show_default=False,
               help="csv (a 0/1 column per segment) or jsonl (the same as one object per line); default: from "
                    "--out's suffix, else csv.")] = None,
           project: ProjectOption = None) -> None:
    """Every customer of the project's snapshot with a 0/1 column per segment of DIR/segments.yaml, and
    the count of each segment."""
    export_segments(project_or_here(project), out, fmt)
