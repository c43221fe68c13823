"""A slow, obvious pandas twin of :func:`features.build.build_features`.

It exists to be compared with: the tests hold the DuckDB builder to it on generated data, and the
feature benchmark times it as the naive baseline. It favours plainness over speed.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from features.build import to_timestamp
from features.config import FeatureConfig
from features.rfm import segment_for
from features.schema import (
    AS_OF,
    ATTRIBUTE,
    CATEGORY,
    CHANGED_AT,
    COUNTRY,
    CUSTOMER_ID,
    EMAIL_CONSENT,
    EVENT_TYPE,
    FALSE_TEXT,
    OCCURRED_AT,
    ORDER_ID,
    ORDERED_AT,
    PRICE,
    PRODUCT_ID,
    QUANTITY,
    SIGNUP_AT,
    TRUE_TEXT,
    UNIT_PRICE,
    VALUE,
    EventType,
)

DAY = pd.Timedelta(days=1)


def _days(delta: pd.Series) -> pd.Series:
    return delta / DAY


def _score(values: pd.Series, descending: bool) -> pd.Series:
    ranks = (-values if descending else values).rank(method="min")
    n = len(values)
    pr = (ranks - 1) / (n - 1) if n > 1 else ranks * 0.0
    return np.minimum(5, 1 + np.floor(5 * pr)).astype("Int64")


def reference_features(
    orders: pd.DataFrame,
    customers: pd.DataFrame,
    events: pd.DataFrame,
    products: pd.DataFrame,
    as_of: object,
    config: FeatureConfig | None = None,
    customer_changes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    cfg = config or FeatureConfig()
    as_of = pd.Timestamp(to_timestamp(as_of))
    lines = orders[orders[ORDERED_AT] < as_of].copy()
    ev = events[events[OCCURRED_AT] < as_of].copy()

    first_seen = pd.concat([
        customers.loc[customers[SIGNUP_AT] < as_of, [CUSTOMER_ID, SIGNUP_AT]].set_axis([CUSTOMER_ID, "t"], axis=1),
        lines[[CUSTOMER_ID, ORDERED_AT]].set_axis([CUSTOMER_ID, "t"], axis=1),
        ev[[CUSTOMER_ID, OCCURRED_AT]].set_axis([CUSTOMER_ID, "t"], axis=1),
    ]).groupby(CUSTOMER_ID)["t"].min()
    out = pd.DataFrame(index=first_seen.index.rename(CUSTOMER_ID))
    out[AS_OF] = as_of
    # Attributes as they were at the as_of: each one's latest change before it (never today's value in
    # the customers table). No change on record: unknown.
    changes = customer_changes if customer_changes is not None else pd.DataFrame(
        columns=[CUSTOMER_ID, CHANGED_AT, ATTRIBUTE, VALUE])
    known = changes[changes[CHANGED_AT] < as_of].sort_values(CHANGED_AT, kind="stable")
    latest = known.drop_duplicates([CUSTOMER_ID, ATTRIBUTE], keep="last").set_index([CUSTOMER_ID, ATTRIBUTE])[VALUE]
    latest = latest if len(latest) else None

    def attribute(name: str) -> pd.Series:
        if latest is None or name not in latest.index.get_level_values(ATTRIBUTE):
            return pd.Series(None, index=out.index, dtype=object)
        return latest.xs(name, level=ATTRIBUTE).reindex(out.index).astype(object)

    out[COUNTRY] = attribute(COUNTRY)
    consent = attribute(EMAIL_CONSENT).map(lambda v: None if not isinstance(v, str) else
                                           True if v.lower() in TRUE_TEXT else False if v.lower() in FALSE_TEXT else None)
    out[EMAIL_CONSENT] = consent.astype("boolean")
    out["tenure_days"] = _days(as_of - first_seen)

    # Orders: an order is the set of an order id's lines with positive quantity.
    lines["value"] = lines[QUANTITY] * lines[UNIT_PRICE]
    bought = lines[lines[QUANTITY] > 0]
    purchases = bought.groupby([CUSTOMER_ID, ORDER_ID]).agg(
        at=(ORDERED_AT, "min"), value=("value", "sum"), items=(QUANTITY, "sum")).reset_index()
    by_customer = purchases.groupby(CUSTOMER_ID)
    last_order = by_customer["at"].max().reindex(out.index)
    first_order = by_customer["at"].min().reindex(out.index)
    out["recency_days"] = _days(as_of - last_order)
    out["days_since_first_order"] = _days(as_of - first_order)
    out["orders_count"] = by_customer.size().reindex(out.index).fillna(0).astype(int)
    revenue = by_customer["value"].sum().reindex(out.index)
    out["revenue"] = revenue.fillna(0.0)
    for d in cfg.order_windows_days:
        recent = purchases[purchases["at"] >= as_of - d * DAY].groupby(CUSTOMER_ID)
        out[f"orders_{d}d"] = recent.size().reindex(out.index).fillna(0).astype(int)
        out[f"revenue_{d}d"] = recent["value"].sum().reindex(out.index).fillna(0.0)
    out["avg_order_value"] = revenue / out["orders_count"].where(out["orders_count"] > 0)
    out["items_per_order"] = by_customer["items"].sum().reindex(out.index) / out["orders_count"].where(
        out["orders_count"] > 0)
    per_product = bought.groupby(CUSTOMER_ID)
    out["distinct_products"] = per_product[PRODUCT_ID].nunique().reindex(out.index).fillna(0).astype(int)
    out["avg_unit_price"] = (per_product["value"].sum() / per_product[QUANTITY].sum()).reindex(out.index)

    gaps = purchases.sort_values("at").groupby(CUSTOMER_ID)["at"].diff().dropna()
    gap_days = _days(gaps).groupby(purchases.loc[gaps.index, CUSTOMER_ID])
    out["ipi_mean_days"] = gap_days.mean().reindex(out.index)
    out["ipi_std_days"] = gap_days.std().reindex(out.index)
    out["overdue_days"] = out["recency_days"] - out["ipi_mean_days"]
    out["overdue_ratio"] = out["recency_days"] / out["ipi_mean_days"].where(out["ipi_mean_days"] > 0)

    returned = lines[lines[QUANTITY] < 0].groupby(CUSTOMER_ID)
    out["returns_count"] = returned[ORDER_ID].nunique().reindex(out.index).fillna(0).astype(int)
    out["returned_value"] = (-returned["value"].sum()).reindex(out.index).fillna(0.0)
    out["return_rate"] = out["returned_value"] / revenue.where(revenue > 0)

    with_cat = bought.merge(products[[PRODUCT_ID, CATEGORY]], on=PRODUCT_ID).dropna(subset=[CATEGORY])
    cat_value = with_cat.groupby([CUSTOMER_ID, CATEGORY])["value"].sum().reset_index()
    cat_value = cat_value.sort_values([CUSTOMER_ID, "value", CATEGORY], ascending=[True, False, True])
    top = cat_value.groupby(CUSTOMER_ID).first()
    total = cat_value.groupby(CUSTOMER_ID)["value"].sum()
    out["top_category"] = top[CATEGORY].reindex(out.index)
    out["top_category_share"] = (top["value"] / total.where(total > 0)).reindex(out.index)
    out["categories_count"] = cat_value.groupby(CUSTOMER_ID).size().reindex(out.index).fillna(0).astype(int)

    def count_events(kind: EventType, days: int) -> pd.Series:
        mask = (ev[EVENT_TYPE] == kind.value) & (ev[OCCURRED_AT] >= as_of - days * DAY)
        return ev[mask].groupby(CUSTOMER_ID).size().reindex(out.index).fillna(0).astype(int)

    for d in cfg.email_windows_days:
        out[f"emails_sent_{d}d"] = count_events(EventType.EMAIL_SENT, d)
        out[f"email_opens_{d}d"] = count_events(EventType.EMAIL_OPEN, d)
        out[f"email_clicks_{d}d"] = count_events(EventType.EMAIL_CLICK, d)
    for d in cfg.browse_windows_days:
        out[f"views_{d}d"] = count_events(EventType.PRODUCT_VIEW, d)
        out[f"cart_adds_{d}d"] = count_events(EventType.ADD_TO_CART, d)
        out[f"checkouts_{d}d"] = count_events(EventType.CHECKOUT_START, d)

    def last_event(kind: EventType) -> pd.Series:
        return ev[ev[EVENT_TYPE] == kind.value].groupby(CUSTOMER_ID)[OCCURRED_AT].max().reindex(out.index)

    out["days_since_last_open"] = _days(as_of - last_event(EventType.EMAIL_OPEN))
    out["days_since_last_click"] = _days(as_of - last_event(EventType.EMAIL_CLICK))
    out["unsubscribed"] = last_event(EventType.UNSUBSCRIBE).notna()

    # Abandoned cart: products added to cart in the longest cart window after the last order.
    window = max(cfg.abandoned_cart_days)
    carts = ev[(ev[EVENT_TYPE] == EventType.ADD_TO_CART.value) & (ev[OCCURRED_AT] >= as_of - window * DAY)]
    carts = carts.merge(last_order.rename("last_order").reset_index(), on=CUSTOMER_ID, how="left")
    carts = carts[carts["last_order"].isna() | (carts[OCCURRED_AT] > carts["last_order"])]
    last_abandoned = carts.groupby(CUSTOMER_ID)[OCCURRED_AT].max().reindex(out.index)
    for d in cfg.abandoned_cart_days:
        out[f"cart_abandoned_{d}d"] = (last_abandoned >= as_of - d * DAY).fillna(False).astype(bool)
    carted = carts[[CUSTOMER_ID, PRODUCT_ID]].drop_duplicates().merge(
        products[[PRODUCT_ID, PRICE]], on=PRODUCT_ID, how="left")
    out["abandoned_cart_value"] = carted.groupby(CUSTOMER_ID)[PRICE].sum().reindex(out.index).fillna(0.0)

    w, iw = cfg.intent_weights, cfg.intent_window_days
    intent_orders = purchases[purchases["at"] >= as_of - iw * DAY].groupby(CUSTOMER_ID).size()
    out["intent_score"] = (
        w.view * count_events(EventType.PRODUCT_VIEW, iw)
        + w.add_to_cart * count_events(EventType.ADD_TO_CART, iw)
        + w.purchase * intent_orders.reindex(out.index).fillna(0)
    ).astype(float)

    for d in cfg.email_windows_days:
        sent = out[f"emails_sent_{d}d"].where(out[f"emails_sent_{d}d"] > 0)
        out[f"open_rate_{d}d"] = (out[f"email_opens_{d}d"] / sent).clip(upper=1)
        out[f"click_rate_{d}d"] = (out[f"email_clicks_{d}d"] / sent).clip(upper=1)

    buyers = out[out["orders_count"] > 0]
    r = _score(buyers["recency_days"], descending=True)
    f = _score(buyers["orders_count"], descending=False)
    m = _score(buyers["revenue"].round(6), descending=False)  # sums in another order differ in the last bit
    out["rfm_recency"] = r.reindex(out.index)
    out["rfm_frequency"] = f.reindex(out.index)
    out["rfm_monetary"] = m.reindex(out.index)
    out["rfm_segment"] = pd.Series(
        [segment_for(int(r[c]), math.ceil((f[c] + m[c]) / 2), int(buyers.at[c, "orders_count"]))
         for c in buyers.index], index=buyers.index, dtype=object).reindex(out.index)

    life = cfg.lifecycle
    population_gap = out["ipi_mean_days"].median()
    fallback = life.default_gap_days if pd.isna(population_gap) else population_gap
    expected_gap = out["ipi_mean_days"].fillna(fallback).clip(life.min_gap_days, life.max_gap_days)
    stage = pd.Series("active", index=out.index, dtype=object)
    stage[out["orders_count"] >= life.loyal_min_orders] = "loyal"
    stage[out["recency_days"] > life.at_risk_factor * expected_gap] = "at-risk"
    stage[out["recency_days"] > life.lapsed_factor * expected_gap] = "lapsed"
    stage[out["days_since_first_order"] <= life.new_days] = "new"
    stage[out["orders_count"] == 0] = "prospect"
    out["lifecycle_stage"] = stage
    return out.reset_index().sort_values(CUSTOMER_ID, ignore_index=True)
