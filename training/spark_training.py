"""Full-data training on Spark (``SparkXGBClassifier``): the opt-in beside training on a sample.

What runs where: the training set is built on the executors (:func:`features.spark.spark_training_set`,
the dates of ``train_classifier``'s folds); each partition turns its feature rows into the model's
design matrix (:func:`training.design.design_matrix`, as on one node) and ``SparkXGBClassifier`` fits
on the training and validation folds, stopping early on the validation fold. Its booster
(``get_booster()``, an ordinary ``xgb.Booster``) is broadcast to score the calibration and holdout
folds per partition (``mapInPandas``); only ``(customer_id, label, raw score)`` rows come to the
driver, where the calibrator and the holdout metrics are computed as ``train_classifier`` computes
them. A fold above ``max_driver_rows`` reaches the driver as a seeded sample of customers (a hash of
the id), recorded with the run.

pyspark is imported only when these functions run (the ``spark`` extra).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
import xgboost as xgb

from features.build import to_timestamp
from features.config import FeatureConfig
from features.schema import AS_OF, CUSTOMER_ID
from features.spark import EPOCH, pandas_types, spark_training_set, to_pandas, with_types
from features.training_set import DEFAULT_HORIZON_DAYS, Target, monthly_as_of_dates
from features.validate import ContractError
from training.baselines import recency_rule
from training.calibration import fit_calibrator
from training.design import FEATURE_CONFIG, design_matrix, feature_columns
from training.holdout_scores import log_holdout_scores
from training.linear import COLUMNS as LOGISTIC_COLUMNS
from training.linear import LogRFMModel
from training.metrics import classification_metrics
from training.model import ModelBundle
from training.registry import PROJECT_TAG, ModelProvenance, log_and_register, registered_name
from training.tracking import configure_tracking, experiment_id, git_commit
from training.train import MIN_CLASS_ROWS, MODEL_NAMES, NotEnoughDataError, TrainResult, _log_plots
from training.tuning import BASE_PARAMS, EARLY_STOPPING_ROUNDS, MAX_ROUNDS

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from features.spark import SparkTables

TRAINING = "spark_xgboost"  # the run's ``training`` parameter
MAX_DRIVER_ROWS = 2_000_000  # rows of one fold's scores brought to the driver; above it, a seeded sample
EXAMPLE_ROWS = 2_000  # holdout feature rows on the driver: the importance plot and the registry's example
FOLDS = ("train", "valid", "calibration", "holdout")
FOLD, LABEL, RAW = "_fold", "label", "raw"
MODEL_CHOICE = "xgboost: full-data training on Spark fits XGBoost only (no other kind compared)"
SPARK_ONLY = ("nthread", "objective")  # SparkXGBClassifier sets them (spark.task.cpus; binary:logistic)


@dataclass(frozen=True)
class FoldDates:
    """The as_of dates of each fold, as ``train_classifier``'s ``make_folds`` chooses them."""

    train: tuple[datetime, ...]
    valid: datetime
    calibration: datetime
    holdout: datetime

    @property
    def fit(self) -> list[datetime]:
        """The dates of the training, validation and calibration folds, in order."""
        return [*self.train, self.valid, self.calibration]

    def column(self) -> Column:
        """The fold of each row of a training set, from its as_of (NULL for another date)."""
        from pyspark.sql import functions as F

        micros = F.unix_micros(F.col(AS_OF).cast("timestamp"))
        at = {name: [_micros(d) for d in dates] for name, dates in
              (("train", self.train), ("valid", [self.valid]), ("calibration", [self.calibration]),
               ("holdout", [self.holdout]))}
        fold = F.when(micros.isin(at["train"]), "train")
        for name in FOLDS[1:]:
            fold = fold.when(micros.isin(at[name]), name)
        return fold


@dataclass(frozen=True)
class DriverSample:
    """How much of a fold reached the driver: every row, or a seeded hash sample of its customers."""

    rows: int  # the fold's rows
    fraction: float  # 1.0: all of them
    seed: int

    def params(self, fold: str) -> dict[str, float | int]:
        return {f"driver_fraction_{fold}": self.fraction} | (
            {f"driver_seed_{fold}": self.seed} if self.fraction < 1 else {})


@dataclass
class SparkFit:
    """What :func:`fit_bundle_spark` gives: the calibrated bundle, the calibrators' out-of-fold
    log-losses, each fold's rows and positives (counted in Spark), the calibration fold's sample
    and the number of XGBoost workers."""

    bundle: ModelBundle
    calibration_losses: dict[str, float]
    rows: dict[str, int]
    positives: dict[str, int]
    calibration_sample: DriverSample
    num_workers: int


def _micros(moment: datetime) -> int:
    """A naive UTC datetime as Spark's microseconds since the epoch (no driver time zone involved)."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def fold_dates(tables: SparkTables, as_of: datetime, horizon_days: int, periods: int = 12) -> FoldDates:
    """The fold dates ``make_folds`` (training/train.py) chooses for ``as_of``: the holdout at
    ``as_of`` when the data covers its label window, else the latest monthly as_of whose window
    closes by it; then monthly fitting dates whose windows close by the holdout. Every date reads only
    rows before ``as_of``, labels included, as ``make_folds`` on ``tables.before(as_of)``."""
    start, end = tables.time_range()
    if start is None or not start < as_of <= end + timedelta(microseconds=1):
        raise ContractError(f"--as-of {as_of} is outside the data, which runs from {start} to {end}.")
    if end >= as_of + timedelta(days=horizon_days):
        holdout = as_of
    else:
        latest = monthly_as_of_dates(tables, horizon_days, periods=1, observed_until=as_of)
        if not latest:
            raise NotEnoughDataError(f"the data before {as_of} is too short for a {horizon_days}-day label window.")
        holdout = latest[-1]
    last_fit = pd.Timestamp(holdout - timedelta(days=horizon_days)).floor("D")
    dates = monthly_as_of_dates(tables, horizon_days, periods=periods, last=last_fit)
    if len(dates) < 3:
        raise NotEnoughDataError(
            f"need at least 3 monthly as_of dates whose {horizon_days}-day label windows close by {holdout} "
            f"(training, validation, calibration); the data before {as_of} gives {len(dates)}."
        )
    return FoldDates(tuple(dates[:-2]), dates[-2], dates[-1], holdout)


def count_folds(training_set: DataFrame, dates: FoldDates, label: str) -> tuple[dict[str, int], dict[str, int]]:
    """Rows and positive labels per fold of ``training_set`` (one aggregate in Spark)."""
    from pyspark.sql import functions as F

    counted = (training_set.withColumn(FOLD, dates.column()).where(F.col(FOLD).isNotNull()).groupBy(FOLD)
               .agg(F.count(F.lit(1)).alias("n"), F.sum(F.col(label).cast("long")).alias("p")).collect())
    found = {row[FOLD]: (int(row["n"]), int(row["p"] or 0)) for row in counted}
    return ({f: found.get(f, (0, 0))[0] for f in FOLDS}, {f: found.get(f, (0, 0))[1] for f in FOLDS})


def check_counts(rows: Mapping[str, int], positives: Mapping[str, int], label: str) -> None:
    """``train_classifier``'s minimum of positive and negative rows per fold, on counts."""
    for name in FOLDS:
        n, p = rows[name], positives[name]
        need = MIN_CLASS_ROWS[name]
        if p < need or n - p < need:
            raise NotEnoughDataError(
                f"not enough data in the {name} fold: {n:,} rows with {p:,} positive and {n - p:,} negative "
                f"'{label}' labels; at least {need} of each are needed. Use data with more customers or "
                "history, or an earlier --as-of.")


def driver_sample(frame: DataFrame, rows: int, max_rows: int, seed: int) -> tuple[DataFrame, DriverSample]:
    """``frame``, or above ``max_rows`` rows the customers whose seeded hash of the id falls under
    ``max_rows / rows`` (the draw of :func:`features.spark.sample_customers`)."""
    from pyspark.sql import functions as F

    if max_rows < 1:
        raise ValueError(f"max_driver_rows must be a positive int; got {max_rows}")
    if rows <= max_rows:
        return frame, DriverSample(rows, 1.0, seed)
    fraction = max_rows / rows
    keep = F.pmod(F.xxhash64(F.col(CUSTOMER_ID), F.lit(int(seed))), F.lit(1_000_000)) < round(fraction * 1_000_000)
    return frame.where(keep), DriverSample(rows, fraction, seed)


def _inputs(columns: Sequence[str]) -> list[str]:
    """The feature columns the model inputs ``columns`` (one-hot levels ``name=level``) read."""
    return list(dict.fromkeys(c.split("=", 1)[0] for c in columns))


def raw_scores(frame: DataFrame, booster: xgb.Booster, columns: list[str], label: str,
               extra: Mapping[str, Callable[[pd.DataFrame], np.ndarray]] | None = None) -> DataFrame:
    """Per partition of a feature frame: ``customer_id``, ``label`` (0/1) and ``raw``, the booster's
    raw probability of each row's design matrix, plus one column per score of ``extra`` (a function of
    the pandas batch). The booster and ``extra`` are broadcast once; nothing is collected."""
    extra = dict(extra or {})
    need = set(_inputs(columns)) | set(LOGISTIC_COLUMNS) | {CUSTOMER_ID, label}
    frame = frame.select(*[f"`{c}`" for c in frame.columns if c in need])
    types = pandas_types(frame.schema)
    shared = frame.sparkSession.sparkContext.broadcast((booster, extra))
    schema = ", ".join([f"`{CUSTOMER_ID}` string", f"`{LABEL}` int", f"`{RAW}` double",
                        *(f"`{name}` double" for name in extra)])

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model, scorers = shared.value
        for batch in batches:
            if len(batch):
                batch = with_types(batch, types)
                x = design_matrix(batch, columns).to_numpy(np.float32)
                out = {CUSTOMER_ID: batch[CUSTOMER_ID].astype(str).to_numpy(),
                       LABEL: batch[label].astype(int).to_numpy(), RAW: model.inplace_predict(x).astype(float)}
                yield pd.DataFrame(out | {name: np.asarray(f(batch), float) for name, f in scorers.items()})

    return frame.mapInPandas(score, schema)


def _design(frame: DataFrame, columns: list[str], label: str, valid: str) -> tuple[DataFrame, list[str]]:
    """Per partition: the design matrix of ``frame``'s rows as float columns ``x0, x1, ...``, the
    label (0/1) and whether the row is in the validation fold (``valid``, a boolean column)."""
    names = [f"x{i}" for i in range(len(columns))]
    frame = frame.select(*[f"`{c}`" for c in frame.columns if c in {*_inputs(columns), label, FOLD}])
    types = pandas_types(frame.schema)
    schema = ", ".join([*(f"{n} float" for n in names), f"{LABEL} int", f"{valid} boolean"])

    def design(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            if len(batch):
                batch = with_types(batch, types)
                out = pd.DataFrame(design_matrix(batch, columns).to_numpy(np.float32), columns=names)
                out[LABEL] = batch[label].astype(int).to_numpy()
                out[valid] = (batch[FOLD] == "valid").to_numpy()
                yield out

    return frame.mapInPandas(design, schema), names


def _collect_sorted(frame: DataFrame) -> pd.DataFrame:
    """Rows collected in customer order: the driver's work does not depend on Spark's partitioning."""
    return to_pandas(frame).sort_values(CUSTOMER_ID, ignore_index=True, kind="stable")


def fit_bundle_spark(training_set: DataFrame, dates: FoldDates, columns: list[str], label: str, horizon_days: int,
                     meta: Mapping[str, object] | None = None, params: Mapping[str, object] | None = None,
                     random_state: int = 0, num_workers: int | None = None,
                     max_driver_rows: int = MAX_DRIVER_ROWS) -> SparkFit:
    """A calibrated bundle fitted on every row of ``training_set`` (features and ``label`` at the dates
    of ``dates``, as :func:`features.spark.spark_training_set` stacks them): ``SparkXGBClassifier``
    on ``num_workers`` (default: the session's default parallelism) on the training and validation
    folds, with ``params`` (default: the local trainer's, ``training.tuning.BASE_PARAMS``) and early
    stopping on the validation fold; the calibrator fitted on the calibration fold's raw scores
    (:func:`training.calibration.fit_calibrator`), computed per partition, of a seeded sample of its
    customers when it has more than ``max_driver_rows`` rows. Holdout rows, if any, are not read."""
    from pyspark.sql import functions as F
    from xgboost.spark import SparkXGBClassifier

    params = dict(BASE_PARAMS | {"seed": random_state} if params is None else params)
    rows, positives = count_folds(training_set, dates, label)
    for name in FOLDS[:3]:
        if not rows[name]:
            raise NotEnoughDataError(f"the training set has no rows in the {name} fold (as_of {dates}).")
    spark = training_set.sparkSession
    workers = num_workers or spark.sparkContext.defaultParallelism
    folded = training_set.withColumn(FOLD, dates.column())
    valid = "_is_valid"
    design, names = _design(folded.where(F.col(FOLD).isin("train", "valid")), columns, label, valid)
    estimator = SparkXGBClassifier(
        features_col=names, label_col=LABEL, validation_indicator_col=valid, feature_names=list(columns),
        num_workers=workers, force_repartition=True, n_estimators=MAX_ROUNDS,
        early_stopping_rounds=EARLY_STOPPING_ROUNDS, verbose=False, **{k: v for k, v in params.items() if k not in SPARK_ONLY})
    fitted = estimator.fit(design)
    full = fitted.get_booster()
    best = full.best_iteration
    booster = full[: best + 1]
    valid_loss = float(fitted.training_summary.validation_objective_history[params.get("eval_metric", "logloss")][best])

    calibration, sample = driver_sample(folded.where(F.col(FOLD) == "calibration"), rows["calibration"],
                                        max_driver_rows, random_state)
    scored = _collect_sorted(raw_scores(calibration, booster, list(columns), label))
    calibrator, losses = fit_calibrator(scored[RAW].to_numpy(), scored[LABEL].to_numpy(), random_state)
    bundle = ModelBundle(label, horizon_days, list(columns), booster, calibrator,
                         dict(meta or {}) | {"xgb_params": params, "valid_log_loss": valid_loss})
    return SparkFit(bundle, losses, rows, positives, sample, workers)


def holdout_scores(training_set: DataFrame, dates: FoldDates, bundle: ModelBundle, sample_rows: int,
                   max_driver_rows: int = MAX_DRIVER_ROWS, random_state: int = 0,
                   baselines: Mapping[str, Callable[[pd.DataFrame], np.ndarray]] | None = None,
                   ) -> tuple[pd.DataFrame, DriverSample]:
    """The holdout fold's ``customer_id, label, raw`` (per partition), ``probability`` (the
    calibrator, on the driver) and each baseline's score, in customer order; of a seeded sample of its
    customers when it has more than ``max_driver_rows`` rows (``sample_rows``: the fold's rows)."""
    from pyspark.sql import functions as F

    holdout = training_set.withColumn(FOLD, dates.column()).where(F.col(FOLD) == "holdout")
    holdout, sample = driver_sample(holdout, sample_rows, max_driver_rows, random_state)
    scored = _collect_sorted(raw_scores(holdout, bundle.booster, bundle.columns, bundle.target, baselines))
    scored["probability"] = bundle.calibrator.apply(scored[RAW].to_numpy())
    return scored, sample


def trained_through(tables: SparkTables, before: datetime) -> str | None:
    """The latest timestamp of any row before ``before`` in ISO 8601 (the provenance's
    ``trained_through``: :func:`training.registry.latest_row_time` of ``tables.before(before)``)."""
    from features.engines.spark import as_of_text
    from features.schema import SPECS

    parts = [f"SELECT max({spec.time_column}) AS t FROM {table.value} "
             f"WHERE {spec.time_column} < CAST(:before AS TIMESTAMP)" for table, spec in SPECS.items() if spec.time_column]
    row = tables.sql(f"SELECT unix_micros(max(t)) AS t FROM ({' UNION ALL '.join(parts)})",
                     {"before": as_of_text(before)}).collect()[0]
    return None if row["t"] is None else (EPOCH + timedelta(microseconds=row["t"])).isoformat()


def train_classifier_spark(
    tables: SparkTables,
    target: Target | str,
    as_of: object,
    horizon_days: int | None = None,
    periods: int = 12,
    random_state: int = 0,
    mlruns: Path | str | None = None,
    progress: Callable[[str], None] | None = None,
    feature_config: FeatureConfig | None = None,
    project: str | None = None,
    data_source: str | None = None,
    run_params: Mapping[str, object] | None = None,
    num_workers: int | None = None,
    max_driver_rows: int = MAX_DRIVER_ROWS,
) -> TrainResult:
    """``train_classifier`` (training/train.py) on every row of Spark ``tables``: the same folds,
    baselines, metrics, plots, MLflow run and registered name, with the model fitted by
    :func:`fit_bundle_spark` and the run's ``training`` parameter :data:`TRAINING`. No Optuna trials
    (they need the folds on one node): the default parameters. The logistic baseline is fitted on the
    fitting folds (a seeded sample of customers above ``max_driver_rows``). The version's provenance
    has no data fingerprint (that hashes every row; not computed over a lake): it records
    ``data_source`` and the latest timestamp before ``as_of``. Unlike ``train_classifier`` it compares
    no other kind of classifier (:data:`MODEL_CHOICE`) and a churn model carries no CLV model."""
    from pyspark.sql import functions as F

    target = Target(target)
    name = registered_name(MODEL_NAMES[target], project)  # a bad project name fails before any work
    feature_config = feature_config or FeatureConfig.current()
    horizon = horizon_days if horizon_days is not None else DEFAULT_HORIZON_DAYS[target]
    date = to_timestamp(as_of)
    label = target.value
    say = progress or (lambda _: None)
    say("building training sets on Spark")
    dates = fold_dates(tables, date, horizon, periods)
    stacked = spark_training_set(tables, [*dates.fit, dates.holdout], target, horizon, feature_config).persist()
    try:
        columns = feature_columns(pd.DataFrame(columns=stacked.columns), feature_config)
        rows, positives = count_folds(stacked, dates, label)
        check_counts(rows, positives, label)
        say("fitting on Spark")
        meta = {"trained_as_of": date.isoformat(), "holdout_as_of": dates.holdout.isoformat(),
                FEATURE_CONFIG: feature_config.to_dict()}
        fit = fit_bundle_spark(stacked, dates, columns, label, horizon, meta, None, random_state, num_workers,
                               max_driver_rows)
        bundle, calibrator = fit.bundle, fit.bundle.calibrator

        say("evaluating")
        fitting = stacked.withColumn(FOLD, dates.column()).where(F.col(FOLD).isin(*FOLDS[:3]))
        fitting, logistic_sample = driver_sample(fitting.select(CUSTOMER_ID, label, *LOGISTIC_COLUMNS),
                                                 sum(rows[f] for f in FOLDS[:3]), max_driver_rows, random_state)
        fitted = _collect_sorted(fitting)
        logistic = LogRFMModel.fit(fitted, fitted[label].to_numpy(int))
        baseline_fns = {"recency_rule": partial(recency_rule, churn=target is Target.CHURNED),
                        "logistic_log_rfm": logistic.predict_proba}
        scored, holdout_sample = holdout_scores(stacked, dates, bundle, rows["holdout"], max_driver_rows,
                                                random_state, baseline_fns)
        y, p_holdout = scored[LABEL].to_numpy(int), scored["probability"].to_numpy()
        metrics = classification_metrics(y, p_holdout)
        baselines = {k: classification_metrics(y, scored[k].to_numpy()) for k in baseline_fns}
        bundle.meta["holdout_metrics"] = metrics
        examples = to_pandas(stacked.withColumn(FOLD, dates.column()).where(F.col(FOLD) == "holdout")
                             .drop(FOLD).limit(EXAMPLE_ROWS))
    finally:
        stacked.unpersist()

    configure_tracking(mlruns)
    mlflow.set_experiment(experiment_id=experiment_id(f"sendwise-{MODEL_NAMES[target]}", mlruns))
    with mlflow.start_run(run_name=f"{name}-{date:%Y-%m-%d}") as run:
        mlflow.log_params({
            "target": label, "horizon_days": horizon, "as_of": date.isoformat(),
            "holdout_as_of": dates.holdout.isoformat(), "trials": 0, "random_state": random_state,
            "fit_as_of_dates": ",".join(f"{d:%Y-%m-%d}" for d in dates.fit),
            **{f"rows_{f}": rows[f] for f in FOLDS},
            "calibration": calibrator.method, "best_round": bundle.booster.num_boosted_rounds(),
            **{f"xgb_{k}": v for k, v in bundle.meta["xgb_params"].items()},
            "training": TRAINING, "num_workers": fit.num_workers, "max_driver_rows": max_driver_rows,
            **fit.calibration_sample.params("calibration"), **holdout_sample.params("holdout"),
            **logistic_sample.params("logistic"), **(run_params or {}),
        })
        provenance = ModelProvenance(project, None, trained_through(tables, date), data_source)
        mlflow.set_tags({"git_commit": git_commit(), "holdout_as_of": dates.holdout.isoformat(), "target": label,
                         "training": TRAINING, PROJECT_TAG: project or ""})
        mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items() if np.isfinite(v)})
        for base, values in baselines.items():
            mlflow.log_metrics({f"baseline_{base}_{k}": v for k, v in values.items() if np.isfinite(v)})
        mlflow.log_metrics({f"calibration_oof_log_loss_{k}": v for k, v in fit.calibration_losses.items()})
        mlflow.log_metric("valid_log_loss", bundle.meta["valid_log_loss"])
        positive_rates = {f: positives[f] / rows[f] for f in FOLDS}
        mlflow.log_metrics({f"positive_rate_{f}": v for f, v in positive_rates.items()})
        mlflow.log_text(json.dumps(columns, indent=1), "features.json")
        _log_plots(y, {"model": p_holdout, **{k: scored[k].to_numpy() for k in baseline_fns}},
                   {"model (calibrated)": p_holdout, "model (raw)": scored[RAW].to_numpy()}, bundle, examples)
        log_holdout_scores(scored[[CUSTOMER_ID, LABEL, "probability"]])
        say("registering")
        example = examples.head(100)
        version = log_and_register(bundle, name, example, bundle.predict_proba(example), provenance.tags())
        bundle.meta.update(provenance.meta() | {"version": version})
    return TrainResult(name, version, run.info.run_id, bundle, metrics, baselines, dates.holdout, rows["holdout"],
                       positive_rates, model_choice=MODEL_CHOICE)

