"""The pipeline's steps as plain functions: typed arguments in, the work done, what the command prints
printed. The ``sendwise`` commands (sendwise/commands/) parse their options and call these; the demo
(sendwise/demo.py) calls them directly, never a Typer command.

Errors a user can fix are :class:`features.errors.SendwiseError`; a command turns them into its red
one-line message and exit code 2 (:func:`sendwise.console.reports_user_errors`)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
from rich.table import Table as RichTable

from features.build import to_timestamp
from features.config import FeatureConfig
from features.demo import DemoShop, generate_demo
from features.errors import InputError
from features.importers.report import ImportReport
from features.io import (
    Encoding,
    ValidationReport,
    load_data_dir,
    refuse_mixed_tables,
    refuse_overwriting_inputs,
    write_parquet,
)
from features.schema import CUSTOMER_ID, Table
from features.snapshot import write_snapshot
from features.tables import Tables
from features.training_set import DEFAULT_HORIZON_DAYS, Target, build_training_set, monthly_as_of_dates
from sendwise.console import console, progress_bar
from training.recommenders.batch import check_k, recommend_all
from training.recommenders.metrics import METRICS, SOURCE
from training.recommenders.rules import BusinessRules
from training.recommenders.store import REGISTERED_NAME, load_alias
from training.recommenders.train import DEFAULT_WINDOW_DAYS
from training.recommenders.train import train_recommender as fit_recommender
from training.registry import CHAMPION, list_versions, load_bundle
from training.scoring import score_customers
from training.tracking import configure_tracking
from training.train import TrainResult, train_classifier

# model name -> (headline holdout metric, logged baseline metric shown next to it)
HEADLINE_COLUMNS = {"churn": ("roc_auc", "baseline_logistic_log_rfm_roc_auc"),
                    "propensity": ("roc_auc", "baseline_logistic_log_rfm_roc_auc"),
                    "recommender": ("ndcg_at_10", "baseline_popular_ndcg_at_10")}
TRAIN_HINT = "Train one first: `sendwise train churn --data DIR --as-of DATE` (and `train propensity`)."
RECOMMENDER_HINT = "Train one first: `sendwise train recommender --data DIR --as-of DATE`."


def feature_config(path: Path | None) -> FeatureConfig:
    """The feature settings of ``--feature-config``, else :meth:`FeatureConfig.current`."""
    return FeatureConfig.load(path) if path else FeatureConfig.current()


def print_validation(report: ValidationReport) -> None:
    table = RichTable(title="Validation", title_justify="left")
    for col in ("table", "file", "read", "loaded", "rejected", "reasons"):
        table.add_column(col, justify="right" if col in ("read", "loaded", "rejected") else "left")
    for t in report.tables:
        reasons = "; ".join(f"{n:,} {r}" for r, n in list(t.reasons.items())[:4])
        table.add_row(t.table, Path(t.source).name, f"{t.read:,}", f"{t.loaded:,}", f"{t.rejected:,}", reasons)
    console.print(table)
    if report.rejects_dir:
        console.print(f"Rejected rows, with reasons: [bold]{report.rejects_dir}[/]")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


def print_import(report: ImportReport) -> None:
    table = RichTable(title=f"Import of {Path(report.source).name}", title_justify="left")
    table.add_column("rows")
    table.add_column("count", justify="right")
    table.add_row("read", f"{report.read:,}")
    table.add_row("loaded", f"{report.loaded:,}")
    table.add_row("rejected", f"{report.rejected:,}")
    for reason, n in report.reasons.items():
        table.add_row(f"  {reason}", f"{n:,}")
    if report.forgotten:
        table.add_row("left out: forgotten customers", f"{report.forgotten:,}")
    for name, n in report.tables.items():
        table.add_row(f"{name}.parquet written", f"{n:,}")
    console.print(table)
    if report.rejects_file:
        console.print(f"Rejected rows, with reasons: [bold]{report.rejects_file}[/]")


def load(data: Path, rejects: Path | None = None, quiet: bool = False,
         encoding: Encoding | str = Encoding.UTF_8, require_orders: bool = True) -> Tables:
    """Validate ``data`` (printing the summary unless ``quiet`` and clean); with ``require_orders``,
    orders with every row rejected are an error (nothing to compute from)."""
    tables, report = load_data_dir(data, rejects, encoding)
    if not quiet or report.rejected or report.warnings:
        print_validation(report)
    orders = next(t for t in report.tables if t.table == Table.ORDERS.value)
    if require_orders and orders.loaded == 0 and orders.rejected:
        reasons = "; ".join(f"{n:,} {r}" for r, n in list(orders.reasons.items())[:3])
        raise InputError(f"{orders.source}: orders has no rows left: all {orders.rejected:,} were rejected "
                         f"({reasons}); see {report.rejects_dir}.")
    return tables


def validate(data: Path, rejects: Path | None = None, encoding: Encoding | str = Encoding.UTF_8) -> None:
    """Check a data directory against the contract and print what was loaded and rejected."""
    load(data, rejects, encoding=encoding, require_orders=False)


def generate(out: Path, customers: int = 10_000, seed: int = 0, products: int = 1_000,
             start: datetime | str = DemoShop.start, end: datetime | str = DemoShop.end) -> None:
    """Write a synthetic shop with planted behaviour (see features/demo.py) to ``out``."""
    refuse_mixed_tables(out, Table)
    shop = DemoShop(customers=customers, seed=seed, products=products,
                    start=start.isoformat() if isinstance(start, datetime) else start,
                    end=end.isoformat() if isinstance(end, datetime) else end)
    with progress_bar() as bar:
        task = bar.add_task("simulating customers", total=customers)
        counts = generate_demo(shop, out, progress=lambda done: bar.update(task, completed=done))
    console.print(", ".join(f"{name}: {n:,} rows" for name, n in counts.items()) + f" written to {out}")


def training_set(data: Path, out: Path, target: Target = Target.CHURNED, horizon: int | None = None,
                 as_of: list[datetime] | None = None, last: datetime | None = None, periods: int = 12,
                 rejects: Path | None = None, encoding: Encoding | str = Encoding.UTF_8,
                 settings: Path | None = None) -> None:
    """Features at several as_of dates, stacked, labelled from [as_of, as_of + horizon)."""
    refuse_overwriting_inputs(out, data_dir=data)
    config = feature_config(settings)
    tables = load(data, rejects, quiet=True, encoding=encoding)
    horizon_days = horizon if horizon is not None else DEFAULT_HORIZON_DAYS[target]
    dates = as_of or monthly_as_of_dates(tables, horizon_days, periods, last)
    with progress_bar() as bar:
        task = bar.add_task("as_of dates", total=len(dates))
        result = build_training_set(tables, dates, target, horizon_days, config,
                                    progress=lambda _: bar.advance(task))
    write_parquet(result.frame, out)
    for skipped in result.skipped:
        console.print(f"[yellow]skipped[/] as_of {skipped}: its {horizon_days}-day label window is not fully observed")
    summary = result.frame.groupby("as_of")[target.value].agg(["size", "mean"])
    table = RichTable(title=f"{target.value} within {horizon_days} days", title_justify="left")
    for col in ("as_of", "rows", f"{target.value} rate"):
        table.add_column(col, justify="right")
    for when, row in summary.iterrows():
        table.add_row(str(when.date()), f"{int(row['size']):,}", f"{row['mean']:.1%}")
    console.print(table)
    console.print(f"{len(result.frame):,} rows written to {out}")


def snapshot(data: Path, out: Path, as_of: datetime | None = None, rejects: Path | None = None,
             encoding: Encoding | str = Encoding.UTF_8, settings: Path | None = None) -> None:
    """Latest features of every customer, for serving."""
    refuse_overwriting_inputs(out, data_dir=data)
    config = feature_config(settings)
    tables = load(data, rejects, quiet=True, encoding=encoding)
    features, when = write_snapshot(tables, out, as_of, config)
    console.print(f"snapshot of {len(features):,} customers at {when} written to {out}")


def print_training(result: TrainResult) -> None:
    table = RichTable(title=f"{result.name} v{result.version}: holdout at {result.holdout_as_of:%Y-%m-%d} "
                            f"({result.holdout_rows:,} customers)", title_justify="left")
    columns = ["roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_at_10", "capture_at_10", "lift_at_20"]
    table.add_column("model")
    for col in columns:
        table.add_column(col, justify="right")
    rows = {"xgboost (calibrated)": result.metrics} | result.baselines
    for name, metrics in rows.items():
        table.add_row(name, *(f"{metrics[c]:.3f}" if metrics[c] == metrics[c] else "-" for c in columns))
    console.print(table)
    console.print("positives per fold (probabilities are calibrated to the calibration fold's): " + ", ".join(
        f"{fold} {rate:.1%}" for fold, rate in result.positive_rates.items()))
    console.print(f"MLflow run {result.run_id}; registered as {result.name} v{result.version} (alias challenger)")


def train(target: Target, data: Path, as_of: datetime, horizon: int | None = None, trials: int = 0,
          periods: int = 12, rejects: Path | None = None, settings: Path | None = None) -> None:
    """A classifier for ``target`` on rows before ``as_of``, tracked in MLflow, registered as challenger."""
    config = feature_config(settings)
    tables = load(data, rejects, quiet=True)
    with progress_bar() as bar:
        task = bar.add_task("training", total=None)
        result = train_classifier(tables, target, as_of, horizon, trials, periods,
                                  progress=lambda what: bar.update(task, description=what), feature_config=config)
    print_training(result)


def train_churn(data: Path, as_of: datetime, horizon: int = 90, trials: int = 0, periods: int = 12,
                rejects: Path | None = None, settings: Path | None = None) -> None:
    """Churn model (no order in the next ``horizon`` days) for customers with an order."""
    train(Target.CHURNED, data, as_of, horizon, trials, periods, rejects, settings)


def train_propensity(data: Path, as_of: datetime, horizon: int = 30, trials: int = 0, periods: int = 12,
                     rejects: Path | None = None, settings: Path | None = None) -> None:
    """Purchase-propensity model (an order in the next ``horizon`` days) for every known customer."""
    train(Target.PURCHASED, data, as_of, horizon, trials, periods, rejects, settings)


def print_metrics(table: pd.DataFrame, k: int, title: str) -> None:
    out = RichTable(title=title, title_justify="left")
    for col in ("model", "variant", "customers", *(f"{m}@{k}" for m in METRICS), "coverage"):
        out.add_column(col, justify="left" if col in ("model", "variant") else "right")
    for row in table.sort_values(["variant", "ndcg"], ascending=[False, False]).itertuples(index=False):
        r = row._asdict()
        out.add_row(r["model"], r["variant"], f"{r['customers']:,}", *(f"{r[m]:.4f}" for m in METRICS),
                    f"{r['coverage']:.3f}")
    console.print(out)


def train_recommender(data: Path, as_of: datetime, model: str = "als", trials: int = 0, k: int = 10,
                      window: int = DEFAULT_WINDOW_DAYS, rejects: Path | None = None) -> None:
    """Recommender on rows before ``as_of``; tuned, evaluated, logged to MLflow and registered."""
    tables = load(data, rejects, quiet=True)
    with progress_bar() as bar:
        task = bar.add_task("training", total=None)
        result = fit_recommender(tables, as_of, model, trials, k, window,
                                 progress=lambda what: bar.update(task, description=what))
    print_metrics(result.table, k, f"recommender v{result.version} ({model}): holdout "
                                   f"{result.holdout.as_of:%Y-%m-%d} to {result.holdout.until:%Y-%m-%d}")
    console.print(f"parameters: {result.params}")
    console.print(f"MLflow run {result.run_id}; registered as {REGISTERED_NAME} v{result.version} (alias challenger)")


def list_models(names: list[str] | None = None) -> None:
    """Versions, aliases and headline holdout metrics."""
    configure_tracking()
    table = RichTable(title="Registered models", title_justify="left")
    for col in ("model", "version", "aliases", "created", "holdout", "metric", "holdout value", "baseline",
                "baseline value"):
        table.add_column(col)
    for name in names or list(HEADLINE_COLUMNS):
        metric, baseline = HEADLINE_COLUMNS.get(name, HEADLINE_COLUMNS["churn"])
        for row in list_versions(name):
            m = row.metrics
            table.add_row(name, row.version, ", ".join(sorted(row.aliases)),
                          f"{datetime.fromtimestamp(row.created / 1000):%Y-%m-%d %H:%M}",
                          row.tags.get("holdout_as_of", "")[:10], metric,
                          f"{m[f'holdout_{metric}']:.4f}" if f"holdout_{metric}" in m else "-",
                          baseline.split("_", 1)[1].rsplit(f"_{metric}", 1)[0],
                          f"{m[baseline]:.4f}" if baseline in m else "-")
    console.print(table)


def _write_table(frame: pd.DataFrame, out: Path) -> None:
    if out.suffix == ".csv":
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out, index=False)
    else:
        write_parquet(frame, out)


def score(data: Path, as_of: datetime, out: Path, rejects: Path | None = None) -> None:
    """Churn and purchase probabilities, risk band, segment, stage and top 3 reasons per customer."""
    if out.suffix not in (".csv", ".parquet"):
        raise InputError(f"--out must end in .csv or .parquet; got {out.name}")
    refuse_overwriting_inputs(out, data_dir=data)
    tables = load(data, rejects, quiet=True)
    configure_tracking()
    churn = load_bundle("churn", CHAMPION, TRAIN_HINT)
    propensity = load_bundle("propensity", CHAMPION, TRAIN_HINT)
    with progress_bar() as bar:
        task = bar.add_task("scoring", total=None)
        scores, when = score_customers(tables, as_of, churn, propensity,
                                       progress=lambda done: bar.update(task, completed=done))
    _write_table(scores, out)
    console.print(f"{len(scores):,} customers scored at {when} with churn v{churn.meta['version']} and "
                  f"propensity v{propensity.meta['version']}; written to {out}")
    console.print(scores["churn_risk"].value_counts().rename("customers").to_frame().T.to_string())


def recommend(data: Path, as_of: datetime, out: Path, k: int = 10, alias: str = CHAMPION,
              rules: BusinessRules | None = None, rejects: Path | None = None) -> None:
    """Top-k products for every known customer with the ``alias`` model and the business rules
    (default: :class:`BusinessRules`' defaults)."""
    if out.suffix not in (".csv", ".parquet"):
        raise InputError(f"--out must end in .csv or .parquet; got {out.name}")
    refuse_overwriting_inputs(out, data_dir=data)
    check_k(k)
    rules = rules or BusinessRules()
    tables = load(data, rejects, quiet=True)
    configure_tracking()
    model, version = load_alias(alias, RECOMMENDER_HINT)
    with progress_bar() as bar:
        task = bar.add_task("recommending", total=None)
        recs = recommend_all(tables, to_timestamp(as_of), model, k, rules,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
    _write_table(recs, out)
    customers = recs[CUSTOMER_ID].nunique()
    console.print(f"{len(recs):,} recommendations for {customers:,} customers with {REGISTERED_NAME} v{version} "
                  f"({model.kind}); written to {out}")
    console.print(recs[SOURCE].value_counts().rename("rows").to_frame().T.to_string())
