"""Spark (local[2]) against DuckDB on generated shops, in the same run (issue 18's figures).

    python benchmarks/bench_spark.py                       # 100,000 and 1,000,000 customers, results/spark.json
    python benchmarks/bench_spark.py --quick               # 10,000 customers (trying it), results/spark_quick.json
    python benchmarks/bench_spark.py --customers 100000 --steps features,rfm_approx --limit 600

Per size, each step on each engine runs in its own child process (this script re-invoked with
``--child``), so that the memory reported is that step's alone and a step past ``--limit`` seconds, or
above 75 % of the machine's memory, can be stopped (the child and every process under it, by pid) and
recorded as stopped while the run goes on. Steps:

* ``features``: DuckDB ``build_features`` on tables loaded by ``load_data_dir`` (the load is timed apart);
  Spark ``spark_features`` on ``SparkTables.from_sources`` over the generated Parquet files, written to
  Parquet; and the same with the contract views cached first (``spark_cached``: the sources materialised
  once). The Spark record counts the Parquet scans of each table in the physical plan.
* ``training_set``: DuckDB ``build_training_set`` (churned, 3 monthly as_of); Spark
  ``features.spark.spark_training_set`` (labels joined on Spark, written), else ``build_training_set``
  when its module takes SparkTables, else features at the same 3 as_of (stacked, written; no labels),
  which the record says.
* ``train_full``: the churn model's fit (XGBoost with early stopping, then the calibrator) on every row of
  ``train_classifier``'s folds at the features' as_of (12 monthly dates, built by DuckDB, untimed): the
  local ``training.fitting.fit_bundle`` against ``training.spark_training.fit_bundle_spark``
  (``SparkXGBClassifier``, one worker per core) on the same rows handed to Spark; each with its holdout
  ROC-AUC.
* ``rfm_approx`` (Spark): the feature query with ``spark.rfm_ranks`` exact and approximate
  (``spark_features(..., rfm_ranks=, accuracy=)``: cut points from ``percentile_approx``, per
  ``--rfm-accuracy`` and with exact percentiles), each written to Parquet and timed, and how many buyers'
  rfm_recency / rfm_frequency / rfm_monetary and segments move; also ranks within hash partitions (the
  registry's ``percent_rank`` per partition, over the exact features: ranking alone timed).
* ``score`` and ``recommend``: DuckDB ``score_customers`` and ``recommend_all`` (ALS, 64 factors, fitted
  on the shop: timed apart) for every customer; on Spark the project's functions when they exist (see
  ``SPARK_SCORERS``, ``SPARK_RECOMMENDERS``, or ``--spark-scorer``/``--spark-recommender``), else the step
  is skipped with a note. The churn and propensity models are trained once on the 10,000-customer shop
  (untimed; kept in ``benchmarks/.work/spark_models`` and reused unless ``--retrain``).

Peak memory: DuckDB, the child Python process's peak RSS (``ru_maxrss``); Spark, whose driver JVM (and
Python workers) are child processes, the largest sum of RSS over the child's process tree, sampled
every 0.25 s by psutil in a thread of this parent. Times are medians over ``--repeats`` runs. Generated
data is kept under ``benchmarks/.work/spark_demo_<N>`` (its generation time beside it).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

import duckdb
import pandas as pd
import psutil
import pyarrow
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table as RichTable

from features.build import to_timestamp
from features.config import FeatureConfig
from features.demo import DemoShop, generate_demo
from features.registry import registry
from features.rfm import score_sql, segment_sql
from features.schema import Table

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
RESULTS = HERE / "results"
MB = 1024 * 1024
MEMORY_GUARD_FRACTION = 0.75
SAMPLE_EVERY_S = 0.25

FEATURES_AS_OF = "2025-10-01"
TRAINING_AS_OF = ("2025-08-01", "2025-09-01", "2025-10-01")  # churn's 90-day windows end before the data
CHURN_HORIZON_DAYS = 90
SCORE_AS_OF = DemoShop.end  # after the last row: every customer is known
MODELS_SHOP = 10_000  # churn / propensity models are trained once on this shop (as bench_models.py)
ALS_FACTORS = 64
K = 10
RFM_SCORES = {f.name: (f.score_of, f.descending) for f in registry(FeatureConfig()).features
              if f.score_of is not None}  # the registry's RFM scores: name -> (value ranked, descending)
RFM_EXACT = "spark.rfm_ranks: exact (3 un-partitioned percent_rank windows)"
EXACT_PERCENTILES = 2**31 - 1  # percentile_approx's largest accuracy: exact at these sizes

DUCKDB, SPARK, SPARK_CACHED = "duckdb", "spark", "spark_cached"
STEPS: dict[str, tuple[str, ...]] = {
    "features": (DUCKDB, SPARK, SPARK_CACHED),
    "training_set": (DUCKDB, SPARK),
    "rfm_approx": (SPARK,),
    "score": (DUCKDB, SPARK),
    "recommend": (DUCKDB, SPARK),
    "train_full": (DUCKDB, SPARK),
}
# where the Spark functions are looked for ("module:function"; --spark-scorer etc. override), each called as
# its local twin is: scorer(spark_tables, as_of, churn, propensity), recommender(spark_tables, as_of, model,
# k=10), training set(spark_tables, as_of_dates, "churned", horizon_days=90); else the local twin itself when
# its module takes SparkTables (find_function)
SPARK_SCORERS = ("training.spark_scoring:score_customers_spark",)
SPARK_RECOMMENDERS = ("training.recommenders.spark_batch:recommend_all_spark",)
SPARK_TRAINING_SETS = ("features.spark:spark_training_set",)

console = Console(width=None if sys.stdout.isatty() else 170)


# -- helpers shared by parent and children ------------------------------------------------------------------


def shop_dir(customers: int) -> Path:
    return WORK / f"spark_demo_{customers}"


def sources(data: Path) -> dict[Table, str]:
    """The generated shop's Parquet file of each contract table it has."""
    return {t: str(data / f"{t.value}.parquet") for t in Table if (data / f"{t.value}.parquet").exists()}


def emit(kind: str, **payload: Any) -> None:
    """One JSON line on stdout for the parent (only such lines are read)."""
    print(json.dumps({"kind": kind, **payload}, default=str), flush=True)


def timed_runs(run: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Seconds of each of ``repeats`` calls of ``run``, and the last call's result."""
    runs, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        runs.append(round(time.perf_counter() - start, 3))
    return runs, result


def resolve(spec: str) -> Callable[..., Any] | None:
    """The function ``module:function``, or None when the module or function does not exist."""
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return None
        raise
    return getattr(module, name, None)


def find_function(override: str | None, candidates: Sequence[str], accepts_spark: str | None = None
                  ) -> tuple[Callable[..., Any] | None, str]:
    """The first of ``override`` or ``candidates`` that exists, or ``accepts_spark`` (a local function)
    when its module mentions SparkTables; else None and a note naming what was looked for."""
    for spec in ([override] if override else list(candidates)):
        fn = resolve(spec)
        if fn is not None:
            return fn, spec
    if accepts_spark and not override:
        fn = resolve(accepts_spark)
        if fn is not None and "SparkTables" in inspect.getsource(inspect.getmodule(fn)):
            return fn, f"{accepts_spark} (its module takes SparkTables)"
    looked = [override] if override else [*candidates, *([accepts_spark + " taking SparkTables"] if accepts_spark
                                                          else [])]
    return None, f"no Spark function at this commit (looked for {', '.join(looked)})"


# -- children: one step on one engine ------------------------------------------------------------------------


class Child:
    """One step on one engine for one shop; reports through :func:`emit`."""

    def __init__(self, step: str, engine: str, data: Path, customers: int, repeats: int, settings: dict) -> None:
        self.step, self.engine, self.data, self.customers = step, engine, data, customers
        self.repeats, self.settings = repeats, settings
        self.out = Path(settings["scratch"]) / f"{step}_{engine}_{customers}"
        self.models = Path(settings["models"])
        self.spark: Any = None
        self.load_s: float | None = None
        self.session_s: float | None = None
        self.register_s: float | None = None
        self.cache_s: float | None = None

    # DuckDB ------------------------------------------------------------------------------------------------
    def load(self) -> Any:
        from features.io import load_data_dir

        emit("phase", phase="load")
        start = time.perf_counter()
        tables, _ = load_data_dir(self.data)
        self.load_s = round(time.perf_counter() - start, 3)
        return tables

    def duckdb_features(self) -> dict:
        from features.build import build_features

        tables = self.load()
        emit("phase", phase="features")
        runs, frame = timed_runs(lambda: build_features(tables, FEATURES_AS_OF), self.repeats)
        return {"runs_s": runs, "rows": len(frame), "load_s": self.load_s,
                "what": "build_features on tables loaded by load_data_dir (load timed apart), a pandas frame"}

    def duckdb_training_set(self) -> dict:
        from features.training_set import build_training_set

        tables = self.load()
        emit("phase", phase="training_set")
        runs, built = timed_runs(lambda: build_training_set(tables, list(TRAINING_AS_OF), "churned",
                                                            horizon_days=CHURN_HORIZON_DAYS), self.repeats)
        return {"runs_s": runs, "rows": len(built.frame), "load_s": self.load_s,
                "what": f"build_training_set churned at {', '.join(TRAINING_AS_OF)}, a pandas frame"}

    def duckdb_score(self) -> dict:
        from training.model import ModelBundle
        from training.scoring import score_customers

        tables = self.load()
        churn, propensity = (ModelBundle.load(self.models / name) for name in ("churn", "propensity"))
        emit("phase", phase="score")
        runs, (scores, _) = timed_runs(lambda: score_customers(tables, SCORE_AS_OF, churn, propensity), self.repeats)
        return {"runs_s": runs, "rows": len(scores), "load_s": self.load_s,
                "what": f"score_customers at {SCORE_AS_OF}: features, both models calibrated, reasons, CLV"}

    def duckdb_recommend(self) -> dict:
        from training.recommenders.batch import recommend_all
        from training.recommenders.models import make_recommender

        tables = self.load()
        as_of = to_timestamp(SCORE_AS_OF)
        emit("phase", phase="fit")
        start = time.perf_counter()
        model = make_recommender("als", factors=ALS_FACTORS).fit_tables(tables, as_of)
        fit_s = round(time.perf_counter() - start, 3)
        model.save(self.models / f"als_{self.customers}")
        emit("phase", phase="recommend")
        runs, recs = timed_runs(lambda: recommend_all(tables, as_of, model, k=K), self.repeats)
        return {"runs_s": runs, "rows": len(recs), "load_s": self.load_s, "fit_s": fit_s,
                "what": f"recommend_all k={K} with default rules; ALS ({ALS_FACTORS} factors) fitted on one node, "
                        "fit timed apart"}

    def train_folds(self) -> tuple[Any, list[str]]:
        """``train_classifier``'s churn folds at the features' as_of, and the model's input columns."""
        from features.training_set import Target
        from training.design import feature_columns
        from training.train import make_folds

        tables = self.load()
        emit("phase", phase="folds")
        folds = make_folds(tables, Target.CHURNED, to_timestamp(FEATURES_AS_OF), CHURN_HORIZON_DAYS, periods=12)
        return folds, feature_columns(folds.train)

    def duckdb_train_full(self) -> dict:
        from training.fitting import fit_bundle
        from training.metrics import classification_metrics
        from training.tuning import BASE_PARAMS

        folds, columns = self.train_folds()
        emit("phase", phase="fit")
        runs, (bundle, _) = timed_runs(lambda: fit_bundle(
            folds.train, folds.valid, folds.calibration, columns, "churned", CHURN_HORIZON_DAYS,
            BASE_PARAMS | {"seed": 0}, 0, {}), self.repeats)
        auc = classification_metrics(folds.holdout["churned"].to_numpy(int), bundle.predict_proba(folds.holdout))
        return {"runs_s": runs, "rows": len(folds.train) + len(folds.valid) + len(folds.calibration),
                "load_s": self.load_s, "roc_auc": auc["roc_auc"], "rounds": bundle.booster.num_boosted_rounds(),
                "what": "fit_bundle (the local trainer's fit) on every row of the churn folds at "
                        f"{FEATURES_AS_OF}, 12 monthly dates"}

    # Spark -------------------------------------------------------------------------------------------------
    def open_spark(self, cached: bool = False) -> Any:
        from features.spark import SparkTables, spark_session

        emit("phase", phase="session")
        start = time.perf_counter()
        conf = {"spark.driver.memory": self.settings["driver_memory"], "spark.local.dir": self.settings["local_dir"],
                **self.settings["spark_conf"]}
        self.spark = spark_session(self.settings["master"], conf)
        self.session_s = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        tables = SparkTables.from_sources(self.spark, sources(self.data))
        self.register_s = round(time.perf_counter() - start, 3)
        if cached:
            emit("phase", phase="cache")
            start = time.perf_counter()
            for table in Table:
                self.spark.catalog.cacheTable(table.value)
                self.spark.table(table.value).count()  # materialise the cache now
            self.cache_s = round(time.perf_counter() - start, 3)
        return tables

    def spark_facts(self) -> dict:
        conf = self.spark.sparkContext.getConf()
        return {"session_s": self.session_s, "register_s": self.register_s,
                **({"cache_s": self.cache_s} if self.cache_s is not None else {}),
                "spark_conf": {k: conf.get(k, None) for k in ("spark.master", "spark.driver.memory")}
                | {"spark.sql.shuffle.partitions": self.spark.conf.get("spark.sql.shuffle.partitions")}}

    def write(self, frame: Any, name: str = "out") -> int | None:
        """``frame`` (a Spark DataFrame, a pandas frame, a TrainingSet or a (frame, ...) tuple) made
        concrete: a Spark frame is written to Parquet (None: count it later, untimed, with
        :meth:`written_rows`); a local frame's row count."""
        if isinstance(frame, tuple):
            frame = frame[0]
        frame = getattr(frame, "frame", frame)
        if hasattr(frame, "write"):
            frame.write.mode("overwrite").parquet(str(self.out / name))
            return None
        return len(frame)

    def written_rows(self, rows: int | None, name: str = "out") -> int:
        return self.spark.read.parquet(str(self.out / name)).count() if rows is None else rows

    def spark_features(self, cached: bool = False) -> dict:
        from features.spark import spark_features

        tables = self.open_spark(cached)
        emit("phase", phase="features")
        frame = spark_features(tables, to_timestamp(FEATURES_AS_OF))
        plan = frame._jdf.queryExecution().executedPlan().toString()
        # a cached view's scan prints the plan it was cached from: count only the in-memory scans then
        scans = {"in_memory_scans": plan.count("Scan In-memory table")} if cached else plan_scans(plan)
        runs, rows = timed_runs(lambda: self.write(frame), self.repeats)
        what = "spark_features on SparkTables.from_sources (the generated Parquet files), written to Parquet"
        if cached:
            what += "; contract views cached (cacheTable, materialised by a count: cache_s) before the runs"
        return {"runs_s": runs, "rows": self.written_rows(rows), **self.spark_facts(), "plan_scans": scans,
                "what": what}

    def spark_training_set(self) -> dict:
        from features.spark import spark_features

        fn, found = find_function(self.settings.get("spark_training_set"), SPARK_TRAINING_SETS,
                                  "features.training_set:build_training_set")
        tables = self.open_spark()
        emit("phase", phase="training_set")
        dates = [to_timestamp(d) for d in TRAINING_AS_OF]
        if fn is not None:
            runs, rows = timed_runs(lambda: self.write(fn(tables, dates, "churned", horizon_days=CHURN_HORIZON_DAYS)),
                                    self.repeats)
            return {"runs_s": runs, "rows": self.written_rows(rows), **self.spark_facts(),
                    "what": f"{found}, churned at {', '.join(TRAINING_AS_OF)}"}

        def stacked() -> int | None:
            frames = [spark_features(tables, d) for d in dates]
            union = frames[0]
            for other in frames[1:]:
                union = union.unionByName(other)
            return self.write(union)

        runs, rows = timed_runs(stacked, self.repeats)
        return {"runs_s": runs, "rows": self.written_rows(rows), **self.spark_facts(), "fallback": True,
                "what": f"FALLBACK, {found}: spark_features at {', '.join(TRAINING_AS_OF)} stacked and written "
                        "to Parquet, no labels (not a training set)"}

    def spark_score(self) -> dict:
        from training.model import ModelBundle

        fn, found = find_function(self.settings.get("spark_scorer"), SPARK_SCORERS, "training.scoring:score_customers")
        if fn is None:
            return {"skipped": found}
        churn, propensity = (ModelBundle.load(self.models / name) for name in ("churn", "propensity"))
        tables = self.open_spark()
        emit("phase", phase="score")
        as_of = to_timestamp(SCORE_AS_OF)
        runs, rows = timed_runs(lambda: self.write(fn(tables, as_of, churn, propensity)), self.repeats)
        return {"runs_s": runs, "rows": self.written_rows(rows), **self.spark_facts(),
                "what": f"{found} at {SCORE_AS_OF}, written to Parquet"}

    def spark_recommend(self) -> dict:
        from training.recommenders.models import load_recommender

        fn, found = find_function(self.settings.get("spark_recommender"), SPARK_RECOMMENDERS,
                                  "training.recommenders.batch:recommend_all")
        if fn is None:
            return {"skipped": found}
        saved = self.models / f"als_{self.customers}"
        if not saved.exists():
            return {"skipped": "no ALS model: the DuckDB recommend step (which fits it) did not finish"}
        model = load_recommender(saved)
        tables = self.open_spark()
        emit("phase", phase="recommend")
        as_of = to_timestamp(SCORE_AS_OF)
        runs, rows = timed_runs(lambda: self.write(fn(tables, as_of, model, k=K)), self.repeats)
        return {"runs_s": runs, "rows": self.written_rows(rows), **self.spark_facts(),
                "what": f"{found} k={K} with the ALS fitted by the DuckDB step, written to Parquet"}

    def spark_train_full(self) -> dict:
        from training.metrics import classification_metrics
        from training.spark_training import FoldDates, fit_bundle_spark, holdout_scores

        folds, columns = self.train_folds()
        self.open_spark()
        stacked = self.spark.createDataFrame(
            pd.concat([folds.train, folds.valid, folds.calibration, folds.holdout], ignore_index=True)).persist()
        stacked.count()  # materialised before the timed runs
        dates = FoldDates(tuple(folds.fit_dates[:-2]), folds.fit_dates[-2], folds.fit_dates[-1], folds.holdout_as_of)
        emit("phase", phase="fit")
        runs, fit = timed_runs(lambda: fit_bundle_spark(stacked, dates, columns, "churned", CHURN_HORIZON_DAYS),
                               self.repeats)
        scored, _ = holdout_scores(stacked, dates, fit.bundle, len(folds.holdout))
        auc = classification_metrics(scored["label"].to_numpy(), scored["probability"].to_numpy())
        return {"runs_s": runs, "rows": sum(fit.rows[f] for f in ("train", "valid", "calibration")),
                "load_s": self.load_s, "roc_auc": auc["roc_auc"], "rounds": fit.bundle.booster.num_boosted_rounds(),
                "num_workers": fit.num_workers, **self.spark_facts(),
                "what": f"fit_bundle_spark (SparkXGBClassifier, {fit.num_workers} workers) on the same rows, handed "
                        "to Spark as one persisted frame"}

    def spark_rfm_approx(self) -> dict:
        from features.spark import spark_features

        tables = self.open_spark()
        as_of = to_timestamp(FEATURES_AS_OF)

        def build(name: str, **ranks: Any) -> float:
            emit("phase", phase=f"features {name}")
            start = time.perf_counter()
            self.write(spark_features(tables, as_of, **ranks), name)
            seconds = round(time.perf_counter() - start, 3)
            self.spark.read.parquet(str(self.out / name)).createOrReplaceTempView(name)
            return seconds

        seconds = {RFM_EXACT: build("exact", rfm_ranks="exact")}
        approximate = {f"spark.rfm_ranks: approximate, accuracy {a:,}": a for a in self.settings["rfm_accuracies"]}
        approximate["spark.rfm_ranks: approximate, exact percentiles (the rule alone)"] = EXACT_PERCENTILES
        built = {}
        for label, accuracy in approximate.items():
            seconds[label] = build(f"approx_{accuracy}", rfm_ranks="approximate", accuracy=accuracy)
            built[label] = f"SELECT * FROM approx_{accuracy}"
        emit("phase", phase="rfm")
        return {**rfm_comparison(self.spark, built, seconds, self.settings["rfm_partitions"]),
                "what": "seconds: the feature query written to Parquet (partitions: the ranking alone, no-op sink)",
                **self.spark_facts()}

    def run(self) -> dict:
        engine = SPARK if self.engine == SPARK_CACHED else self.engine
        method = getattr(self, f"{engine}_{self.step}")
        try:
            return method(cached=True) if self.engine == SPARK_CACHED else method()
        finally:
            if self.spark is not None:
                self.spark.stop()
            shutil.rmtree(self.out, ignore_errors=True)


def plan_scans(plan: str) -> dict[str, int]:
    """Parquet scans per contract table in a physical plan's text (subqueries included), and the
    exchanges Spark reused instead of recomputing."""
    found = re.findall(r"FileScan parquet .*?Location: \w+\(\d+ paths?\)\[[^\]]*?/(\w+)\.parquet\]", plan)
    return {**{t.value: found.count(t.value) for t in Table if t.value in found},
            "reused_exchanges": plan.count("ReusedExchange")}


def partition_scores_sql(partitions: int) -> str:
    """Spark SQL of the buyers in view ``exact`` with the registry's ``percent_rank`` scores taken within
    ``partitions`` hash partitions of customers, and the segment of those scores."""
    cols = [score_sql(column, descending).replace(
        "OVER (", f"OVER (PARTITION BY pmod(xxhash64(customer_id), {partitions}) ") + f" AS {name}"
        for name, (column, descending) in RFM_SCORES.items()]
    fm = "CAST(ceil((rfm_frequency + rfm_monetary) / CAST(2.0 AS DOUBLE)) AS INTEGER)"
    scores = f"SELECT customer_id, orders_count, {', '.join(cols)} FROM exact WHERE orders_count > 0"
    return f"SELECT *, {segment_sql('rfm_recency', fm, 'orders_count')} AS rfm_segment FROM ({scores})"


def rfm_comparison(spark: Any, approximate: dict[str, str], seconds: dict[str, float],
                   partitions: Sequence[int]) -> dict:
    """The exact features (view ``exact``) against each ``approximate`` query's scores and segments
    (label -> SQL of customer_id, rfm_*, rfm_segment), and against ranks within hash partitions: per
    method, the share of buyers whose score changed, by how much, and whose segment changed."""
    buyers = spark.sql("SELECT count(*) FROM exact WHERE orders_count > 0").collect()[0][0]
    methods = dict(approximate)
    seconds = dict(seconds)
    for p in partitions:
        label = f"percent_rank within {p} hash partitions (~{buyers // p:,} buyers each)"
        methods[label] = partition_scores_sql(p)
        seconds[label] = noop_seconds(spark, methods[label])
    out: dict[str, Any] = {"buyers": buyers, "methods": {}}
    for label, sql in methods.items():
        parts = []
        for n in RFM_SCORES:
            d = f"abs(a.{n} - e.{n})"
            parts += [f"avg(CAST({d} > 0 AS DOUBLE)) AS {n}_changed", f"avg(CAST({d} = 1 AS DOUBLE)) AS {n}_by_1",
                      f"avg(CAST({d} >= 2 AS DOUBLE)) AS {n}_by_2_or_more", f"max({d}) AS {n}_max"]
        any_changed = " OR ".join(f"a.{n} != e.{n}" for n in RFM_SCORES)
        row = spark.sql(
            f"SELECT {', '.join(parts)}, avg(CAST({any_changed} AS DOUBLE)) AS any_score_changed, "
            f"avg(CAST(a.rfm_segment != e.rfm_segment AS DOUBLE)) AS segment_changed "
            f"FROM ({sql}) a JOIN exact e USING (customer_id) WHERE e.orders_count > 0").collect()[0].asDict()
        out["methods"][label] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
    out["seconds"] = seconds
    return out


def noop_seconds(spark: Any, sql: str) -> float:
    """Seconds to compute every row of ``sql`` (written to Spark's no-op sink)."""
    start = time.perf_counter()
    spark.sql(sql).write.format("noop").mode("overwrite").save()
    return round(time.perf_counter() - start, 3)


def child_models(settings: dict) -> dict:
    """Train the churn and propensity models on the MODELS_SHOP shop and save their bundles."""
    import tempfile

    from features.io import load_data_dir
    from training.train import train_classifier

    tables, _ = load_data_dir(shop_dir(MODELS_SHOP))
    models = Path(settings["models"])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for target, name in (("churned", "churn"), ("purchased", "propensity")):
            train_classifier(tables, target, FEATURES_AS_OF, mlruns=Path(tmp) / "mlruns").bundle.save(models / name)
    return {"train_s": round(time.perf_counter() - start, 1),
            "what": f"train_classifier churned and purchased at {FEATURES_AS_OF}, default parameters (untimed "
                    "for the comparison)"}


def child_main(step: str, engine: str, data: Path, customers: int, repeats: int, settings: dict) -> int:
    result = (child_models(settings) if step == "models"
              else Child(step, engine, data, customers, repeats, settings).run())
    result["python_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    emit("result", **result)
    return 0


# -- parent: run children, watch them, collect -------------------------------------------------------------


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and all its descendants until stopped; keeps the peak and
    every process seen (to end any left behind)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak_mb = 0.0
        self.seen: dict[int, psutil.Process] = {pid: self.root}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                tree = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for proc in tree:
                self.seen.setdefault(proc.pid, proc)
                try:
                    total += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak_mb = max(self.peak_mb, total / MB)
            self.halt.wait(SAMPLE_EVERY_S)

    def end_leftovers(self, grace_s: float = 15.0) -> list[int]:
        """Kill every sampled process still running ``grace_s`` after the child ended (a JVM, Python
        workers); their pids. ``is_running`` also checks that a pid was not reused."""
        alive = [p for p in self.seen.values() if p.is_running()]
        _, alive = psutil.wait_procs(alive, timeout=grace_s)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        return [p.pid for p in alive]


def run_child(step: str, engine: str, customers: int, repeats: int, settings: dict, limit_s: float,
              memory_guard_mb: float) -> dict:
    """Run one child and watch it; its record (``status``: done, skipped, stopped or failed)."""
    logs = WORK / "spark_logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{step}_{engine}_{customers}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--engine", engine,
           "--data", str(shop_dir(customers)), "--customers", str(customers), "--repeats", str(repeats),
           "--settings", json.dumps(settings)]
    console.log(f"{customers:,} customers: {step} on {engine}")
    load_before = os.getloadavg()
    start = time.monotonic()
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=WORK)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    stopped = None
    while proc.poll() is None:
        if time.monotonic() - start > limit_s:
            stopped = f"past --limit {limit_s:g} s"
        elif sampler.peak_mb > memory_guard_mb:
            stopped = f"above the {memory_guard_mb / 1024:.1f} GB memory guard"
        if stopped:
            try:
                root = psutil.Process(proc.pid)
                victims = [*root.children(recursive=True), root]
            except psutil.NoSuchProcess:
                victims = []
            for victim in victims:
                try:
                    victim.kill()
                except psutil.NoSuchProcess:
                    pass
            break
        time.sleep(0.2)
    proc.wait()
    wall_s = round(time.monotonic() - start, 1)
    sampler.halt.set()
    sampler.join()
    reader.join(timeout=5)
    leftovers = sampler.end_leftovers()
    shutil.rmtree(settings["local_dir"], ignore_errors=True)
    reports = [json.loads(line) for line in lines if line.startswith('{"kind"')]
    phases = [r["phase"] for r in reports if r["kind"] == "phase"]
    result = next((r for r in reports if r["kind"] == "result"), None)
    record: dict[str, Any] = {"wall_s": wall_s, "tree_peak_rss_mb": round(sampler.peak_mb, 1),
                              "load_avg_before": [round(x, 2) for x in load_before]}
    if leftovers:
        record["ended_leftover_pids"] = leftovers
    if stopped:
        return {**record, "status": "stopped", "why": f"{stopped} (in {phases[-1] if phases else 'start-up'})"}
    if result is None:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-6:]
        return {**record, "status": "failed", "why": f"exit status {proc.returncode}", "stderr_tail": tail}
    result.pop("kind")
    if "skipped" in result:
        return {**record, "status": "skipped", "why": result["skipped"]}
    if "runs_s" in result:
        result["median_s"] = round(statistics.median(result["runs_s"]), 3)
    # the memory of the run: the Python process for DuckDB, the sampled process tree for Spark (its JVM)
    record["peak_rss_mb"] = result["python_peak_rss_mb"] if engine == DUCKDB else record["tree_peak_rss_mb"]
    record["peak_rss_how"] = ("ru_maxrss of the child Python process" if engine == DUCKDB else
                              f"sampled sum over the child's process tree (Python driver, JVM, workers), every "
                              f"{SAMPLE_EVERY_S:g} s")
    return {**record, "status": "done", **result}


def prepare_shop(customers: int) -> dict:
    """Generate the shop once (untimed for the comparison); its rows and generation time."""
    data, marker = shop_dir(customers), WORK / f"spark_demo_{customers}.json"
    if not (data.exists() and marker.exists()):
        shutil.rmtree(data, ignore_errors=True)
        partial = WORK / f"spark_demo_{customers}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        console.log(f"generating a shop of {customers:,} customers (once, untimed for the comparison)")
        start = time.perf_counter()
        generate_demo(DemoShop(customers=customers, seed=0), partial)
        generation_s = round(time.perf_counter() - start, 1)
        partial.rename(data)
        marker.write_text(json.dumps({"generation_s": generation_s, "date": datetime.now(UTC).isoformat()}))
    facts = json.loads(marker.read_text())
    rows = {t.value: pq.ParquetFile(p).metadata.num_rows for t, p in ((t, Path(s)) for t, s in sources(data).items())}
    return {"dir": str(data.relative_to(HERE.parent)), "shop": f"DemoShop(customers={customers}, seed=0)",
            "table_rows": rows, "parquet_mb": round(sum(Path(s).stat().st_size for s in sources(data).values()) / MB, 1),
            "generation_s": facts["generation_s"], "generated_at": facts["date"]}


def machine() -> dict:
    """Cores, memory, versions and commit the figures were taken on."""
    try:
        import pyspark

        spark_version = pyspark.__version__
    except ImportError:
        spark_version = "absent"
    java = (subprocess.run(["java", "-version"], check=False, capture_output=True, text=True) if shutil.which("java") else None)
    commit, status = (subprocess.run(["git", *c], check=False, cwd=HERE, capture_output=True, text=True).stdout.strip()
                      for c in (["rev-parse", "HEAD"], ["status", "--porcelain"]))
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return {
        "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                          platform.processor()),
        "memory_total_mb": round(psutil.virtual_memory().total / MB),
        "platform": platform.platform(), "python": platform.python_version(),
        "pyspark": spark_version, "duckdb": duckdb.__version__, "pandas": pd.__version__,
        "pyarrow": pyarrow.__version__, "java": (java.stderr or java.stdout).strip().splitlines() if java else "absent",
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "git_commit": commit + (" (uncommitted changes)" if status else ""),
    }


def render(records: list[dict]) -> RichTable:
    table = RichTable(title="Spark local vs DuckDB (medians; peak RSS: DuckDB the Python process, Spark the "
                            "process tree)", title_justify="left")
    for col in ("customers", "step", "engine", "median s", "runs", "peak RSS MB", "rows", "also"):
        table.add_column(col, justify="left" if col in ("step", "engine", "also") else "right")
    for record in records:
        for step, engines in record["steps"].items():
            for engine, r in engines.items():
                first = (f"{record['customers']:,}", step, engine)
                if r["status"] != "done":
                    table.add_row(*first, r["status"], "-", f"{r['tree_peak_rss_mb']:,.0f}", "-", r["why"][:90])
                    continue
                also = [f"{k} {r[k]:.1f}" for k in ("load_s", "fit_s", "session_s", "cache_s", "features_s")
                        if r.get(k) is not None]
                if "fallback" in r:
                    also.append("FALLBACK: features at 3 as_of, no labels")
                if "plan_scans" in r and engine == SPARK:
                    s = r["plan_scans"]
                    also.append(f"scans: orders {s.get('orders', 0)}, events {s.get('events', 0)}")
                median = f"{r['median_s']:.2f}" if "median_s" in r else "-"
                runs = ", ".join(f"{x:.1f}" for x in r.get("runs_s", []))
                table.add_row(*first, median, runs, f"{r['peak_rss_mb']:,.0f}",
                              f"{r['rows']:,}" if "rows" in r else "-", "; ".join(also))
    return table


def render_rfm(records: list[dict]) -> RichTable | None:
    table = RichTable(title="RFM scores (1-5) moved by approximate ranks: share of buyers whose score changes "
                            "(by 2 or more); s: the feature query written (partitions: ranking alone)",
                      title_justify="left")
    for col in ("customers", "buyers", "method", "recency", "frequency", "monetary", "any score", "segment", "s"):
        table.add_column(col, justify="left" if col == "method" else "right")
    rows = 0
    for record in records:
        r = record["steps"].get("rfm_approx", {}).get(SPARK)
        if not r or r["status"] != "done":
            continue
        exact_label = next(iter(r["seconds"]))
        table.add_row(f"{record['customers']:,}", f"{r['buyers']:,}", exact_label, "-", "-", "-",
                      "-", "-", f"{r['seconds'][exact_label]:.1f}")
        for label, m in r["methods"].items():
            cells = [f"{100 * m[f'{n}_changed']:.2f} % ({100 * m[f'{n}_by_2_or_more']:.2f} %)" for n in RFM_SCORES]
            table.add_row("", "", label, *cells, f"{100 * m['any_score_changed']:.2f} %",
                          f"{100 * m['segment_changed']:.2f} %", f"{r['seconds'][label]:.1f}")
            rows += 1
    return table if rows else None


def positive_integers(option: str, text: str) -> list[int]:
    """``text``'s comma-separated positive integers; exits naming ``option`` when it holds anything else."""
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SystemExit(f"{option} takes positive integers, comma-separated; got {text!r}")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", default="100000,1000000", help="comma-separated shop sizes")
    parser.add_argument("--quick", action="store_true", help="10,000 customers only (trying it)")
    parser.add_argument("--repeats", type=int, help="timed runs per step (default: 3 below 1M customers, 1 from 1M)")
    parser.add_argument("--limit", type=float, default=900.0, help="seconds one step on one engine may take")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    parser.add_argument("--master", default="local[2]", help="Spark master")
    parser.add_argument("--driver-memory", default="4g", help="spark.driver.memory (local mode: all of Spark)")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE", help="more Spark settings")
    parser.add_argument("--rfm-accuracy", default="10000,1000",
                        help="comma-separated accuracies of percentile_approx for the RFM cut points")
    parser.add_argument("--rfm-partitions", default="4,16",
                        help="comma-separated numbers of hash partitions for the per-partition ranks")
    parser.add_argument("--spark-scorer", help="module:function to use as the Spark batch scorer")
    parser.add_argument("--spark-recommender", help="module:function to use as the Spark batch recommender")
    parser.add_argument("--spark-training-set", help="module:function to use as the Spark training-set builder")
    parser.add_argument("--retrain", action="store_true",
                        help="train the churn and propensity models again even when an earlier run saved them")
    parser.add_argument("--out", type=Path, help="where the JSON goes (default: benchmarks/results/spark[_quick].json)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args.child, args.engine, args.data, int(args.customers), args.repeats,
                          json.loads(args.settings))

    sizes = [10_000] if args.quick else positive_integers("--customers", args.customers)
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown or not steps:
        raise SystemExit(f"--steps takes some of {', '.join(STEPS)}, comma-separated; got {args.steps!r}")
    rfm_accuracies = positive_integers("--rfm-accuracy", args.rfm_accuracy)
    rfm_partitions = positive_integers("--rfm-partitions", args.rfm_partitions)
    bad_conf = [c for c in args.spark_conf if "=" not in c]
    if bad_conf:
        raise SystemExit(f"--spark-conf takes KEY=VALUE; got {bad_conf[0]!r}")
    WORK.mkdir(parents=True, exist_ok=True)
    settings = {"master": args.master, "driver_memory": args.driver_memory,
                "spark_conf": dict(c.split("=", 1) for c in args.spark_conf), "rfm_partitions": rfm_partitions,
                "rfm_accuracies": rfm_accuracies,
                "spark_scorer": args.spark_scorer, "spark_recommender": args.spark_recommender,
                "spark_training_set": args.spark_training_set, "models": str(WORK / "spark_models"),
                "scratch": str(WORK / "spark_out"), "local_dir": str(WORK / "spark_local")}
    info = machine()
    memory_guard_mb = MEMORY_GUARD_FRACTION * info["memory_total_mb"]
    out = args.out or RESULTS / ("spark_quick.json" if args.quick else "spark.json")
    report: dict[str, Any] = {
        "benchmark": "Spark local against DuckDB: features, training set, RFM approximation, score, recommend",
        "mode": "quick" if args.quick else "full", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/bench_spark.py", *sys.argv[1:]]), "machine": info,
        "settings": {**settings, "limit_s": args.limit, "memory_guard_mb": round(memory_guard_mb),
                     "features_as_of": FEATURES_AS_OF, "training_as_of": TRAINING_AS_OF,
                     "score_as_of": SCORE_AS_OF, "models_trained_on": f"DemoShop(customers={MODELS_SHOP}, seed=0)"},
        "sizes": [],
    }
    if "score" in steps:
        saved = all((Path(settings["models"]) / name).exists() for name in ("churn", "propensity"))
        report["models"] = {"data": prepare_shop(MODELS_SHOP), "train": (
            {"status": "reused", "why": f"bundles saved by an earlier run in {settings['models']} (delete it to "
                                        "retrain)"} if saved and not args.retrain else
            run_child("models", DUCKDB, MODELS_SHOP, 1, settings, args.limit, memory_guard_mb))}
    for customers in sizes:
        repeats = args.repeats or (1 if customers >= 1_000_000 else 3)
        record: dict[str, Any] = {"customers": customers, "repeats": repeats, "data": prepare_shop(customers),
                                  "steps": {}}
        report["sizes"].append(record)
        for step in steps:
            for engine in STEPS[step]:
                record["steps"].setdefault(step, {})[engine] = run_child(step, engine, customers, repeats, settings,
                                                                         args.limit, memory_guard_mb)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(report, indent=1, default=str) + "\n")  # what is done survives a crash
    console.print(render(report["sizes"]))
    rfm = render_rfm(report["sizes"])
    if rfm is not None:
        console.print(rfm)
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
