"""Point-in-time purchase signals of products and customers, for the recommender's ranker.

Pure functions of ``(tables, as_of)``: only purchases (order lines with a positive quantity)
strictly before ``as_of`` count. Ages are in days before ``as_of``; a product or customer without
any purchase gets NaN ages and zero counts.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from features.schema import (
    COUNTRY,
    CUSTOMER_ID,
    ORDER_ID,
    ORDERED_AT,
    PRODUCT_ID,
    QUANTITY,
    UNIT_PRICE,
    Table,
)
from features.tables import Tables

BUYER_WINDOWS = (7, 14, 30, 90)  # days: distinct buyers of a product in each
ADOPTER_WINDOWS = (30, 90)  # days: customers who bought a product for the first time in each
COUNTRY_WINDOW = 90  # days: distinct buyers of a product per country
PRODUCT_SIGNALS = (
    "first_age", "last_age", "price", *(f"buyers_{d}" for d in BUYER_WINDOWS), "buyers_all", "trend",
    *(f"adopters_{d}" for d in ADOPTER_WINDOWS), *(f"adopter_share_{d}" for d in ADOPTER_WINDOWS),
)
CUSTOMER_SIGNALS = ("last_age", "first_age", "price", "products", "orders", "last_order_products")

_AGE = "(epoch_us($as_of) - epoch_us({t})) / 86400000000.0"
_LINES = f"""lines AS (
    SELECT {CUSTOMER_ID}, {PRODUCT_ID}, {ORDER_ID}, {ORDERED_AT} AS t, {UNIT_PRICE} AS p
    FROM {Table.ORDERS.value} WHERE {ORDERED_AT} < $as_of AND {QUANTITY} > 0)"""


def product_signals(tables: Tables, as_of: datetime, product_ids: pd.Index) -> pd.DataFrame:
    """One row per product of ``product_ids`` (in that order), columns :data:`PRODUCT_SIGNALS`:
    age of its first and last sale, median price paid, distinct buyers over the last 7 to 90 days
    and ever, ``trend`` (buyers in the last 30 days over a third of those in the last 90, smoothed
    by one), customers who bought it for the first time in the last 30 and 90 days and their share
    of its buyers in those days."""
    buyers = ", ".join(f"count(DISTINCT {CUSTOMER_ID}) FILTER (WHERE t >= $as_of - to_days({d}))"
                       f" AS buyers_{d}" for d in BUYER_WINDOWS)
    adopters = ", ".join(f"count(*) FILTER (WHERE first_t >= $as_of - to_days({d})) AS adopters_{d}"
                         for d in ADOPTER_WINDOWS)
    frame = tables.con.sql(f"""
        WITH {_LINES},
        firsts AS (SELECT {PRODUCT_ID}, min(t) AS first_t FROM lines GROUP BY {CUSTOMER_ID}, {PRODUCT_ID}),
        adoption AS (SELECT {PRODUCT_ID}, {adopters} FROM firsts GROUP BY ALL),
        sales AS (SELECT {PRODUCT_ID}, {_AGE.format(t="min(t)")} AS first_age,
                         {_AGE.format(t="max(t)")} AS last_age, median(p) AS price, {buyers},
                         count(DISTINCT {CUSTOMER_ID}) AS buyers_all
                  FROM lines GROUP BY ALL)
        SELECT * FROM sales JOIN adoption USING ({PRODUCT_ID})""", params={"as_of": as_of})
    frame = frame.df().set_index(PRODUCT_ID)
    out = frame.reindex(pd.Index(product_ids, name=PRODUCT_ID))
    counts = [c for c in out if c.startswith(("buyers_", "adopters_"))]
    out[counts] = out[counts].fillna(0).astype(np.float64)
    out["trend"] = (out["buyers_30"] + 1) / (out["buyers_90"] / 3 + 1)
    for d in ADOPTER_WINDOWS:
        out[f"adopter_share_{d}"] = out[f"adopters_{d}"] / np.maximum(out[f"buyers_{d}"], 1)
    return out[list(PRODUCT_SIGNALS)].astype(np.float64)


def customer_signals(tables: Tables, as_of: datetime, customer_ids: pd.Index) -> pd.DataFrame:
    """One row per customer of ``customer_ids`` (in that order), columns :data:`CUSTOMER_SIGNALS`:
    age of their last and first purchase, median price paid, distinct products, orders, and
    products in their last order (every line at their latest purchase time)."""
    frame = tables.con.sql(f"""
        WITH {_LINES}
        SELECT {CUSTOMER_ID}, {_AGE.format(t="max(t)")} AS last_age, {_AGE.format(t="min(t)")} AS first_age,
               median(p) AS price, count(DISTINCT {PRODUCT_ID}) AS products,
               count(DISTINCT {ORDER_ID}) AS orders,
               count(DISTINCT {PRODUCT_ID}) FILTER (WHERE t = last_t) AS last_order_products
        FROM (SELECT *, max(t) OVER (PARTITION BY {CUSTOMER_ID}) AS last_t FROM lines)
        GROUP BY ALL""", params={"as_of": as_of}).df().set_index(CUSTOMER_ID)
    out = frame.reindex(pd.Index(customer_ids, name=CUSTOMER_ID))
    counts = ["products", "orders", "last_order_products"]
    out[counts] = out[counts].fillna(0)
    return out[list(CUSTOMER_SIGNALS)].astype(np.float64)


def last_order_pairs(tables: Tables, as_of: datetime) -> pd.DataFrame:
    """Distinct ``(customer_id, product_id)`` of each customer's last order (every line at their
    latest purchase time before ``as_of``)."""
    return tables.con.sql(f"""
        WITH {_LINES}
        SELECT DISTINCT {CUSTOMER_ID}, {PRODUCT_ID}
        FROM (SELECT *, max(t) OVER (PARTITION BY {CUSTOMER_ID}) AS last_t FROM lines) WHERE t = last_t
        ORDER BY ALL""", params={"as_of": as_of}).df()


def country_buyers(tables: Tables, as_of: datetime, days: int = COUNTRY_WINDOW) -> pd.DataFrame:
    """``country, product_id, buyers``: distinct buyers of each product per customer country over
    the last ``days`` (customers without a country are left out)."""
    return tables.con.sql(f"""
        WITH {_LINES}
        SELECT c.{COUNTRY}, l.{PRODUCT_ID}, count(DISTINCT l.{CUSTOMER_ID}) AS buyers
        FROM lines l JOIN {Table.CUSTOMERS.value} c USING ({CUSTOMER_ID})
        WHERE l.t >= $as_of - to_days({int(days)}) AND c.{COUNTRY} IS NOT NULL
        GROUP BY ALL ORDER BY ALL""", params={"as_of": as_of}).df()


def customer_countries(tables: Tables, customer_ids: pd.Index) -> pd.Series:
    """The country of each customer of ``customer_ids`` (None where unknown)."""
    frame = tables.con.sql(f"SELECT {CUSTOMER_ID}, any_value({COUNTRY}) AS {COUNTRY} "
                           f"FROM {Table.CUSTOMERS.value} GROUP BY ALL").df()
    return frame.set_index(CUSTOMER_ID)[COUNTRY].reindex(pd.Index(customer_ids, name=CUSTOMER_ID))
