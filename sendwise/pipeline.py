"""The pipeline's steps as plain functions: typed arguments in, the work done, what the command prints
printed. The ``sendwise`` commands (sendwise/commands/) parse their options and call these; the demo
(sendwise/demo.py) calls them directly, never a Typer command.

Errors a user can fix are :class:`features.errors.SendwiseError`; a command turns them into its red
one-line message and exit code 2 (:func:`sendwise.console.reports_user_errors`)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pandas as pd
from rich import box
from rich.table import Table as RichTable

from features.attributes import current_attributes, with_current_attributes
from features.build import build_features, to_timestamp
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
from features.schema import AS_OF, CUSTOMER_ID, EMAIL_CONSENT, UNSUBSCRIBED, Table
from features.snapshot import snapshot_as_of, write_snapshot
from features.spark import sample_customers, spark_training_set, to_pandas
from features.tables import Tables
from features.training_set import (
    DEFAULT_HORIZON_DAYS,
    Target,
    build_training_set,
    data_end,
    monthly_as_of_dates,
    usable_dates,
)
from features.validate import ContractError
from sendwise.console import console, errors, iso, progress_bar
from sendwise.engines import (
    EngineName,
    check_output,
    default_spark,
    is_directory_output,
    open_tables,
    output_location,
    write_partitioned,
)
from serving.consent import ConsentRule, emailable_line, may_email
from training.clv import DEFAULT_HORIZON_DAYS as DEFAULT_CLV_HORIZON_DAYS
from training.promotion import DEFAULT_MARGIN, PromotionDecision, promote
from training.recommenders.batch import check_k, recommend_all
from training.recommenders.metrics import METRICS, RANK, SOURCE
from training.recommenders.models import make_recommender
from training.recommenders.rules import BusinessRules
from training.recommenders.selection import AUTO
from training.recommenders.spark_batch import recommend_all_spark
from training.recommenders.store import REGISTERED_NAME, load_registered
from training.recommenders.train import DEFAULT_WINDOW_DAYS, serving_candidates
from training.recommenders.train import train_recommender as fit_recommender
from training.registry import (
    CHAMPION,
    ModelProvenance,
    bundle_provenance,
    check_provenance,
    list_versions,
    load_bundle,
    registered_name,
)
from training.scoring import clv_model, models_feature_config, score_features
from training.spark_scoring import score_customers_spark
from training.tracking import configure_tracking
from training.train import MODEL_NAMES, TrainResult, train_classifier

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from features.spark import CustomerSample, SparkTables
    from sendwise.project import SparkSettings as SparkSettingsType

# model name -> (headline holdout metric, logged baseline metric shown next to it)
HEADLINE_COLUMNS = {"churn": ("roc_auc", "baseline_logistic_log_rfm_roc_auc"),
                    "propensity": ("roc_auc", "baseline_logistic_log_rfm_roc_auc"),
                    "recommender": ("ndcg_at_10", "baseline_popular_ndcg_at_10")}
WIDE_MODELS_TABLE = 150  # columns the one-line-per-version models table needs; narrower: a cell per subject
TRAIN_HINT = "Train one first: `sendwise train churn --data DIR --as-of DATE` (and `train propensity`)."
RECOMMENDER_HINT = "Train one first: `sendwise train recommender --data DIR --as-of DATE`."
FOREIGN_OVERRIDE = "pass --allow-foreign-models (allow_foreign_models=True)"


def check_model(name: str, version: str, provenance: ModelProvenance, data: Path, project: str | None,
                allow_foreign_models: bool) -> None:
    """Refuse a version of ``name`` registered for another project than ``project``
    (:class:`~training.registry.ForeignModelError`) unless ``allow_foreign_models``; print a warning
    for one used anyway, or (without a project) trained on another data directory than ``data``."""
    warning = check_provenance(name, version, provenance, project, allow_foreign_models, str(data.resolve()),
                               FOREIGN_OVERRIDE)
    if warning:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


def print_emailable(tables: Tables, features: pd.DataFrame, rule: ConsentRule = ConsentRule.RECORDED) -> str:
    """Print ``emailable: N of M customers (X%) under consent rule R`` for the customers of
    ``features`` (consent as of today, unsubscribes as of the features' as_of), and a warning when
    nobody may be emailed; returns the line."""
    columns = [c for c in (CUSTOMER_ID, EMAIL_CONSENT, UNSUBSCRIBED) if c in features]
    signals = with_current_attributes(features[columns], current_attributes(tables))
    line, warning = emailable_line(may_email(signals, rule), rule)
    console.print(line)
    if warning:
        errors.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    return line


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
         encoding: Encoding | str = Encoding.UTF_8, require_orders: bool = True, timezone: str | None = None,
         event_log: Path | None = None) -> Tables:
    """Validate ``data`` (printing the summary unless ``quiet`` and clean); with ``require_orders``,
    orders with every row rejected are an error (nothing to compute from). Naive timestamps are local
    times of ``timezone`` (default: UTC), see :func:`features.io.load_data_dir`; ``event_log``'s events
    are added to the data."""
    tables, report = load_data_dir(data, rejects, encoding, timezone=timezone, event_log=event_log)
    if not quiet or report.rejected or report.warnings:
        print_validation(report)
    orders = next(t for t in report.tables if t.table == Table.ORDERS.value)
    if require_orders and orders.loaded == 0 and orders.rejected:
        reasons = "; ".join(f"{n:,} {r}" for r, n in list(orders.reasons.items())[:3])
        raise InputError(f"{orders.source}: orders has no rows left: all {orders.rejected:,} were rejected "
                         f"({reasons}); see {report.rejects_dir}.")
    return tables


def validate(data: Path, rejects: Path | None = None, encoding: Encoding | str = Encoding.UTF_8,
             timezone: str | None = None) -> None:
    """Check a data directory against the contract and print what was loaded and rejected."""
    load(data, rejects, encoding=encoding, require_orders=False, timezone=timezone)


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
                 settings: Path | None = None, timezone: str | None = None,
                 engine: EngineName = EngineName.DUCKDB, spark: SparkSettingsType | None = None) -> None:
    """Features at several as_of dates, stacked, labelled from [as_of, as_of + horizon); naive
    timestamps are local times of ``timezone`` (default: UTC). With Spark and an ``out`` without the
    ``.parquet`` suffix, nothing is collected: Spark writes Parquet files partitioned by as_of."""
    refuse_overwriting_inputs(out, data_dir=data)
    check_output(engine, out, spark=spark)
    config = feature_config(settings)
    tables = open_tables(engine, data, rejects, spark, encoding=encoding, timezone=timezone)
    horizon_days = horizon if horizon is not None else DEFAULT_HORIZON_DAYS[target]
    dates = as_of or monthly_as_of_dates(tables, horizon_days, periods, last)
    if engine is EngineName.SPARK and is_directory_output(out):
        used, skipped = usable_dates(dates, horizon_days, data_end(tables))
        with progress_bar() as bar:
            bar.add_task(f"Spark: {len(used)} as_of dates", total=None)
            write_partitioned(spark_training_set(tables, used, target, horizon_days, config), out)
        written = tables.spark.read.parquet(output_location(out))
        rates = f"SELECT {AS_OF}, count(*) AS size, avg(CAST({target.value} AS DOUBLE)) AS mean FROM written GROUP BY 1"
        written.createOrReplaceTempView("written")
        summary = tables.spark.sql(rates).toPandas().set_index(AS_OF).sort_index()
    else:
        with progress_bar() as bar:
            task = bar.add_task("as_of dates", total=len(dates))
            result = build_training_set(tables, dates, target, horizon_days, config,
                                        progress=lambda _: bar.advance(task))
        write_parquet(result.frame, out)
        skipped = result.skipped
        summary = result.frame.groupby(AS_OF)[target.value].agg(["size", "mean"])
    for date in skipped:
        console.print(f"[yellow]skipped[/] as_of {iso(date)}: its {horizon_days}-day label window is not "
                      "fully observed")
    table = RichTable(title=f"{target.value} within {horizon_days} days", title_justify="left")
    for col in ("as_of", "rows", f"{target.value} rate"):
        table.add_column(col, justify="right")
    for when, row in summary.iterrows():
        table.add_row(iso(when), f"{int(row['size']):,}", f"{row['mean']:.1%}")
    console.print(table)
    console.print(f"{int(summary['size'].sum()):,} rows written to {out}")


def snapshot(data: Path, out: Path, as_of: datetime | None = None, rejects: Path | None = None,
             encoding: Encoding | str = Encoding.UTF_8, settings: Path | None = None,
             timezone: str | None = None, engine: EngineName = EngineName.DUCKDB,
             spark: SparkSettingsType | None = None) -> None:
    """Latest features of every customer, for serving: one .parquet file (the service reads it),
    computed by ``engine``."""
    if is_directory_output(out):
        raise InputError(f"--out {out}: the snapshot is one .parquet file, which the service reads.")
    refuse_overwriting_inputs(out, data_dir=data)
    config = feature_config(settings)
    tables = open_tables(engine, data, rejects, spark, encoding=encoding, timezone=timezone)
    features, when = write_snapshot(tables, out, as_of, config)
    console.print(f"snapshot of {len(features):,} customers at {iso(when)} written to {out}")


def _compact(title: str) -> RichTable:
    """A table without vertical rules, for output that must read in an 80-column terminal."""
    return RichTable(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)


def print_training(result: TrainResult) -> None:
    """The kind shipped and why, the holdout metrics of the model and its baselines, one row per metric
    (fits 80 columns), and for churn the CLV model it carries (its horizon) or why there is none."""
    console.print(f"model: {result.model_choice}", highlight=False)
    table = _compact(f"{result.name} v{result.version}: holdout at {iso(result.holdout_as_of)} "
                     f"({result.holdout_rows:,} customers)")
    metrics = ["roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_at_10", "capture_at_10", "lift_at_20"]
    models = {f"{result.bundle.kind} (calibrated)": result.metrics} | result.baselines
    table.add_column("metric")
    for name in models:
        table.add_column(name, justify="right")
    for metric in metrics:
        table.add_row(metric, *(f"{m[metric]:.3f}" if m[metric] == m[metric] else "-" for m in models.values()))
    console.print(table)
    console.print("positives per fold (probabilities are calibrated to the calibration fold's): " + ", ".join(
        f"{fold} {rate:.1%}" for fold, rate in result.positive_rates.items()))
    if result.clv is not None:
        console.print(result.clv, highlight=False)
    console.print(f"MLflow run {result.run_id}; registered as {result.name} v{result.version} (alias challenger)")
    print_plots(result.run_id)


def print_plots(run_id: str) -> None:
    """Where MLflow keeps the run's plots, and the command that shows them with the run."""
    uri = mlflow.get_tracking_uri()
    console.print(f"plots: {mlflow.get_run(run_id).info.artifact_uri}/plots", highlight=False, soft_wrap=True)
    console.print(f"open with: mlflow ui --backend-store-uri {uri}", highlight=False, soft_wrap=True)


def train(target: Target, data: Path, as_of: datetime, horizon: int | None = None, trials: int = 0,
          periods: int = 12, rejects: Path | None = None, settings: Path | None = None,
          project: str | None = None, *, timezone: str | None = None, mlruns: Path | None = None,
          engine: EngineName = EngineName.DUCKDB, spark: SparkSettingsType | None = None,
          clv_horizon_days: int = DEFAULT_CLV_HORIZON_DAYS) -> None:
    """A classifier for ``target`` on rows before ``as_of`` (the kind that ranks the latest labelled
    month best; a churn model carries the CLV model over ``clv_horizon_days``, fitted at ``as_of``),
    tracked in the MLflow store of ``mlruns`` (default: ./mlruns; ``MLFLOW_TRACKING_URI`` wins),
    registered as ``project``'s challenger (none: the global names) with the data directory it was
    trained on; prints the choice, the CLV line and where its plots are. With Spark, the model is
    trained on one node from a seeded sample of ``spark.sample_customers`` customers (each with their
    whole history), recorded with the run (``sample_*`` parameters); the CLV model is then fitted on
    the sample's features (customers drawn by a hash of their id, each with their whole history: its
    parameters estimate the shop's). With ``spark.training: full``, XGBoost on every row instead
    (:func:`train_full_data`)."""
    registered_name(MODEL_NAMES[target], project)  # a bad project name fails before the data is read
    full_data = engine is EngineName.SPARK and (spark or default_spark()).training == "full"
    if full_data and trials:
        raise InputError(f"trials is {trials}: full-data training (spark.training: full) fits XGBoost with its "
                         "default parameters, and Optuna needs the folds on one node. Pass --trials 0 (or set "
                         "run.trials: 0), or set spark.training: sample in sendwise.yaml.")
    config = feature_config(settings)
    tables = open_tables(engine, data, rejects, spark, timezone=timezone)
    run_params: dict[str, object] = {}
    source = data_source(data, engine, spark)
    if full_data:
        train_full_data(tables, target, as_of, horizon, periods, spark or default_spark(), mlruns=mlruns,
                        feature_config=config, project=project, data_source=source)
        return
    if engine is EngineName.SPARK:
        tables, sample = sample_to_one_node(tables, spark)
        run_params = sample.params()
    with progress_bar() as bar:
        task = bar.add_task("training", total=None)
        result = train_classifier(tables, target, as_of, horizon, trials, periods, mlruns=mlruns,
                                  progress=lambda what: bar.update(task, description=what), feature_config=config,
                                  project=project, data_source=source, run_params=run_params,
                                  clv_horizon_days=clv_horizon_days)
    print_training(result)


def data_source(data: Path, engine: EngineName, spark: SparkSettingsType | None) -> str:
    """Where a model's rows came from, recorded on its version: the data directory, or with Spark
    reading the lake (``spark.tables``), each table and its location."""
    if engine is EngineName.SPARK and spark is not None and spark.tables:
        return "; ".join(f"{table}={where}" for table, where in sorted(spark.tables.items()))
    return str(data.resolve())


def sample_to_one_node(tables: SparkTables, spark: SparkSettingsType | None) -> tuple[Tables, CustomerSample]:
    """A seeded sample of ``spark.sample_customers`` customers of the Spark shop copied to DuckDB on this
    node, each with their whole history (:func:`features.spark.sample_customers`); prints how many of
    how many customers a model trained on it sees."""
    limit = (spark or default_spark()).sample_customers
    with progress_bar() as bar:
        bar.add_task(f"Spark: sampling up to {limit:,} customers", total=None)
        sampled, sample = sample_customers(tables, limit)
    console.print(f"training on {sample.sampled:,} of {sample.customers:,} customers (a {sample.fraction:.1%} "
                  f"sample, seed {sample.seed}), each with their whole history")
    return sampled, sample


def train_full_data(tables: SparkTables, target: Target, as_of: datetime, horizon: int | None, periods: int,
                    spark: SparkSettingsType, *, mlruns: Path | None, feature_config: FeatureConfig,
                    project: str | None, data_source: str) -> None:
    """``spark.training: full``: XGBoost on every row with SparkXGBClassifier
    (:func:`training.spark_training.train_classifier_spark`), the default parameters, no kind choice and
    no CLV model (both need the folds on one node: ``spark.training: sample``)."""
    from training.spark_training import train_classifier_spark  # pyspark: the spark extra

    console.print("training on every row with SparkXGBClassifier (spark.training: full): XGBoost with its default "
                  "parameters; no other kind compared" + ("" if target is Target.PURCHASED else ", no CLV model"))
    with progress_bar() as bar:
        task = bar.add_task("training on Spark", total=None)
        result = train_classifier_spark(tables, target, as_of, horizon, periods, mlruns=mlruns,
                                        progress=lambda what: bar.update(task, description=what),
                                        feature_config=feature_config, project=project, data_source=data_source,
                                        max_driver_rows=spark.driver_rows, num_workers=spark.xgboost_workers)
    print_training(result)


def train_churn(data: Path, as_of: datetime, horizon: int = 90, trials: int = 0, periods: int = 12,
                rejects: Path | None = None, settings: Path | None = None, project: str | None = None, *,
                timezone: str | None = None, mlruns: Path | None = None, engine: EngineName = EngineName.DUCKDB,
                spark: SparkSettingsType | None = None, clv_horizon_days: int = DEFAULT_CLV_HORIZON_DAYS) -> None:
    """Churn model (no order in the next ``horizon`` days) for customers with an order, carrying the
    CLV model over ``clv_horizon_days`` (180 or 90 for a short history)."""
    train(Target.CHURNED, data, as_of, horizon, trials, periods, rejects, settings, project, timezone=timezone,
          mlruns=mlruns, engine=engine, spark=spark, clv_horizon_days=clv_horizon_days)


def train_propensity(data: Path, as_of: datetime, horizon: int = 30, trials: int = 0, periods: int = 12,
                     rejects: Path | None = None, settings: Path | None = None, project: str | None = None, *,
                     timezone: str | None = None, mlruns: Path | None = None,
                     engine: EngineName = EngineName.DUCKDB, spark: SparkSettingsType | None = None) -> None:
    """Purchase-propensity model (an order in the next ``horizon`` days) for every known customer."""
    train(Target.PURCHASED, data, as_of, horizon, trials, periods, rejects, settings, project, timezone=timezone,
          mlruns=mlruns, engine=engine, spark=spark)


def print_metrics(table: pd.DataFrame, k: int, title: str) -> None:
    """The recommenders' holdout metrics: one table per variant (new items first: every model is
    evaluated on the same customers), the best NDCG first; fits 80 columns."""
    console.print(title, highlight=False)
    for variant, rows in sorted(table.groupby("variant"), key=lambda item: item[0], reverse=True):
        out = _compact(f"{variant}: {int(rows['customers'].iloc[0]):,} customers")
        out.add_column("model")
        for metric in METRICS:
            out.add_column(f"{metric.replace('_', ' ')}\n@{k}", justify="right")
        out.add_column("coverage", justify="right")
        for row in rows.sort_values("ndcg", ascending=False).itertuples(index=False):
            r = row._asdict()
            out.add_row(r["model"], *(f"{r[m]:.4f}" for m in METRICS), f"{r['coverage']:.3f}")
        console.print(out)


def train_recommender(data: Path, as_of: datetime, model: str = "als", trials: int = 0, k: int = 10,
                      window: int = DEFAULT_WINDOW_DAYS, rejects: Path | None = None,
                      project: str | None = None, *, timezone: str | None = None,
                      mlruns: Path | None = None, engine: EngineName = EngineName.DUCKDB,
                      spark: SparkSettingsType | None = None) -> None:
    """Recommender on rows before ``as_of``; tuned, evaluated, logged to the MLflow store of
    ``mlruns`` (default: ./mlruns) and registered as ``project``'s (none: the global name) with the
    data directory it was trained on; prints where its plots are. With Spark, it is trained on this
    node from a seeded sample of ``spark.sample_customers`` customers (each with their whole history),
    recorded with the run (``sample_*`` parameters), whatever ``spark.training`` says."""
    name = registered_name(REGISTERED_NAME, project)
    tables = open_tables(engine, data, rejects, spark, timezone=timezone)
    run_params: dict[str, object] = {}
    sampled = False
    if engine is EngineName.SPARK:
        tables, sample = sample_to_one_node(tables, spark)
        run_params, sampled = sample.params(), sample.fraction < 1
        if sampled and model == AUTO:
            console.print("auto compares only the models that serve the customers outside the sample: "
                          + ", ".join(c.name for c in serving_candidates(window)), highlight=False)
        elif sampled and not make_recommender(model).serves_customers_outside_fit:
            console.print(f"warning: {model} does not serve customers outside its fit; the customers outside the "
                          "sample will get the popular fallback (als, itemknn and ease serve them)", highlight=False)
    with progress_bar() as bar:
        task = bar.add_task("training", total=None)
        result = fit_recommender(tables, as_of, model, trials, k, window, mlruns=mlruns,
                                 progress=lambda what: bar.update(task, description=what), project=project,
                                 data_source=data_source(data, engine, spark), run_params=run_params,
                                 sampled=sampled)
    if result.choice is not None:
        console.print(result.choice.render(), highlight=False)
    print_metrics(result.table, k, f"{name} v{result.version} ({result.kind}): holdout "
                                   f"{iso(result.holdout.as_of)} to {iso(result.holdout.until)}")
    console.print(f"protocol: {result.protocol}", highlight=False)
    console.print(f"parameters: {result.params}")
    console.print(f"MLflow run {result.run_id}; registered as {name} v{result.version} (alias challenger)")
    print_plots(result.run_id)


def list_models(names: list[str] | None = None, project: str | None = None, *, mlruns: Path | None = None) -> None:
    """Versions, aliases, provenance (project, data fingerprint, trained through) and headline holdout
    metrics of the models ``names`` (default: all three) of ``project`` (none: the global names) in
    the MLflow store of ``mlruns`` (default: ./mlruns)."""
    configure_tracking(mlruns)
    names = names or list(HEADLINE_COLUMNS)
    title = "Registered models"
    if project:
        title += f" of project {project} ({', '.join(registered_name(n, project) for n in names)})"
    wide = console.width >= WIDE_MODELS_TABLE
    table = RichTable(title=title, title_justify="left") if wide else _compact(title)
    columns = ("model", "v", "aliases", "created", "project", "data", "trained through", "holdout", "metric",
               "value", "baseline") if wide else ("model", "v", "aliases", "holdout", "trained through")
    for col in columns:
        table.add_column(col, justify="right" if col in ("value", "baseline") else "left",
                         no_wrap=wide and col in ("data", "trained through", "holdout", "value", "baseline"))
    baselines = {}
    for name in names:
        metric, baseline = HEADLINE_COLUMNS.get(name, HEADLINE_COLUMNS["churn"])
        for row in list_versions(name, project):
            m, provenance = row.metrics, row.provenance
            baselines.setdefault(baseline.split("_", 1)[1].rsplit(f"_{metric}", 1)[0], []).append(name)
            cells = {"created": f"{datetime.fromtimestamp(row.created / 1000):%Y-%m-%dT%H:%M}",
                     "project": provenance.project or "-", "data": (provenance.data_fingerprint or "-")[:12],
                     "through": (provenance.through or "-")[:19], "holdout": row.tags.get("holdout_as_of", "")[:10],
                     "value": f"{m[f'holdout_{metric}']:.4f}" if f"holdout_{metric}" in m else "-",
                     "baseline": f"{m[baseline]:.4f}" if baseline in m else "-"}
            head = (name, row.version, ", ".join(sorted(row.aliases)))
            if wide:
                table.add_row(*head, *(cells[c] for c in ("created", "project", "data", "through", "holdout")),
                              metric, cells["value"], cells["baseline"])
            else:  # a cell per subject, one fact per line
                table.add_row(*head, f"{cells['holdout']}\n{metric} {cells['value']}\nbaseline {cells['baseline']}",
                              f"{cells['through']}\ndata {cells['data']}\nproject {cells['project']}\n"
                              f"created {cells['created'][:10]}", end_section=True)
    console.print(table)
    if baselines:
        console.print("data: the fingerprint of the rows training read; baseline: " + "; ".join(
            f"{b} for {', '.join(dict.fromkeys(models))}" for b, models in baselines.items()), highlight=False)


def _write_table(frame: pd.DataFrame, out: Path) -> None:
    if out.suffix == ".csv":
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out, index=False)
    else:
        write_parquet(frame, out)


def _write_spark(frame: DataFrame, out: Path, order: list[str], summary: str) -> tuple[pd.Series, int]:
    """Spark's rows in ``out``: a directory of Parquet files written by Spark, or one file collected
    here, sorted by ``order`` as the local path writes it. Returns the written rows counted per value
    of ``summary``, and their distinct customers: nothing but counts reaches this process."""
    if is_directory_output(out):
        write_partitioned(frame, out, partition_by=None)
        written = frame.sparkSession.read.parquet(output_location(out))
        counts = written.groupBy(summary).count().toPandas().set_index(summary)["count"]
        return counts, written.select(CUSTOMER_ID).distinct().count()
    rows = to_pandas(frame).sort_values(order, ignore_index=True)
    _write_table(rows, out)
    return rows[summary].value_counts(dropna=False), rows[CUSTOMER_ID].nunique()


def _moment(tables: Tables | SparkTables, as_of: datetime | None) -> pd.Timestamp:
    """``as_of``, else just after the data's last row (as the snapshot); an error when it is not
    after the data's first row (nobody is known yet)."""
    when = to_timestamp(as_of) if as_of is not None else to_timestamp(snapshot_as_of(tables))
    start, _ = tables.time_range()
    if start is None or when <= start:
        raise ContractError(f"--as-of {iso(when)} is not after the first row of the data ({iso(start)}).")
    return when


def score(data: Path, as_of: datetime | None, out: Path, rejects: Path | None = None, project: str | None = None,
          allow_foreign_models: bool = False, *, timezone: str | None = None, mlruns: Path | None = None,
          consent: ConsentRule = ConsentRule.RECORDED, clv_horizon_days: int | None = None,
          engine: EngineName = EngineName.DUCKDB, spark: SparkSettingsType | None = None) -> None:
    """Churn and purchase probabilities, risk band, segment, stage, lifetime value over
    ``clv_horizon_days`` (default: the CLV model's, 365 or shorter for a short history; none when the
    churn model carries no CLV model) and top 3 reasons per customer at
    ``as_of`` (default: just after the data's last row), with ``project``'s champions (none: the
    global names) from the MLflow store of ``mlruns`` (default: ./mlruns); prints how many may be
    emailed under the ``consent`` rule. A champion registered for another project is refused unless
    ``allow_foreign_models``; without a project, one trained on another data directory is used with
    a warning. With Spark, the project's scorer runs on every partition (the same rows); an ``out``
    without a suffix is then a directory of Parquet files written by Spark, and the emailable count is
    left out."""
    refuse_overwriting_inputs(out, data_dir=data)
    check_output(engine, out, (".csv", ".parquet"), spark)
    registered_name("churn", project)  # a bad project name fails before the data is read
    tables = open_tables(engine, data, rejects, spark, timezone=timezone)
    when = _moment(tables, as_of)
    configure_tracking(mlruns)
    churn = load_bundle("churn", CHAMPION, TRAIN_HINT, project)
    propensity = load_bundle("propensity", CHAMPION, TRAIN_HINT, project)
    for bundle in (churn, propensity):
        check_model(registered_name(MODEL_NAMES[Target(bundle.target)], project), str(bundle.meta["version"]),
                    bundle_provenance(bundle), data, project, allow_foreign_models)
    if engine is EngineName.SPARK:
        with progress_bar() as bar:
            bar.add_task("Spark: scoring", total=None)
            frame, _ = score_customers_spark(tables, when, churn, propensity, clv_horizon_days)
            bands, customers = _write_spark(frame, out, [CUSTOMER_ID], "churn_risk")
        features = None
    else:
        with progress_bar() as bar:
            task = bar.add_task("scoring", total=None)
            # the features of training.scoring.score_customers, kept for the consent line
            features = build_features(tables.before(when), when, models_feature_config(churn, propensity))
            scores = score_features(features, churn, propensity,
                                    progress=lambda done: bar.update(task, completed=done),
                                    clv_horizon_days=clv_horizon_days)
        _write_table(scores, out)
        bands, customers = scores["churn_risk"].value_counts(dropna=False), len(scores)
    console.print(f"{customers:,} customers scored at {iso(when)} with churn v{churn.meta['version']} and "
                  f"propensity v{propensity.meta['version']}; written to {out}")
    clv = clv_model(churn)
    if clv is None:
        console.print("no lifetime value: the churn model carries no CLV model (`sendwise run` and `sendwise "
                      "train churn` fit one when the data has enough repeat buyers; spark.training: full does not)")
    else:
        console.print(f"lifetime value over {clv_horizon_days or clv.horizon_days} days (expected_orders, "
                      f"predicted_clv, p_alive, next_order_date; CLV model fitted at {iso(clv.as_of)})")
    bands = bands[bands.index.notna()].sort_values(ascending=False).rename("customers")
    console.print(bands.to_frame().T.to_string())
    if features is None:
        console.print("emailable count: not computed with the spark engine (`sendwise segments export` has it)")
    else:
        print_emailable(tables, features, consent)


def recommend(data: Path, as_of: datetime | None, out: Path, k: int = 10, alias: str = CHAMPION,
              rules: BusinessRules | None = None, rejects: Path | None = None, project: str | None = None,
              allow_foreign_models: bool = False, *, timezone: str | None = None,
              mlruns: Path | None = None, engine: EngineName = EngineName.DUCKDB,
              spark: SparkSettingsType | None = None) -> None:
    """Top-k products at ``as_of`` (default: just after the data's last row) for every known customer
    with ``project``'s ``alias`` model (none: the global name) from the MLflow store of ``mlruns``
    (default: ./mlruns) and the business rules (default: :class:`BusinessRules`' defaults). A
    version registered for another project is refused unless ``allow_foreign_models``; without a
    project, one trained on another data directory is used with a warning. With Spark, the project's
    recommender and rules run on every partition of customers (the same rows); an ``out`` without a
    suffix is then a directory of Parquet files written by Spark."""
    refuse_overwriting_inputs(out, data_dir=data)
    check_output(engine, out, (".csv", ".parquet"), spark)
    check_k(k)
    name = registered_name(REGISTERED_NAME, project)
    rules = rules or BusinessRules()
    tables = open_tables(engine, data, rejects, spark, timezone=timezone)
    when = _moment(tables, as_of)
    configure_tracking(mlruns)
    loaded = load_registered(alias, RECOMMENDER_HINT, project)
    check_model(name, loaded.version, loaded.provenance, data, project, allow_foreign_models)
    model, version = loaded.model, loaded.version
    if engine is EngineName.SPARK:
        with progress_bar() as bar:
            bar.add_task("Spark: recommending", total=None)
            sources, customers = _write_spark(recommend_all_spark(tables, when, model, k, rules), out,
                                              [CUSTOMER_ID, RANK], SOURCE)
    else:
        with progress_bar() as bar:
            task = bar.add_task("recommending", total=None)
            recs = recommend_all(tables, when, model, k, rules,
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
        _write_table(recs, out)
        sources, customers = recs[SOURCE].value_counts(), recs[CUSTOMER_ID].nunique()
    console.print(f"{int(sources.sum()):,} recommendations for {customers:,} customers at {iso(when)} with {name} "
                  f"v{version} ({model.kind}); written to {out}")
    console.print(sources.rename("rows").to_frame().T.to_string())


def promote_model(name: str, margin: float = DEFAULT_MARGIN, force: bool = False, data: Path | None = None,
                  as_of: datetime | None = None, project: str | None = None, *, rejects: Path | None = None,
                  timezone: str | None = None, mlruns: Path | None = None) -> PromotionDecision:
    """Move ``champion`` of ``project``'s model ``name`` (in the MLflow store of ``mlruns``, default
    ./mlruns) to the challenger only if it beats the champion on the same holdout (a fresh one from
    ``data`` at ``as_of`` when given); ``force`` promotes whatever the comparison says, and when none
    is possible. Prints the decision."""
    registered_name(name, project)  # a bad project name fails before the data is read
    configure_tracking(mlruns)
    tables = load(data, rejects, quiet=True, timezone=timezone) if data else None
    decision = promote(name, margin, force, tables, as_of, project)
    console.print(f"holdout: {decision.holdout}")
    c = decision.comparison
    if c is None:
        console.print(f"champion v{decision.champion_version}, challenger v{decision.challenger_version}: "
                      "not compared")
    else:
        console.print(f"champion v{decision.champion_version}: {c.metric} {c.champion:.4f}; "
                      f"challenger v{decision.challenger_version}: {c.metric} {c.challenger:.4f}")
        console.print(f"difference {c.difference:+.4f}, 95% paired-bootstrap interval [{c.interval[0]:+.4f}, "
                      f"{c.interval[1]:+.4f}] ({c.resamples:,} resamples of {c.rows:,} customers)")
    verdict = "[green]promoted[/]" if decision.promoted else "[yellow]not promoted[/]"
    forced = decision.forced and decision.promoted and c is not None
    console.print(f"{verdict}: {decision.reason}" + (" (forced)" if forced else ""), highlight=False)
    return decision
