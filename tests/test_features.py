"""Point-in-time features: hand-computed values, the reference twin, and no leakage from the future."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features._reference import reference_features
from features.build import build_features
from features.config import FeatureConfig, IntentWeights
from features.tables import Tables

AS_OF = "2024-02-01"


@pytest.fixture
def tiny(tiny_tables: Tables) -> pd.DataFrame:
    return build_features(tiny_tables, AS_OF).set_index("customer_id")


def test_only_customers_known_before_as_of_get_a_row(tiny: pd.DataFrame) -> None:
    assert list(tiny.index) == ["a", "b", "c"]  # d signs up after the as_of


def test_order_features_by_hand(tiny: pd.DataFrame) -> None:
    a = tiny.loc["a"]
    assert a["recency_days"] == 21 and a["days_since_first_order"] == 31 and a["tenure_days"] == 62
    assert a["orders_count"] == 2 and a["revenue"] == 35  # the return is not an order and not revenue
    assert (a["orders_30d"], a["revenue_30d"], a["orders_90d"], a["revenue_90d"]) == (1, 10, 2, 35)
    assert a["avg_order_value"] == 17.5 and a["items_per_order"] == 2 and a["avg_unit_price"] == 8.75
    assert a["ipi_mean_days"] == 10 and np.isnan(a["ipi_std_days"])
    assert a["overdue_days"] == 11 and a["overdue_ratio"] == pytest.approx(2.1)
    assert (a["returns_count"], a["returned_value"]) == (1, 10)
    assert a["return_rate"] == pytest.approx(10 / 35)
    assert a["top_category"] == "kitchen" and a["top_category_share"] == pytest.approx(30 / 35)
    assert a["categories_count"] == 2 and a["distinct_products"] == 2


def test_email_and_browsing_features_by_hand(tiny: pd.DataFrame) -> None:
    a, b, c = tiny.loc["a"], tiny.loc["b"], tiny.loc["c"]
    assert (a["emails_sent_7d"], a["email_opens_7d"], a["open_rate_7d"], a["click_rate_7d"]) == (1, 1, 1.0, 0.0)
    assert a["days_since_last_open"] == 6 and np.isnan(a["days_since_last_click"])
    assert np.isnan(b["open_rate_30d"])  # no email sent: no rate
    assert not a["unsubscribed"]
    assert (b["cart_adds_7d"], bool(b["cart_abandoned_1d"]), bool(b["cart_abandoned_7d"])) == (1, False, True)
    assert b["abandoned_cart_value"] == 5
    assert (c["views_1d"], c["cart_adds_1d"], bool(c["cart_abandoned_1d"]), c["abandoned_cart_value"]) == (1, 1, True, 10)
    assert not a["cart_abandoned_7d"]
    # intent: 3 per view, 5 per cart add, 10 per order in the last 30 days
    assert (a["intent_score"], b["intent_score"], c["intent_score"]) == (10, 15, 8)


def test_attributes_are_read_as_of_the_as_of_from_their_history(tiny: pd.DataFrame) -> None:
    """conftest's history: a in the UK with consent since Dec 1 (France from Feb 1 00:00, the as_of: not
    seen); b granted consent on Jan 20 and withdrew it on Jan 25 (granted again after the as_of), in
    Germany since Jan 20; c has no history, so today's France and consent are unknown at Feb 1."""
    a, b, c = tiny.loc["a"], tiny.loc["b"], tiny.loc["c"]
    assert (a["country"], bool(a["email_consent"])) == ("United Kingdom", True)
    assert (b["country"], bool(b["email_consent"])) == ("Germany", False)
    assert pd.isna(c["country"]) and pd.isna(c["email_consent"])


def test_todays_customer_attributes_change_no_past_feature(tiny_frames: dict[str, pd.DataFrame]) -> None:
    """The leak of issue 14: the same history gave other features at a past as_of depending only on
    today's customers export (country and email_consent were joined from it)."""
    today = {k: v for k, v in tiny_frames.items() if k != "customer_changes"}
    flipped = today["customers"].assign(country=["Peru", "Chile", "Japan", "Fiji"],
                                        email_consent=[False, False, False, False])
    before = build_features(Tables.from_frames(**today), AS_OF)
    after = build_features(Tables.from_frames(**(today | {"customers": flipped})), AS_OF)
    pd.testing.assert_frame_equal(before, after)


def test_rfm_and_lifecycle_by_hand(tiny: pd.DataFrame) -> None:
    a, b, c = tiny.loc["a"], tiny.loc["b"], tiny.loc["c"]
    assert (a["rfm_recency"], a["rfm_frequency"], a["rfm_monetary"]) == (1, 5, 5)
    assert (b["rfm_recency"], b["rfm_frequency"], b["rfm_monetary"]) == (5, 1, 1)
    assert (a["rfm_segment"], b["rfm_segment"]) == ("Can't Lose", "New")
    assert pd.isna(c["rfm_segment"])
    # a: own gap 10 days, 21 days since the last order > 1.5 x 10 -> at-risk; b's first order 12 days ago
    assert (a["lifecycle_stage"], b["lifecycle_stage"], c["lifecycle_stage"]) == ("at-risk", "new", "prospect")


def test_a_row_at_the_as_of_itself_is_not_seen(tiny_tables: Tables) -> None:
    features = build_features(tiny_tables, "2024-01-11").set_index("customer_id")  # o2 is at 2024-01-11 00:00
    assert features.loc["a", "orders_count"] == 1
    assert features.loc["a", "recency_days"] == 10


def test_intent_weights_are_configurable(tiny_tables: Tables) -> None:
    config = FeatureConfig(intent_weights=IntentWeights(view=1, add_to_cart=0, purchase=0))
    features = build_features(tiny_tables, AS_OF, config).set_index("customer_id")
    assert list(features["intent_score"]) == [0, 0, 1]


def test_invalid_config_is_rejected_with_the_reason() -> None:
    with pytest.raises(ValueError, match="order_windows_days must be a non-empty list of positive day counts"):
        FeatureConfig(order_windows_days=(30, -1))


def assert_same_features(fast: pd.DataFrame, slow: pd.DataFrame) -> None:
    assert sorted(fast.columns) == sorted(slow.columns)
    slow = slow[fast.columns]
    assert list(fast["customer_id"]) == list(slow["customer_id"])
    for col in fast.columns:
        a, b = fast[col], slow[col]
        if pd.api.types.is_numeric_dtype(a) and not pd.api.types.is_bool_dtype(a):
            np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=1e-9, atol=1e-9, err_msg=col)
        else:
            left = a.astype(object).where(a.notna(), None).tolist()
            right = b.astype(object).where(b.notna(), None).tolist()
            assert left == right, col


@pytest.mark.parametrize("as_of", ["2024-12-01", "2025-06-15 12:00", "2025-12-31"])
def test_fast_builder_matches_the_reference_on_generated_data(demo_tables: Tables, as_of: str) -> None:
    fast = build_features(demo_tables, as_of)
    slow = reference(demo_tables, as_of)
    assert len(fast) > 100
    assert fast["email_consent"].notna().any() and fast["country"].notna().any()  # the demo has a history
    assert_same_features(fast, slow)


def reference(tables: Tables, as_of: object, config: FeatureConfig | None = None) -> pd.DataFrame:
    return reference_features(*(tables.frame(t) for t in ("orders", "customers", "events", "products")), as_of,
                              config, customer_changes=tables.frame("customer_changes"))


def test_reference_matches_on_the_hand_made_fixture(tiny_frames: dict[str, pd.DataFrame], tiny_tables: Tables) -> None:
    assert_same_features(build_features(tiny_tables, AS_OF), reference(tiny_tables, AS_OF))


# --- leakage ---------------------------------------------------------------------------------
LEAK_AS_OF = datetime(2024, 3, 1)
CUSTOMERS = ["c0", "c1", "c2", "c3"]
PRODUCTS = ["p0", "p1", "p2"]
EVENT_TYPES = ["product_view", "add_to_cart", "checkout_start", "email_sent", "email_open", "email_click", "unsubscribe"]


def moments(past: bool) -> st.SearchStrategy[datetime]:
    hours = st.integers(-24 * 120, -1) if past else st.integers(0, 24 * 120)
    return hours.map(lambda h: LEAK_AS_OF + timedelta(hours=h))


def order_rows(past: bool) -> st.SearchStrategy[list[dict]]:
    row = st.fixed_dictionaries({
        "order_id": st.sampled_from(["o1", "o2", "o3", "o4"]),
        "customer_id": st.sampled_from(CUSTOMERS),
        "product_id": st.sampled_from(PRODUCTS),
        "quantity": st.sampled_from([-2.0, -1.0, 1.0, 2.0, 5.0]),
        "unit_price": st.sampled_from([0.0, 1.5, 10.0]),
        "ordered_at": moments(past),
    })
    return st.lists(row, max_size=12)


def event_rows(past: bool) -> st.SearchStrategy[list[dict]]:
    row = st.fixed_dictionaries({
        "customer_id": st.sampled_from(CUSTOMERS),
        "event_type": st.sampled_from(EVENT_TYPES),
        "product_id": st.sampled_from([*PRODUCTS, None]),
        "occurred_at": moments(past),
    })
    return st.lists(row, max_size=15)


def future_customers() -> st.SearchStrategy[list[dict]]:
    row = st.fixed_dictionaries({
        "customer_id": st.sampled_from(["f0", "f1"]),
        "signup_at": moments(past=False),
        "country": st.sampled_from(["UK", "FR", None]),
        "email_consent": st.booleans(),
    })
    return st.lists(row, max_size=2, unique_by=lambda r: r["customer_id"])


def change_rows(past: bool) -> st.SearchStrategy[list[dict]]:
    """Attribute history; one value per customer, attribute and moment (the loader rejects two)."""
    row = st.fixed_dictionaries({
        "customer_id": st.sampled_from([*CUSTOMERS, "f0"]),
        "changed_at": moments(past),
        "attribute": st.sampled_from(["country", "email_consent"]),
        "value": st.sampled_from(["true", "false", "Yes", "0", "UK", "FR", None]),
    })
    return st.lists(row, max_size=10, unique_by=lambda r: (r["customer_id"], r["attribute"], r["changed_at"]))


def todays_attributes() -> st.SearchStrategy[list[dict]]:
    """Today's values in the customers table of the customers known before the as_of."""
    return st.tuples(*(st.fixed_dictionaries({
        "customer_id": st.just(c), "signup_at": st.just(LEAK_AS_OF - timedelta(days=200)),
        "country": st.sampled_from(["UK", "FR", None]), "email_consent": st.sampled_from([True, False, None]),
    }) for c in CUSTOMERS[:2])).map(list)


def tables_of(orders: list[dict], events: list[dict], customers: list[dict], changes: list[dict] = ()) -> Tables:
    products = pd.DataFrame({"product_id": PRODUCTS, "category": ["x", "y", None], "price": [1.0, 2.0, 3.0]})
    return Tables.from_frames(
        pd.DataFrame(orders, columns=["order_id", "customer_id", "product_id", "quantity", "unit_price", "ordered_at"]),
        pd.DataFrame(customers, columns=["customer_id", "signup_at", "country", "email_consent"]),
        pd.DataFrame(events, columns=["customer_id", "event_type", "product_id", "occurred_at"]),
        products,
        pd.DataFrame(list(changes), columns=["customer_id", "changed_at", "attribute", "value"]),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(past_orders=order_rows(past=True), past_events=event_rows(past=True), past_changes=change_rows(past=True),
       future_a=st.tuples(order_rows(False), event_rows(False), future_customers(), change_rows(False),
                          todays_attributes()),
       future_b=st.tuples(order_rows(False), event_rows(False), future_customers(), change_rows(False),
                          todays_attributes()))
def test_rows_at_or_after_as_of_change_no_feature(past_orders, past_events, past_changes, future_a, future_b) -> None:
    """Any two futures give identical features: rows added, removed or changed at or after the as_of in
    every timed source (orders, events, signups, attribute changes), and any values of today's
    attributes in the customers table."""
    built = []
    for orders, events, new_customers, changes, today in (future_a, future_b):
        tables = tables_of(past_orders + orders, past_events + events, today + new_customers, past_changes + changes)
        built.append(build_features(tables, LEAK_AS_OF))
    pd.testing.assert_frame_equal(*built)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(orders=order_rows(past=True), events=event_rows(past=True), changes=change_rows(past=True),
       today=todays_attributes())
def test_the_generated_sql_matches_the_reference_on_random_histories(orders, events, changes, today) -> None:
    tables = tables_of(orders, events, today, changes)
    fast = build_features(tables, LEAK_AS_OF)
    if len(fast):
        assert_same_features(fast, reference(tables, LEAK_AS_OF))
