"""The Spark engine gives DuckDB's features and interactions, every column (issue 18 items 1 and 2).

The tests marked ``spark`` share one local[2] session (conftest's ``spark``) and skip where pyspark or
Java is absent. The first tests need neither: they read the Spark SQL with sqlglot and check that it
names only functions Spark has and no fractional literal Spark would read as DECIMAL.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest
import sqlglot
from sqlglot import exp

from features.build import build_features, feature_sql
from features.config import FeatureConfig, IntentWeights, LifecycleRules
from features.interactions import InteractionConfig, build_interactions, interaction_pairs_sql
from features.schema import CUSTOMER_ID
from features.tables import Tables
from features.tombstones import Tombstones

OTHER = FeatureConfig(order_windows_days=(14, 60), email_windows_days=(3,), browse_windows_days=(2, 5),
                      abandoned_cart_days=(3,), intent_window_days=10,
                      intent_weights=IntentWeights(view=3, add_to_cart=5, purchase=10),
                      lifecycle=LifecycleRules(new_days=10, at_risk_factor=1.1, lapsed_factor=2.0))
# syntax sqlglot reads as functions; the rest must be functions of Spark SQL
SYNTAX = {"AND", "OR", "CASE", "IF", "CAST", "TRY_CAST", "STRUCT"}
SPARK_QUERIES = {
    "features-default": feature_sql(FeatureConfig(), "spark"),
    "features-other": feature_sql(OTHER, "spark"),
    "interactions": interaction_pairs_sql(InteractionConfig(), "spark")[0],
    "interactions-decay": interaction_pairs_sql(InteractionConfig(half_life_days=30, subtract_returns=False),
                                                "spark")[0],
}


def spark_function_names() -> set[str]:
    """Spark SQL's functions: those pyspark wraps (pyspark is pure Python; no Java needed)."""
    functions = pytest.importorskip("pyspark.sql.functions")
    return {name.upper() for name in dir(functions) if not name.startswith("_")}


@pytest.mark.parametrize("name", sorted(SPARK_QUERIES))
def test_the_spark_sql_names_only_functions_spark_has(name: str) -> None:
    tree = sqlglot.parse_one(SPARK_QUERIES[name], read="spark")
    unknown = sorted({f.name for f in tree.find_all(exp.Anonymous)})
    assert not unknown, f"functions sqlglot does not know as Spark's: {unknown}"
    known = spark_function_names()
    used = {f.sql(dialect="spark").split("(")[0].strip().upper() for f in tree.find_all(exp.Func)
            if not isinstance(f, exp.Connector | exp.Case | exp.If | exp.Cast | exp.Struct)}
    assert used - SYNTAX <= known, sorted(used - SYNTAX - known)
    assert {"MAX_BY", "UNIX_MICROS"} & used or name.startswith("interactions")


@pytest.mark.parametrize("name", sorted(SPARK_QUERIES))
def test_every_fractional_literal_is_a_double(name: str) -> None:
    tree = sqlglot.parse_one(SPARK_QUERIES[name], read="spark")
    bare = [lit.sql() for lit in tree.find_all(exp.Literal)
            if lit.is_number and any(c in lit.this.lower() for c in ".e")
            and not (isinstance(lit.parent, exp.Cast) and lit.parent.to.is_type("double"))]
    assert not bare, f"Spark reads these as DECIMAL (a ratio would be truncated): {bare}"


def test_the_duckdb_spellings_stay_out_of_the_spark_sql() -> None:
    for sql in SPARK_QUERIES.values():
        for duckdb_only in ("epoch_us(", "to_days(", "arg_max_null(", "$as_of", "GROUP BY ALL"):
            assert duckdb_only not in sql


# -- the same rows from both engines ---------------------------------------------------------------------
def assert_same_frames(duckdb_frame: pd.DataFrame, spark_frame: pd.DataFrame) -> None:
    """Every column equal (floats to 1e-9 relative), of the same type up to nullability (an integer
    column holding no NULL may be nullable in one frame only)."""
    assert list(spark_frame.columns) == list(duckdb_frame.columns)
    assert len(duckdb_frame) > 0

    def kind(dtype: object) -> str:
        return {"boolean": "bool"}.get(str(dtype).lower(), str(dtype).lower())

    assert [kind(t) for t in spark_frame.dtypes] == [kind(t) for t in duckdb_frame.dtypes]
    pd.testing.assert_frame_equal(spark_frame, duckdb_frame, check_exact=False, rtol=1e-9, atol=0,
                                  check_dtype=False)


@pytest.fixture(scope="module")
def spark_demo(spark: object, demo_tables: Tables) -> object:
    from features.spark import SparkTables

    return SparkTables.from_tables(spark, demo_tables)


@pytest.mark.spark
def test_the_hand_made_fixture_gives_the_same_features(spark: object, tiny_tables: Tables) -> None:
    from features.spark import SparkTables

    as_of = datetime(2024, 2, 1)
    tables = SparkTables.from_tables(spark, tiny_tables)
    assert_same_frames(build_features(tiny_tables, as_of), build_features(tables, as_of))
    assert tables.time_range() == tiny_tables.time_range()


@pytest.mark.spark
@pytest.mark.parametrize("days_before_end", [45, 200])
def test_a_generated_shop_gives_the_same_features_at_two_dates(spark_demo: object, demo_tables: Tables,
                                                               days_before_end: int) -> None:
    as_of = (pd.Timestamp(demo_tables.time_range()[1]) - pd.Timedelta(days=days_before_end)).floor("D")
    duckdb_frame = build_features(demo_tables, as_of)
    assert duckdb_frame["orders_count"].gt(0).sum() > 50
    assert_same_frames(duckdb_frame, build_features(spark_demo, as_of))


@pytest.mark.spark
def test_other_feature_settings_give_the_same_features(spark_demo: object, demo_tables: Tables) -> None:
    as_of = (pd.Timestamp(demo_tables.time_range()[1]) - pd.Timedelta(days=30)).floor("D")
    duckdb_frame = build_features(demo_tables, as_of, OTHER)
    assert "orders_14d" in duckdb_frame
    assert_same_frames(duckdb_frame, build_features(spark_demo, as_of, OTHER))


@pytest.mark.spark
@pytest.mark.parametrize("config", [InteractionConfig(), InteractionConfig(half_life_days=30, subtract_returns=False)],
                         ids=["default", "decay-no-returns"])
def test_the_interactions_are_the_same(spark_demo: object, demo_tables: Tables, config: InteractionConfig) -> None:
    as_of = (pd.Timestamp(demo_tables.time_range()[1]) - pd.Timedelta(days=30)).floor("D").to_pydatetime()
    local, remote = build_interactions(demo_tables, as_of, config), build_interactions(spark_demo, as_of, config)
    assert local.matrix.nnz > 1000
    assert local.customer_ids.equals(remote.customer_ids) and local.product_ids.equals(remote.product_ids)
    assert abs(local.matrix - remote.matrix).max() <= 1e-5 * abs(local.matrix).max()


@pytest.mark.spark
def test_forgotten_customers_are_not_read_from_the_lake(spark: object, tiny_tables: Tables, tmp_path) -> None:
    from features.schema import Table
    from features.spark import SparkTables

    paths = {}
    for table in (Table.ORDERS, Table.EVENTS, Table.CUSTOMERS):
        paths[table] = str(tmp_path / f"{table.value}.parquet")
        tiny_tables.con.execute(f"COPY {table.value} TO '{paths[table]}' (FORMAT parquet)")
    tables = SparkTables.from_sources(spark, paths, Tombstones().adding(["a"]))
    customers = set(build_features(tables, datetime(2024, 2, 1))[CUSTOMER_ID])
    assert customers == {"b", "c"}
    assert tables.count(Table.PRODUCTS) == 0


@pytest.mark.spark
def test_a_training_set_built_on_spark_has_the_same_rows_and_labels(spark_demo: object, demo_tables: Tables) -> None:
    from features.spark import spark_training_set, to_pandas
    from features.training_set import Target, build_training_set, monthly_as_of_dates

    dates = monthly_as_of_dates(demo_tables, 90, periods=2)
    local = build_training_set(demo_tables, dates, Target.CHURNED).frame
    remote = to_pandas(spark_training_set(spark_demo, dates, Target.CHURNED, 90))
    remote = remote.sort_values(["as_of", CUSTOMER_ID], ignore_index=True)
    assert local["churned"].any() and not local["churned"].all()
    assert_same_frames(local, remote)


@pytest.mark.spark
def test_a_sample_keeps_whole_customers_and_is_the_same_each_time(spark_demo: object, demo_tables: Tables) -> None:
    from features.spark import sample_customers

    sample, drawn = sample_customers(spark_demo, 100, seed=3)
    again, _ = sample_customers(spark_demo, 100, seed=3)
    ids = set(sample.frame("orders")[CUSTOMER_ID]) | set(sample.frame("customers")[CUSTOMER_ID])
    assert drawn.customers == 400 and drawn.fraction == pytest.approx(0.25)
    assert 50 <= drawn.sampled <= 150 and drawn.params()["sample_seed"] == 3
    assert ids == set(again.frame("orders")[CUSTOMER_ID]) | set(again.frame("customers")[CUSTOMER_ID])
    full = demo_tables.frame("orders")
    mine = full[full[CUSTOMER_ID].isin(ids)]
    assert len(sample.frame("orders")) == len(mine) > 0
    assert sample.count("products") == demo_tables.count("products")
    assert sample.fingerprint() != demo_tables.fingerprint()


@pytest.mark.spark
def test_two_shops_in_one_session_each_read_their_own_tables(spark: object, spark_demo: object, demo_tables: Tables,
                                                             tiny_tables: Tables) -> None:
    from features.spark import SparkTables

    tiny = SparkTables.from_tables(spark, tiny_tables)  # replaces the session's views
    assert spark_demo.count("orders") == demo_tables.count("orders")  # the demo's views come back
    assert tiny.count("orders") == tiny_tables.count("orders") == 5
    assert spark_demo.time_range() == demo_tables.time_range()
