"""``sendwise data ...`` and ``sendwise features ...`` commands. ``data validate`` and the ``features``
commands read the project (``--project DIR``, or the current directory's), see sendwise/commands/common.py;
``data import`` and ``data generate`` write where they are told and need none.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from features.build import build_features, to_timestamp
from features.demo import DemoShop
from features.errors import InputError
from features.importers import MAPPABLE, ImportFormat, ImportReport, parse_mapping, run_import
from features.io import Encoding, refuse_overwriting_inputs, write_parquet
from features.spark import spark_features
from features.training_set import Target
from sendwise import pipeline
from sendwise.commands.common import (
    DataOption,
    EncodingOption,
    EngineOption,
    FeatureConfigOption,
    ProjectOption,
    RejectsOption,
    date_option,
    resolve,
)
from sendwise.console import console, iso, reports_user_errors
from sendwise.engines import (
    check_output,
    is_directory_output,
    open_tables,
    output_location,
    write_partitioned,
)
from sendwise.pipeline import feature_config, print_import

data_app = typer.Typer(help="Validate, import and generate contract data.", no_args_is_help=True)
import_app = typer.Typer(help="Convert a shop's export (Shopify, any CSV of order lines) or a public dataset to the "
                              "data contract.", no_args_is_help=True)
data_app.add_typer(import_app, name="import")
features_app = typer.Typer(help="Point-in-time customer features, training sets, snapshots.", no_args_is_help=True)

OUT_HELP = ("Output .parquet file; with --engine spark, a path without a suffix (or a URI such as s3a://...) is "
            "a directory of Parquet files partitioned by as_of, written by Spark and replaced whole.")
# a required --data, for a command that reads no project (serve, until it does)
DataDir = Annotated[Path, typer.Option("--data", metavar="DIR", help="Directory of contract tables (orders required).")]


@data_app.command("validate")
@reports_user_errors
def validate(data_dir: Annotated[Path | None, typer.Argument(
                 show_default=False,
                 help="Directory of contract tables (default: the project's data).")] = None,
             rejects: RejectsOption = None, encoding: EncodingOption = Encoding.UTF_8,
             project: ProjectOption = None) -> None:
    """Check a data directory against the contract and print what was loaded and rejected."""
    run = resolve(project, data=data_dir, rejects=rejects)
    pipeline.validate(run.need_data(), run.rejects, encoding, timezone=run.timezone)


OutDir = Annotated[Path, typer.Option("--out", metavar="DIR", help="Output directory (parquet tables, _rejects/).")]
TimezoneOption = Annotated[str | None, typer.Option(
    "--timezone", metavar="ZONE",
    help="IANA time zone of the file's times written without one, e.g. Europe/London (default: UTC). "
         "Times with an offset keep it; everything is stored as UTC.")]
MapOption = Annotated[list[str] | None, typer.Option(
    "--map", metavar="CONTRACT=COLUMN",
    help=f"Take a contract column from a column of the file, e.g. --map ordered_at=\"Paid at\"; repeat for "
         f"several. Contract columns: {', '.join(MAPPABLE)}.")]


def _import(fmt: ImportFormat, src: Path, out: Path, *, mapping: list[str] | None = None,
            timezone: str | None = None, encoding: Encoding = Encoding.UTF_8, min_rating: float | None = None) -> None:
    """Run the import and print its accounting, the zone its naive times were read in and its warnings."""
    report: ImportReport = run_import(fmt, src, out, mapping=parse_mapping(mapping), timezone=timezone,
                                      encoding=encoding, min_rating=min_rating)
    print_import(report)
    if report.timezone:
        console.print(f"Times without an offset were read as {report.timezone} local time and stored as UTC.")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


@import_app.command("online-retail")
@reports_user_errors
def import_uci(src: Annotated[Path, typer.Argument(help="UCI Online Retail CSV (.csv or .csv.gz), either layout.")],
               out: OutDir, encoding: EncodingOption = Encoding.UTF_8, timezone: TimezoneOption = None) -> None:
    """UCI Online Retail (or Online Retail II, told from the header) to orders, products and customers;
    fee codes and bad rows to rejects. Its InvoiceDate is UK time: --timezone Europe/London."""
    _import(ImportFormat.ONLINE_RETAIL, src, out, encoding=encoding, timezone=timezone)


@import_app.command("online-retail-ii")
@reports_user_errors
def import_uci_ii(src: Annotated[Path, typer.Argument(help="UCI Online Retail II CSV (.csv or .csv.gz).")],
                  out: OutDir, encoding: EncodingOption = Encoding.UTF_8, timezone: TimezoneOption = None) -> None:
    """UCI Online Retail II (Invoice, Price, Customer ID) to the contract, as online-retail does."""
    _import(ImportFormat.ONLINE_RETAIL_II, src, out, encoding=encoding, timezone=timezone)


@import_app.command("shopify")
@reports_user_errors
def import_shopify(src: Annotated[Path, typer.Argument(help="Shopify orders export (Admin > Orders > Export, CSV).")],
                   out: OutDir, mapping: MapOption = None, encoding: EncodingOption = Encoding.UTF_8,
                   timezone: TimezoneOption = None) -> None:
    """A Shopify orders export to orders (customer = email), products and customers (country, email
    consent); cancelled, refunded and voided orders and rows without email to rejects."""
    _import(ImportFormat.SHOPIFY, src, out, mapping=mapping, encoding=encoding, timezone=timezone)


@import_app.command("csv")
@reports_user_errors
def import_mapped_csv(src: Annotated[Path, typer.Argument(help="A CSV with one row per order line.")],
                      out: OutDir, mapping: MapOption = None, encoding: EncodingOption = Encoding.UTF_8,
                      timezone: TimezoneOption = None) -> None:
    """Any CSV of order lines, by a column mapping: order_id, customer_id, product_id, quantity,
    unit_price and ordered_at each mapped with --map or found under their own name."""
    _import(ImportFormat.CSV, src, out, mapping=mapping, encoding=encoding, timezone=timezone)


@import_app.command("movielens")
@reports_user_errors
def import_ml(src: Annotated[Path, typer.Argument(help="MovieLens ratings.csv (.csv or .csv.gz).")],
              out: OutDir,
              min_rating: Annotated[float, typer.Option(help="Ratings at or above this are also orders.")] = 4.0,
              encoding: EncodingOption = Encoding.UTF_8, timezone: TimezoneOption = None) -> None:
    """MovieLens ratings to interactions: every rating a view, good ratings also orders."""
    _import(ImportFormat.MOVIELENS, src, out, encoding=encoding, timezone=timezone, min_rating=min_rating)


@data_app.command("generate")
@reports_user_errors
def generate(out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Output directory.")],
             customers: Annotated[int, typer.Option(help="Number of customers.")] = 10_000,
             seed: Annotated[int, typer.Option(help="Random seed; same seed, same data.")] = 0,
             products: Annotated[int, typer.Option(help="Catalog size.")] = 1_000,
             start: Annotated[datetime, date_option(help="First day of the simulated history.")] = DemoShop.start,
             end: Annotated[datetime, date_option(help="Day after the last of the history; not after now, "
                                                       "or its last rows would be rejected as future.")
                            ] = DemoShop.end,
             ) -> None:
    """Write a synthetic shop with planted behaviour (see features/demo.py) to OUT."""
    pipeline.generate(out, customers, seed, products, start, end)


@features_app.command("build")
@reports_user_errors
def build(as_of: Annotated[datetime, date_option("--as-of", help="Features see only rows strictly before this.")],
          out: Annotated[Path, typer.Option("--out", metavar="PATH", help=OUT_HELP)],
          data: DataOption = None, rejects: RejectsOption = None, encoding: EncodingOption = Encoding.UTF_8,
          settings: FeatureConfigOption = None, engine: EngineOption = None, project: ProjectOption = None) -> None:
    """One row of point-in-time features per customer known before AS_OF."""
    run = resolve(project, data=data, rejects=rejects, feature_config=settings)
    data = run.need_data()
    chosen = run.engine(engine)
    refuse_overwriting_inputs(out, data_dir=data)
    check_output(chosen, out, spark=run.spark)
    config = feature_config(run.feature_config)
    tables = open_tables(chosen, data, run.rejects, run.spark, encoding=encoding, timezone=run.timezone)
    when = to_timestamp(as_of)
    first, _ = tables.time_range()
    if first is None or when <= first:
        raise InputError(f"--as-of {iso(when)} is not after the first row of the data ({iso(first)}); "
                         "no customer is known yet.")
    if is_directory_output(out):  # Spark writes the files; nothing is collected here
        frame = spark_features(tables, when, config)
        write_partitioned(frame, out)
        rows, columns = tables.spark.read.parquet(output_location(out)).count(), len(frame.columns)
        where = f"{output_location(out)} (Parquet files partitioned by as_of, computed by Spark)"
    else:
        features = build_features(tables, when, config)
        write_parquet(features, out)
        (rows, columns), where = features.shape, str(out) + (" (computed by Spark)" if chosen == "spark" else "")
    console.print(f"{rows:,} customers x {columns} columns at {iso(when)} written to {where}")


@features_app.command("training-set")
@reports_user_errors
def training_set(
    out: Annotated[Path, typer.Option("--out", metavar="PATH", help=OUT_HELP)],
    target: Annotated[Target, typer.Option(help="Label to attach.")] = Target.CHURNED,
    horizon: Annotated[int | None, typer.Option(help="Label window in days (churned 90, purchased 30).")] = None,
    as_of: Annotated[list[datetime] | None, date_option("--as-of", help="An as_of date; repeat for several.")] = None,
    last: Annotated[datetime | None, date_option(help="Latest monthly as_of (default: latest fully observed).")] = None,
    periods: Annotated[int, typer.Option(help="How many monthly as_of dates.")] = 12,
    data: DataOption = None,
    rejects: RejectsOption = None,
    encoding: EncodingOption = Encoding.UTF_8,
    settings: FeatureConfigOption = None,
    engine: EngineOption = None,
    project: ProjectOption = None,
) -> None:
    """Features at several as_of dates, stacked, labelled from [as_of, as_of + horizon)."""
    run = resolve(project, data=data, rejects=rejects, feature_config=settings)
    pipeline.training_set(run.need_data(), out, target, horizon, as_of, last, periods, run.rejects, encoding,
                          run.feature_config, timezone=run.timezone, engine=run.engine(engine), spark=run.spark)


@features_app.command("snapshot")
@reports_user_errors
def snapshot(out: Annotated[Path | None, typer.Option(
                 "--out", metavar="FILE", show_default=False,
                 help="Snapshot .parquet file, replaced atomically (default: the project's "
                      "state/snapshot.parquet, which its service reads).")] = None,
             as_of: Annotated[datetime | None, date_option("--as-of", help="Default: just after the last row.")] = None,
             data: DataOption = None, rejects: RejectsOption = None, encoding: EncodingOption = Encoding.UTF_8,
             settings: FeatureConfigOption = None, engine: EngineOption = None,
             project: ProjectOption = None) -> None:
    """Latest features of every customer, for serving."""
    run = resolve(project, data=data, rejects=rejects, feature_config=settings)
    data = run.need_data()
    out = out if out is not None else (run.project.snapshot if run.project else None)
    if out is None:
        raise InputError("pass --out FILE (the snapshot to write), or --project DIR to write the project's "
                         "state/snapshot.parquet.")
    pipeline.snapshot(data, out, as_of, run.rejects, encoding, run.feature_config, timezone=run.timezone,
                      engine=run.engine(engine), spark=run.spark)
