"""Top-k recommendations for every known customer on Spark (``sendwise recommend --engine spark``): the
rows of :func:`training.recommenders.batch.recommend_all`, made by the project's own recommender.

What runs where:

* Spark SQL reads the tables (these queries are the Spark spellings of :func:`~.batch.known_customers`
  and :func:`features.interactions.purchases`; the interactions are
  :func:`features.interactions.interaction_pairs_sql`'s): one row per known customer with their
  country, their purchases (product ids and last purchase times, when the rules exclude purchases) and,
  for a model that reads them (scoring from history, folding in), their interaction weights; and the products most bought in the
  last :data:`~.batch.FALLBACK_DAYS` days, ranked per country and over all countries.
* The driver collects what is small and shared by all: the catalog (products table), the products the
  rules block and the fallback lists (:func:`~.batch.fallback_length` products per list), and
  broadcasts them once with the model.
* Each batch of a partition's customers (``mapInPandas``) becomes a
  :class:`~.batch.RecommendationContext` (:meth:`~.batch.RecommendationContext.from_parts`) whose
  ``recommend`` does what it does on one node: the model's top k, the rules, the popular fallback.

The rows come in no particular order (sort by customer_id and rank to read them as recommend_all's).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.engines import engine
from features.interactions import (
    WEIGHT,
    InteractionConfig,
    Interactions,
    interaction_pairs_sql,
    interactions_from_pairs,
)
from features.schema import (
    COUNTRY,
    CUSTOMER_ID,
    OCCURRED_AT,
    ORDERED_AT,
    PRODUCT_ID,
    QUANTITY,
    SIGNUP_AT,
    Table,
)
from features.spark import to_pandas
from training.recommenders.batch import (
    FALLBACK_DAYS,
    MIN_COUNTRY_BUYERS,
    RecommendationContext,
    check_k,
    fallback_length,
)
from training.recommenders.metrics import RANK, SCORE, SOURCE
from training.recommenders.models import Recommender
from training.recommenders.rules import BusinessRules, blocked_products, catalog

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from features.spark import SparkTables

# per-customer arrays of the rows mapInPandas receives: purchases and interaction weights
BOUGHT, BOUGHT_US, ITEMS, WEIGHTS = "_bought", "_bought_us", "_items", "_weights"
RECOMMENDATION_SCHEMA = (f"`{CUSTOMER_ID}` string, `{RANK}` bigint, `{PRODUCT_ID}` string, `{SCORE}` float, "
                         f"`{SOURCE}` string")


def known_customers_sql() -> str:
    """:func:`~.batch.known_customers` in Spark SQL (``any_value`` skipping NULLs, as DuckDB's does)."""
    as_of = engine("spark").as_of()
    return f"""
        WITH ids AS (
            SELECT {CUSTOMER_ID} FROM {Table.CUSTOMERS.value}
            WHERE {SIGNUP_AT} < {as_of} OR {SIGNUP_AT} IS NULL
            UNION SELECT {CUSTOMER_ID} FROM {Table.ORDERS.value} WHERE {ORDERED_AT} < {as_of}
            UNION SELECT {CUSTOMER_ID} FROM {Table.EVENTS.value} WHERE {OCCURRED_AT} < {as_of})
        SELECT ids.{CUSTOMER_ID}, any_value(c.{COUNTRY}, true) AS {COUNTRY}
        FROM ids LEFT JOIN {Table.CUSTOMERS.value} c ON c.{CUSTOMER_ID} = ids.{CUSTOMER_ID}
        GROUP BY ids.{CUSTOMER_ID}"""


def purchases_sql(recent_only: bool = False) -> str:
    """:func:`features.interactions.purchases` before the as_of in Spark SQL; ``recent_only``: those
    last bought in the :data:`~.batch.FALLBACK_DAYS` days before it, or all of them when there are
    none (the fallback's rows, as :class:`~.batch.RecommendationContext` picks them)."""
    e = engine("spark")
    bought = f"""SELECT {CUSTOMER_ID}, {PRODUCT_ID}, max({ORDERED_AT}) AS {ORDERED_AT}
                 FROM {Table.ORDERS.value} WHERE {ORDERED_AT} < {e.as_of()} AND {QUANTITY} > 0
                 GROUP BY {CUSTOMER_ID}, {PRODUCT_ID}"""
    if not recent_only:
        return bought
    return f"""WITH bought AS ({bought}),
                    recent AS (SELECT * FROM bought WHERE {ORDERED_AT} >= {e.days_before(FALLBACK_DAYS)})
               SELECT * FROM recent
               UNION ALL SELECT * FROM bought WHERE (SELECT count(*) FROM recent) = 0"""


def fallback_lists_spark(tables: SparkTables, as_of: datetime, known: DataFrame, blocked_ids: np.ndarray,
                         length: int) -> dict[str | None, pd.DataFrame]:
    """:meth:`~.batch.RecommendationContext.fallback_lists` computed by Spark: the ``length`` products
    most bought (by distinct buyers; ties by product id) per country with at least
    :data:`~.batch.MIN_COUNTRY_BUYERS` buyers, and over all countries under None, ``blocked_ids`` left
    out; ``known`` is :func:`known_customers_sql`'s frame."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    recent = tables.sql(purchases_sql(recent_only=True), engine("spark").parameters(as_of))
    recent = recent.join(known, CUSTOMER_ID, "left")
    if len(blocked_ids):
        blocked = tables.spark.createDataFrame([(str(p),) for p in blocked_ids], f"{PRODUCT_ID} string")
        recent = recent.join(F.broadcast(blocked), PRODUCT_ID, "left_anti")
    recent = recent.cache()  # read by the three queries below
    ranking = [F.desc(SCORE), F.asc(PRODUCT_ID)]
    overall = recent.groupBy(PRODUCT_ID).agg(F.countDistinct(CUSTOMER_ID).alias(SCORE))
    lists: dict[str | None, pd.DataFrame] = {None: to_pandas(overall.orderBy(*ranking).limit(length))}
    countries = (recent.where(F.col(COUNTRY).isNotNull()).groupBy(COUNTRY)
                 .agg(F.countDistinct(CUSTOMER_ID).alias("_buyers"))
                 .where(F.col("_buyers") >= MIN_COUNTRY_BUYERS).select(COUNTRY))
    per_country = (recent.join(countries, COUNTRY).groupBy(COUNTRY, PRODUCT_ID)
                   .agg(F.countDistinct(CUSTOMER_ID).alias(SCORE))
                   .withColumn("_n", F.row_number().over(Window.partitionBy(COUNTRY).orderBy(*ranking)))
                   .where(F.col("_n") <= length))
    for country, ranked in to_pandas(per_country).sort_values([COUNTRY, "_n"]).groupby(COUNTRY, sort=False):
        lists[country] = ranked[[PRODUCT_ID, SCORE]].reset_index(drop=True)
    recent.unpersist()
    return lists


def customer_rows(tables: SparkTables, as_of: datetime, known: DataFrame, model: Recommender,
                  rules: BusinessRules, base_config: InteractionConfig | None = None) -> DataFrame:
    """One row per known customer: ``customer_id``, ``country``, and the arrays of their purchases
    (:data:`BOUGHT` product ids, :data:`BOUGHT_US` last purchase times in microseconds; only when the
    rules exclude purchases) and of their interactions (:data:`ITEMS`, :data:`WEIGHTS`; only for a model
    that reads them)."""
    from pyspark.sql import functions as F

    params = engine("spark").parameters(as_of)
    rows = known

    def gathered(frame: DataFrame, names: dict[str, str]) -> DataFrame:
        # one list of structs, split into arrays: the arrays keep one order
        pairs = F.collect_list(F.struct(*(F.col(c).alias(n) for n, c in names.items())))
        return frame.groupBy(CUSTOMER_ID).agg(pairs.alias("_pairs")).select(
            CUSTOMER_ID, *(F.col("_pairs").getField(n).alias(n) for n in names))

    if rules.exclude_purchased:
        bought = tables.sql(purchases_sql(), params).withColumn("_us", F.unix_micros(ORDERED_AT))
        rows = rows.join(gathered(bought, {BOUGHT: PRODUCT_ID, BOUGHT_US: "_us"}), CUSTOMER_ID, "left")
    if model.reads_interactions:
        sql, weights = interaction_pairs_sql(model.interaction_config(base_config), "spark")
        pairs = tables.sql(sql, weights | params)
        if not model.scores_from_history:  # folds in: only the customers outside the fit
            fitted = tables.spark.createDataFrame(pd.DataFrame({CUSTOMER_ID: model.customer_ids_.astype(str)}))
            pairs = pairs.join(F.broadcast(fitted), CUSTOMER_ID, "left_anti")
        rows = rows.join(gathered(pairs, {ITEMS: PRODUCT_ID, WEIGHTS: "weight"}), CUSTOMER_ID, "left")
    return rows


def _long(batch: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """The per-customer arrays ``first`` and ``second`` of ``batch`` as rows (customer_id, first, second)."""
    if first not in batch:
        return pd.DataFrame({CUSTOMER_ID: pd.Series(dtype=object), first: pd.Series(dtype=object),
                             second: pd.Series(dtype=object)})
    long = batch[[CUSTOMER_ID, first, second]].explode([first, second], ignore_index=True)
    return long[long[first].notna()].reset_index(drop=True)


def batch_purchases(batch: pd.DataFrame) -> pd.DataFrame:
    """The batch's purchases as :func:`features.interactions.purchases` gives them."""
    long = _long(batch, BOUGHT, BOUGHT_US)
    return pd.DataFrame({CUSTOMER_ID: long[CUSTOMER_ID].astype(str), PRODUCT_ID: long[BOUGHT].astype(str),
                         ORDERED_AT: pd.to_datetime(long[BOUGHT_US].astype("int64"), unit="us")})


def batch_interactions(batch: pd.DataFrame, product_ids: pd.Index, as_of: datetime) -> Interactions:
    """The batch's customers' rows of :func:`features.interactions.build_interactions` on
    ``product_ids``: products outside it ignored, customers left with no pair absent."""
    long = _long(batch, ITEMS, WEIGHTS).rename(columns={ITEMS: PRODUCT_ID, WEIGHTS: WEIGHT})
    return interactions_from_pairs(long, product_ids, as_of)


def recommend_all_spark(tables: SparkTables, as_of: datetime, model: Recommender, k: int = 10,
                        rules: BusinessRules | None = None,
                        base_config: InteractionConfig | None = None) -> DataFrame:
    """:func:`~.batch.recommend_all` on Spark: ``customer_id, rank, product_id, score, source`` for every
    customer known before ``as_of``, reading only rows before it; a lazy Spark DataFrame of
    :data:`RECOMMENDATION_SCHEMA` (the fallback lists are computed when it is called)."""
    k, rules = check_k(k), rules or BusinessRules()
    known = tables.sql(known_customers_sql(), engine("spark").parameters(as_of))
    products = catalog(tables, model.product_ids_)
    blocked = model.product_ids_[blocked_products(products, rules)].to_numpy()
    lists = fallback_lists_spark(tables, as_of, known, blocked, fallback_length(k))
    shared = tables.spark.sparkContext.broadcast((model, products, lists))
    from_history = model.reads_interactions

    def recommend(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        recommender, catalog_rows, fallback = shared.value
        for batch in batches:
            if not len(batch):
                continue
            interactions = None
            if from_history:
                interactions = batch_interactions(batch, recommender.product_ids_, as_of)
            context = RecommendationContext.from_parts(recommender, as_of, batch[[CUSTOMER_ID, COUNTRY]],
                                                       catalog_rows, batch_purchases(batch), interactions,
                                                       rules, k, fallback)
            yield context.recommend(pd.Index(batch[CUSTOMER_ID]), k, rules)

    rows = customer_rows(tables, as_of, known, model, rules, base_config)
    return rows.mapInPandas(recommend, RECOMMENDATION_SCHEMA)
