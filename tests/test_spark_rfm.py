"""Approximate RFM ranks on Spark (``spark.rfm_ranks: approximate``, issue 18 item 5).

The exact scores rank every buyer with ``percent_rank`` over a window without a partition, which Spark
runs in one task. The approximate ones take each score's cut points from one distributed
``percentile_approx`` aggregate (:func:`features.rfm.approximate_scores_sql`): with an accuracy above
2 (buyers + 4) (Spark's summary then keeps every value exactly) they are the exact scores; their plan has
no window without a partition; no other feature changes. One local[2] session (conftest's ``spark``) and the 400-customer generated shop.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest
from test_spark_features import assert_same_frames

from features.build import build_features, feature_sql
from features.config import FeatureConfig
from features.errors import InputError
from features.rfm import RfmRanks
from features.tables import Tables

pytestmark = pytest.mark.spark

SCORES = ["rfm_recency", "rfm_frequency", "rfm_monetary"]


@pytest.fixture(scope="module")
def as_of(demo_tables: Tables) -> datetime:
    return (pd.Timestamp(demo_tables.time_range()[1]) - pd.Timedelta(days=45)).floor("D").to_pydatetime()


@pytest.fixture(scope="module")
def exact(demo_tables: Tables, as_of: datetime) -> pd.DataFrame:
    """DuckDB's features (exact ranks), which Spark's exact query equals (test_spark_features)."""
    return build_features(demo_tables, as_of)


@pytest.fixture(scope="module")
def approximate(spark: object, demo_tables: Tables) -> object:
    """The generated shop in Spark, its feature query ranking approximately."""
    from features.spark import SparkTables

    return SparkTables.from_tables(spark, demo_tables, rfm_ranks="approximate")


def unpartitioned_windows(frame: object) -> list[str]:
    """The window operators of ``frame``'s physical plan (subqueries included) that have no
    ``PARTITION BY``: each runs in one task over all its rows."""
    found, pending = [], [frame._jdf.queryExecution().executedPlan()]  # type: ignore[attr-defined]
    while pending:
        node = pending.pop()
        if node.nodeName() == "Window" and node.partitionSpec().isEmpty():
            found.append(node.simpleString(200))
        for nodes in (node.children(), node.subqueries()):
            pending += [nodes.apply(i) for i in range(nodes.size())]
    return found


def test_an_accuracy_above_twice_the_buyers_gives_every_buyer_the_exact_scores(
        approximate: object, exact: pd.DataFrame, as_of: datetime) -> None:
    from features.spark import spark_features, to_pandas

    buyers = int(exact["orders_count"].gt(0).sum())
    assert buyers > 100 and all(exact[s].nunique() >= 4 for s in SCORES)  # frequency: ties span a cut
    # the cut points are quantiles of the buyers and 4 padding rows (approximate_scores_sql); every
    # column is compared, so no other feature moves either
    assert_same_frames(exact, to_pandas(spark_features(approximate, as_of, accuracy=2 * (buyers + 4) + 1)))


def test_the_approximate_plan_has_no_window_without_a_partition(approximate: object, as_of: datetime) -> None:
    from features.spark import spark_features

    one_task = unpartitioned_windows(spark_features(approximate, as_of, rfm_ranks="exact"))
    assert len(one_task) == len(SCORES) and all("percent_rank" in w for w in one_task), one_task
    assert unpartitioned_windows(spark_features(approximate, as_of)) == []


def test_the_setting_reaches_the_tables_and_a_bad_value_is_named(spark: object, demo_dir, approximate: object,
                                                                 as_of: datetime) -> None:
    from features.spark import SparkTables, spark_features
    from sendwise.engines import EngineName, open_tables
    from sendwise.project import SparkSettings

    assert approximate.rfm_ranks is RfmRanks.APPROXIMATE  # type: ignore[attr-defined]
    opened = open_tables(EngineName.SPARK, demo_dir, None, SparkSettings(rfm_ranks="approximate"))
    assert opened.rfm_ranks is RfmRanks.APPROXIMATE  # type: ignore[union-attr]
    message = "spark.rfm_ranks must be one of exact, approximate; got 'fast'"
    with pytest.raises(InputError, match=message):
        SparkTables(spark, "fast")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=message):
        spark_features(approximate, as_of, rfm_ranks="fast")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="positive integer; got 0"):
        spark_features(approximate, as_of, accuracy=0)
    with pytest.raises(InputError, match="on Spark only"):
        feature_sql(FeatureConfig(), "duckdb", RfmRanks.APPROXIMATE)
