"""The customer x product interaction matrix that the recommenders learn from.

``build_interactions(tables, as_of, config)`` reads only rows strictly before ``as_of``. Each
purchase (a product in an order), add-to-cart and product view adds its configured weight,
optionally halved every ``half_life_days`` before the as_of; a return (negative quantity) takes its
purchase weight away. Pairs whose total is not positive are dropped. Confidence weightings (BM25,
TF-IDF) are applied by the model, with :func:`apply_weighting`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.nearest_neighbours import bm25_weight, tfidf_weight
from pydantic import BaseModel, ConfigDict, Field

from features.engines import Engine, double, engine
from features.errors import InputError
from features.schema import (
    CUSTOMER_ID,
    EVENT_TYPE,
    OCCURRED_AT,
    ORDER_ID,
    ORDERED_AT,
    PRODUCT_ID,
    QUANTITY,
    EventType,
    Table,
)
from features.tables import Tables

if TYPE_CHECKING:
    from features.spark import SparkTables

Weighting = Literal["plain", "bm25", "tfidf"]
WEIGHT = "weight"


class InteractionConfig(BaseModel):
    """Points per signal, time decay and returns handling of the interaction matrix."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    purchase: float = Field(10.0, ge=0)
    add_to_cart: float = Field(5.0, ge=0)
    product_view: float = Field(3.0, ge=0)
    half_life_days: float | None = Field(None, gt=0)  # None: no time decay
    subtract_returns: bool = True


@dataclass
class Interactions:
    """``matrix[i, j]``: weight of customer ``customer_ids[i]`` on product ``product_ids[j]``."""

    matrix: sp.csr_matrix  # float32, customers x products
    customer_ids: pd.Index
    product_ids: pd.Index
    as_of: datetime

    def rows(self, customer_ids: object) -> np.ndarray:
        """Row of each customer id, -1 for a customer with no interactions."""
        return self.customer_ids.get_indexer(pd.Index(customer_ids))

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape


def _signals_sql(config: InteractionConfig, e: Engine, only: str | None = None) -> str:
    decay = double(1) if config.half_life_days is None else (
        f"pow(CAST(0.5 AS DOUBLE), {e.days_between('t', e.as_of())} / {double(config.half_life_days)})")
    returns = "" if config.subtract_returns else f"AND {QUANTITY} > 0"
    purchase, add_to_cart, product_view = (e.parameter(n) for n in ("purchase", "add_to_cart", "product_view"))
    among = f"AND {CUSTOMER_ID} IN (SELECT {CUSTOMER_ID} FROM {only})" if only else ""
    return f"""
        WITH lines AS (
            SELECT {CUSTOMER_ID}, {PRODUCT_ID}, min({ORDERED_AT}) AS t,
                   CASE WHEN sum({QUANTITY}) > 0 THEN {purchase} ELSE -{purchase} END AS w
            FROM {Table.ORDERS.value}
            WHERE {ORDERED_AT} < {e.as_of()} AND {QUANTITY} <> 0 {returns} {among}
            GROUP BY {ORDER_ID}, {CUSTOMER_ID}, {PRODUCT_ID}
        ), browsing AS (
            SELECT {CUSTOMER_ID}, {PRODUCT_ID}, {OCCURRED_AT} AS t,
                   CASE {EVENT_TYPE} WHEN '{EventType.ADD_TO_CART.value}' THEN {add_to_cart}
                                     ELSE {product_view} END AS w
            FROM {Table.EVENTS.value}
            WHERE {OCCURRED_AT} < {e.as_of()} AND {PRODUCT_ID} IS NOT NULL
              AND {EVENT_TYPE} IN ('{EventType.ADD_TO_CART.value}', '{EventType.PRODUCT_VIEW.value}') {among}
        )
        SELECT {CUSTOMER_ID}, {PRODUCT_ID}, sum(w * {decay}) AS {WEIGHT}
        FROM (SELECT * FROM lines UNION ALL SELECT * FROM browsing) signals
        GROUP BY {CUSTOMER_ID}, {PRODUCT_ID} HAVING sum(w * {decay}) > CAST(1e-9 AS DOUBLE)
    """


def interaction_pairs_sql(config: InteractionConfig, engine_name: str,
                          only: str | None = None) -> tuple[str, dict[str, float]]:
    """The weighted (customer_id, product_id, weight) query of ``config`` in an engine's dialect, and
    its parameters other than the as_of; ``only``: a relation whose ``customer_id`` column lists the
    customers to read (none: every customer)."""
    params = {"purchase": float(config.purchase), "add_to_cart": float(config.add_to_cart),
              "product_view": float(config.product_view)}
    return _signals_sql(config, engine(engine_name), only), params


def catalog_ids(tables: Tables | SparkTables) -> pd.Index:
    """Product ids of the catalog and of every ordered or browsed product, sorted."""
    rows = tables.query(
        f"""SELECT {PRODUCT_ID} FROM {Table.PRODUCTS.value}
            UNION SELECT {PRODUCT_ID} FROM {Table.ORDERS.value}
            UNION SELECT {PRODUCT_ID} FROM {Table.EVENTS.value} WHERE {PRODUCT_ID} IS NOT NULL""")
    return pd.Index(sorted(rows[PRODUCT_ID]), name=PRODUCT_ID)


def build_interactions(tables: Tables | SparkTables, as_of: datetime, config: InteractionConfig | None = None,
                       product_ids: pd.Index | None = None, only: str | None = None) -> Interactions:
    """The interaction matrix at ``as_of``: rows are customers with a positive total (``only``: of
    those listed in that relation's ``customer_id``), columns are ``product_ids`` (default:
    :func:`catalog_ids`; products outside it are ignored). The weights are summed by the engine holding
    ``tables`` (DuckDB, or Spark)."""
    config = config or InteractionConfig()
    sql, params = interaction_pairs_sql(config, tables.engine, only)
    pairs = tables.query(sql, params | engine(tables.engine).parameters(as_of))
    products = catalog_ids(tables) if product_ids is None else pd.Index(product_ids, name=PRODUCT_ID)
    return interactions_from_pairs(pairs, products, as_of)


def interactions_from_pairs(pairs: pd.DataFrame, product_ids: pd.Index, as_of: datetime) -> Interactions:
    """The matrix of weighted ``(customer_id, product_id, weight)`` pairs on ``product_ids``: products
    outside it are ignored, and a customer left without a pair has no row."""
    products = pd.Index(product_ids, name=PRODUCT_ID)
    cols = products.get_indexer(pairs[PRODUCT_ID].astype(str))
    pairs, cols = pairs[cols >= 0], cols[cols >= 0]
    customers = pd.Index(np.sort(pairs[CUSTOMER_ID].astype(str).unique()), name=CUSTOMER_ID)
    rows = customers.get_indexer(pairs[CUSTOMER_ID].astype(str))
    matrix = sp.csr_matrix((pairs[WEIGHT].to_numpy(np.float32), (rows, cols)),
                           shape=(len(customers), len(products)), dtype=np.float32)
    return Interactions(matrix, customers, products, as_of)


def apply_weighting(matrix: sp.csr_matrix, weighting: Weighting, k1: float = 100.0, b: float = 0.8) -> sp.csr_matrix:
    """Confidence weighting of a customers x products matrix: ``plain`` (as is), ``bm25`` or
    ``tfidf`` (implicit's functions, which weight each product column by its rarity)."""
    if weighting == "plain":
        return matrix
    if weighting == "bm25":
        return bm25_weight(matrix, K1=k1, B=b).tocsr().astype(np.float32)
    if weighting == "tfidf":
        return tfidf_weight(matrix).tocsr().astype(np.float32)
    raise InputError(f"weighting must be one of plain, bm25, tfidf; got {weighting!r}")


def purchases(tables: Tables, start: datetime | None, end: datetime) -> pd.DataFrame:
    """Distinct (customer_id, product_id) bought in ``[start, end)`` with the last purchase time."""
    since = f"AND {ORDERED_AT} >= $start" if start is not None else ""
    params = {"end": end} | ({"start": start} if start is not None else {})
    return tables.con.sql(
        f"""SELECT {CUSTOMER_ID}, {PRODUCT_ID}, max({ORDERED_AT}) AS {ORDERED_AT}
            FROM {Table.ORDERS.value}
            WHERE {ORDERED_AT} < $end {since} AND {QUANTITY} > 0
            GROUP BY ALL""", params=params).df()


def pairs_matrix(pairs: pd.DataFrame, customer_ids: pd.Index, product_ids: pd.Index) -> sp.csr_matrix:
    """0/1 matrix (customers x products) of ``pairs``; pairs outside either index are ignored."""
    rows = customer_ids.get_indexer(pairs[CUSTOMER_ID])
    cols = product_ids.get_indexer(pairs[PRODUCT_ID])
    keep = (rows >= 0) & (cols >= 0)
    data = np.ones(int(keep.sum()), np.float32)
    out = sp.csr_matrix((data, (rows[keep], cols[keep])), shape=(len(customer_ids), len(product_ids)))
    out.sum_duplicates()
    out.data[:] = 1.0
    return out


def select_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """Rows ``rows`` of ``matrix`` in that order, an empty row where ``rows`` is -1."""
    rows = np.asarray(rows)
    picked = matrix[np.maximum(rows, 0)] if matrix.shape[0] else sp.csr_matrix((len(rows), matrix.shape[1]))
    return (sp.diags((rows >= 0).astype(np.float32)) @ picked).tocsr()
