"""Batch scoring on Spark (``sendwise score --engine spark``): the rows and columns of
:func:`training.scoring.score_features`, computed by it on every partition of the features.

What runs where: the feature query runs on Spark (:func:`features.spark.spark_features`); the churn and
propensity bundles are broadcast once; each partition's feature rows reach
:func:`~training.scoring.score_features` on the executors as pandas batches (``mapInPandas``), with the
column types DuckDB's frames have (:func:`features.spark.pandas_types`), and its rows come back under
:func:`score_schema`. Nothing is collected on the driver, and the rows come in no particular order.

pyspark is imported only when these functions run (the ``spark`` extra).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd

from features.build import to_timestamp
from features.errors import InputError
from features.schema import CUSTOMER_ID
from features.spark import pandas_types, spark_features, with_types
from features.validate import ContractError
from training.model import ModelBundle
from training.scoring import CLV_FIELDS, REASONS, models_feature_config, score_features

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from features.spark import SparkTables

# the columns of score_features, in its order, with their Spark types
SCORE_TYPES: dict[str, str] = {
    CUSTOMER_ID: "string", "churn_probability": "double", "purchase_probability": "double",
    "churn_risk": "string", "rfm_segment": "string", "lifecycle_stage": "string",
    **dict(zip(CLV_FIELDS, ("double", "double", "double", "timestamp"), strict=True)),
    **{f"reason_{i + 1}": "string" for i in range(REASONS)},
}
# the columns score_features reads besides the models' inputs
READ_COLUMNS = (CUSTOMER_ID, "orders_count", "rfm_segment", "lifecycle_stage")


def score_schema() -> str:
    """The Spark schema (DDL) of :func:`score_spark`'s rows: score_features' columns, in its order."""
    return ", ".join(f"`{name}` {kind}" for name, kind in SCORE_TYPES.items())


def check_feature_columns(columns: list[str], *bundles: ModelBundle) -> None:
    """An InputError naming the columns a feature frame lacks for scoring with ``bundles``."""
    need = dict.fromkeys([*READ_COLUMNS, *(c.split("=", 1)[0] for b in bundles for c in b.columns)])
    missing = [c for c in need if c not in columns]
    if missing:
        more = " ..." if len(missing) > 5 else ""
        raise InputError(f"the features lack {', '.join(missing[:5])}{more}, which scoring reads: build "
                         "them with spark_features and the models' feature settings "
                         "(training.scoring.models_feature_config).")


def score_spark(features: DataFrame, churn: ModelBundle, propensity: ModelBundle,
                clv_horizon_days: int | None = None) -> DataFrame:
    """:func:`~training.scoring.score_features` of a Spark feature frame (as
    :func:`features.spark.spark_features` gives it), run per partition: a lazy Spark DataFrame of
    :func:`score_schema`, one row per feature row, in no particular order. The CLV fields over
    ``clv_horizon_days`` (default: the CLV model's horizon)."""
    check_feature_columns(features.columns, churn, propensity)
    types = pandas_types(features.schema)
    models = features.sparkSession.sparkContext.broadcast((churn, propensity))

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        churn_model, propensity_model = models.value
        for batch in batches:
            if len(batch):
                yield score_features(with_types(batch, types), churn_model, propensity_model,
                                     clv_horizon_days=clv_horizon_days)

    return features.mapInPandas(score, score_schema())


def score_customers_spark(tables: SparkTables, as_of: object, churn: ModelBundle, propensity: ModelBundle,
                          clv_horizon_days: int | None = None) -> tuple[DataFrame, datetime]:
    """:func:`training.scoring.score_customers` on Spark: every customer known before ``as_of``, scored
    from rows strictly before it; the scores (:func:`score_spark`) and the as_of.

    score_customers cuts the tables first (``tables.before(as_of)``); that changes no feature, since
    the feature query reads only rows strictly before its as_of (tests/test_features.py: future rows
    change nothing), so the Spark query runs on the whole tables."""
    when = to_timestamp(as_of)
    start, _ = tables.time_range()
    if start is None or when <= start:
        first = "none" if start is None else f"{start:%Y-%m-%dT%H:%M:%S}"
        raise ContractError(f"--as-of {when:%Y-%m-%dT%H:%M:%S} is not after the first row of the data "
                            f"({first}).")
    features = spark_features(tables, when, models_feature_config(churn, propensity))
    return score_spark(features, churn, propensity, clv_horizon_days), when
