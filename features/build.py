"""Point-in-time customer features, computed in DuckDB.

``build_features(tables, as_of)`` returns one row per customer known before ``as_of`` (signed up,
ordered or had an event strictly before it) and reads no row at or after ``as_of``. Definitions are
in the README ("Customer features"); :mod:`features._reference` is a slow pandas twin that the tests
hold this module to.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from features.config import FeatureConfig
from features.rfm import score_sql, segment_sql
from features.schema import (
    AS_OF,
    CATEGORY,
    COUNTRY,
    CUSTOMER_ID,
    EMAIL_CONSENT,
    EVENT_TYPE,
    OCCURRED_AT,
    ORDER_ID,
    ORDERED_AT,
    PRICE,
    PRODUCT_ID,
    QUANTITY,
    SIGNUP_AT,
    UNIT_PRICE,
    EventType,
)
from features.tables import Tables

DAY_US = 86_400_000_000


def _days_before(ts: str) -> str:
    """Fractional days from ``ts`` to the as_of."""
    return f"(epoch_us($as_of) - epoch_us({ts})) / {DAY_US}.0"


def _since(days: int, ts: str) -> str:
    return f"{ts} >= $as_of - to_days({int(days)})"


def _count_events(kind: EventType, days: int) -> str:
    return f"count(*) FILTER (WHERE {EVENT_TYPE} = '{kind.value}' AND {_since(days, OCCURRED_AT)})"


def feature_sql(config: FeatureConfig) -> str:
    """The feature query; it takes one parameter, ``$as_of``."""
    cfg, life = config, config.lifecycle
    order_windows = ",\n".join(
        f"count(*) FILTER (WHERE {_since(d, ORDERED_AT)}) AS orders_{d}d, "
        f"coalesce(sum(value) FILTER (WHERE {_since(d, ORDERED_AT)}), 0) AS revenue_{d}d"
        for d in cfg.order_windows_days
    )
    email = []
    for d in cfg.email_windows_days:
        email += [
            f"{_count_events(EventType.EMAIL_SENT, d)} AS emails_sent_{d}d",
            f"{_count_events(EventType.EMAIL_OPEN, d)} AS email_opens_{d}d",
            f"{_count_events(EventType.EMAIL_CLICK, d)} AS email_clicks_{d}d",
        ]
    browse = []
    for d in cfg.browse_windows_days:
        browse += [
            f"{_count_events(EventType.PRODUCT_VIEW, d)} AS views_{d}d",
            f"{_count_events(EventType.ADD_TO_CART, d)} AS cart_adds_{d}d",
            f"{_count_events(EventType.CHECKOUT_START, d)} AS checkouts_{d}d",
        ]
    iw = cfg.intent_window_days
    event_cols = ",\n".join(
        email
        + browse
        + [
            f"{_count_events(EventType.PRODUCT_VIEW, iw)} AS _intent_views",
            f"{_count_events(EventType.ADD_TO_CART, iw)} AS _intent_carts",
            f"max({OCCURRED_AT}) FILTER (WHERE {EVENT_TYPE} = '{EventType.EMAIL_OPEN.value}') AS _last_open_at",
            f"max({OCCURRED_AT}) FILTER (WHERE {EVENT_TYPE} = '{EventType.EMAIL_CLICK.value}') AS _last_click_at",
            f"bool_or({EVENT_TYPE} = '{EventType.UNSUBSCRIBE.value}') AS _unsubscribed",
        ]
    )
    rate_cols = []
    for d in cfg.email_windows_days:
        rate_cols += [
            f"CASE WHEN emails_sent_{d}d > 0 THEN least(1, email_opens_{d}d / emails_sent_{d}d) END AS open_rate_{d}d",
            f"CASE WHEN emails_sent_{d}d > 0 THEN least(1, email_clicks_{d}d / emails_sent_{d}d) END AS click_rate_{d}d",
        ]
    event_zero = [f"coalesce(e.{c.split(' AS ')[-1]}, 0) AS {c.split(' AS ')[-1]}" for c in email + browse]
    order_zero = [
        f"coalesce(o.{n}_{d}d, 0) AS {n}_{d}d" for d in cfg.order_windows_days for n in ("orders", "revenue")
    ]
    max_cart = max(cfg.abandoned_cart_days)
    cart_flags = [
        f"coalesce(cart._last_abandoned_at >= $as_of - to_days({d}), false) AS cart_abandoned_{d}d"
        for d in cfg.abandoned_cart_days
    ]
    w = cfg.intent_weights
    expected_gap = (
        f"greatest({life.min_gap_days}, least({life.max_gap_days}, "
        f"coalesce(ipi_mean_days, (SELECT median(ipi_mean_days) FROM base), {life.default_gap_days})))"
    )
    return f"""
WITH
lines AS (
  SELECT {CUSTOMER_ID}, {ORDER_ID}, {PRODUCT_ID}, {QUANTITY}, {UNIT_PRICE}, {ORDERED_AT}
  FROM orders WHERE {ORDERED_AT} < $as_of),
purchases AS (
  SELECT {CUSTOMER_ID}, {ORDER_ID}, min({ORDERED_AT}) AS {ORDERED_AT},
         sum({QUANTITY} * {UNIT_PRICE}) AS value, sum({QUANTITY}) AS items
  FROM lines WHERE {QUANTITY} > 0 GROUP BY ALL),
order_agg AS (
  SELECT {CUSTOMER_ID}, count(*) AS orders_count, sum(value) AS revenue, sum(items) AS items,
         min({ORDERED_AT}) AS _first_order_at, max({ORDERED_AT}) AS _last_order_at,
         {order_windows},
         count(*) FILTER (WHERE {_since(iw, ORDERED_AT)}) AS _intent_orders
  FROM purchases GROUP BY ALL),
gaps AS (
  SELECT {CUSTOMER_ID},
         (epoch_us({ORDERED_AT}) - epoch_us(lag({ORDERED_AT}) OVER (
            PARTITION BY {CUSTOMER_ID} ORDER BY {ORDERED_AT}))) / {DAY_US}.0 AS gap
  FROM purchases),
ipi AS (
  SELECT {CUSTOMER_ID}, avg(gap) AS ipi_mean_days, stddev_samp(gap) AS ipi_std_days
  FROM gaps WHERE gap IS NOT NULL GROUP BY ALL),
returns AS (
  SELECT {CUSTOMER_ID}, count(DISTINCT {ORDER_ID}) AS returns_count,
         sum(-{QUANTITY} * {UNIT_PRICE}) AS returned_value
  FROM lines WHERE {QUANTITY} < 0 GROUP BY ALL),
basket AS (
  SELECT {CUSTOMER_ID}, count(DISTINCT {PRODUCT_ID}) AS distinct_products,
         sum({QUANTITY} * {UNIT_PRICE}) / sum({QUANTITY}) AS avg_unit_price
  FROM lines WHERE {QUANTITY} > 0 GROUP BY ALL),
category_value AS (
  SELECT l.{CUSTOMER_ID}, p.{CATEGORY}, sum(l.{QUANTITY} * l.{UNIT_PRICE}) AS value
  FROM lines l JOIN products p ON l.{PRODUCT_ID} = p.{PRODUCT_ID}
  WHERE l.{QUANTITY} > 0 AND p.{CATEGORY} IS NOT NULL GROUP BY ALL),
category_ranked AS (
  SELECT *, row_number() OVER (PARTITION BY {CUSTOMER_ID} ORDER BY value DESC, {CATEGORY}) AS rn,
         sum(value) OVER (PARTITION BY {CUSTOMER_ID}) AS total,
         count(*) OVER (PARTITION BY {CUSTOMER_ID}) AS n
  FROM category_value),
categories AS (
  SELECT {CUSTOMER_ID}, {CATEGORY} AS top_category,
         CASE WHEN total > 0 THEN value / total END AS top_category_share, n AS categories_count
  FROM category_ranked WHERE rn = 1),
ev AS (SELECT {CUSTOMER_ID}, {EVENT_TYPE}, {PRODUCT_ID}, {OCCURRED_AT} FROM events WHERE {OCCURRED_AT} < $as_of),
event_agg AS (SELECT {CUSTOMER_ID}, {event_cols} FROM ev GROUP BY ALL),
abandoned AS (
  SELECT DISTINCT e.{CUSTOMER_ID}, e.{PRODUCT_ID}, max(e.{OCCURRED_AT}) OVER (PARTITION BY e.{CUSTOMER_ID}) AS at
  FROM ev e LEFT JOIN order_agg o ON e.{CUSTOMER_ID} = o.{CUSTOMER_ID}
  WHERE e.{EVENT_TYPE} = '{EventType.ADD_TO_CART.value}' AND {_since(max_cart, "e." + OCCURRED_AT)}
    AND (o._last_order_at IS NULL OR e.{OCCURRED_AT} > o._last_order_at)),
cart AS (
  SELECT a.{CUSTOMER_ID}, max(a.at) AS _last_abandoned_at, coalesce(sum(p.{PRICE}), 0) AS abandoned_cart_value
  FROM abandoned a LEFT JOIN products p ON a.{PRODUCT_ID} = p.{PRODUCT_ID} GROUP BY ALL),
known AS (
  SELECT {CUSTOMER_ID}, min(t) AS _first_seen_at FROM (
    SELECT {CUSTOMER_ID}, {SIGNUP_AT} AS t FROM customers WHERE {SIGNUP_AT} < $as_of
    UNION ALL SELECT {CUSTOMER_ID}, {ORDERED_AT} FROM lines
    UNION ALL SELECT {CUSTOMER_ID}, {OCCURRED_AT} FROM ev) GROUP BY ALL),
base AS (
  SELECT k.{CUSTOMER_ID},
    CAST($as_of AS TIMESTAMP) AS {AS_OF},
    c.{COUNTRY}, c.{EMAIL_CONSENT},
    {_days_before("k._first_seen_at")} AS tenure_days,
    {_days_before("o._last_order_at")} AS recency_days,
    {_days_before("o._first_order_at")} AS days_since_first_order,
    coalesce(o.orders_count, 0) AS orders_count,
    coalesce(o.revenue, 0) AS revenue,
    {", ".join(order_zero)},
    o.revenue / o.orders_count AS avg_order_value,
    o.items / o.orders_count AS items_per_order,
    coalesce(b.distinct_products, 0) AS distinct_products,
    b.avg_unit_price,
    i.ipi_mean_days, i.ipi_std_days,
    {_days_before("o._last_order_at")} - i.ipi_mean_days AS overdue_days,
    CASE WHEN i.ipi_mean_days > 0 THEN {_days_before("o._last_order_at")} / i.ipi_mean_days END AS overdue_ratio,
    coalesce(r.returns_count, 0) AS returns_count,
    coalesce(r.returned_value, 0) AS returned_value,
    CASE WHEN o.revenue > 0 THEN coalesce(r.returned_value, 0) / o.revenue END AS return_rate,
    cat.top_category, cat.top_category_share, coalesce(cat.categories_count, 0) AS categories_count,
    {", ".join(event_zero)},
    {_days_before("e._last_open_at")} AS days_since_last_open,
    {_days_before("e._last_click_at")} AS days_since_last_click,
    coalesce(e._unsubscribed, false) AS unsubscribed,
    {", ".join(cart_flags)},
    coalesce(cart.abandoned_cart_value, 0) AS abandoned_cart_value,
    {w.view} * coalesce(e._intent_views, 0) + {w.add_to_cart} * coalesce(e._intent_carts, 0)
      + {w.purchase} * coalesce(o._intent_orders, 0) AS intent_score
  FROM known k
  LEFT JOIN customers c ON k.{CUSTOMER_ID} = c.{CUSTOMER_ID}
  LEFT JOIN order_agg o ON k.{CUSTOMER_ID} = o.{CUSTOMER_ID}
  LEFT JOIN ipi i ON k.{CUSTOMER_ID} = i.{CUSTOMER_ID}
  LEFT JOIN returns r ON k.{CUSTOMER_ID} = r.{CUSTOMER_ID}
  LEFT JOIN basket b ON k.{CUSTOMER_ID} = b.{CUSTOMER_ID}
  LEFT JOIN categories cat ON k.{CUSTOMER_ID} = cat.{CUSTOMER_ID}
  LEFT JOIN event_agg e ON k.{CUSTOMER_ID} = e.{CUSTOMER_ID}
  LEFT JOIN cart ON k.{CUSTOMER_ID} = cart.{CUSTOMER_ID}),
with_rates AS (SELECT *, {", ".join(rate_cols)} FROM base),
rfm AS (
  SELECT {CUSTOMER_ID},
    {score_sql("recency_days", descending=True)} AS rfm_recency,
    {score_sql("orders_count", descending=False)} AS rfm_frequency,
    {score_sql("round(revenue, 6)", descending=False)} AS rfm_monetary
  FROM base WHERE orders_count > 0)
SELECT w.*, rfm.rfm_recency, rfm.rfm_frequency, rfm.rfm_monetary,
  {segment_sql("rfm.rfm_recency", "CAST(ceil((rfm.rfm_frequency + rfm.rfm_monetary) / 2.0) AS INTEGER)", "w.orders_count")} AS rfm_segment,
  CASE WHEN w.orders_count = 0 THEN 'prospect'
       WHEN w.days_since_first_order <= {life.new_days} THEN 'new'
       WHEN w.recency_days > {life.lapsed_factor} * {expected_gap} THEN 'lapsed'
       WHEN w.recency_days > {life.at_risk_factor} * {expected_gap} THEN 'at-risk'
       WHEN w.orders_count >= {life.loyal_min_orders} THEN 'loyal'
       ELSE 'active' END AS lifecycle_stage
FROM with_rates w LEFT JOIN rfm ON w.{CUSTOMER_ID} = rfm.{CUSTOMER_ID}
ORDER BY w.{CUSTOMER_ID}
"""


def build_features(tables: Tables, as_of: datetime | str | pd.Timestamp,
                   config: FeatureConfig | None = None) -> pd.DataFrame:
    """One row of features per customer known before ``as_of``, from rows strictly before it."""
    sql = feature_sql(config or FeatureConfig())
    return tables.con.execute(sql, {"as_of": to_timestamp(as_of)}).df()


def to_timestamp(value: datetime | str | pd.Timestamp) -> datetime:
    """A naive-UTC ``datetime`` from a date string, datetime or Timestamp."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.to_pydatetime()
