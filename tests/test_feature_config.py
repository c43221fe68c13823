"""A non-default FeatureConfig: other windows give other columns, with values worked out by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from features._reference import reference_features
from features.build import build_features
from features.config import FeatureConfig, IntentWeights, LifecycleRules
from features.tables import Tables
from features.training_set import Target, build_training_set

AS_OF = "2024-02-01"
CONFIG = FeatureConfig(order_windows_days=(14, 21), email_windows_days=(10,), browse_windows_days=(2, 3),
                       abandoned_cart_days=(3,), intent_window_days=10,
                       intent_weights=IntentWeights(view=3, add_to_cart=5, purchase=10),
                       lifecycle=LifecycleRules(new_days=10, at_risk_factor=1.1, lapsed_factor=2.0))


@pytest.fixture
def built(tiny_tables: Tables) -> pd.DataFrame:
    return build_features(tiny_tables, AS_OF, CONFIG).set_index("customer_id")


def test_the_windows_name_the_columns(built: pd.DataFrame, tiny_tables: Tables) -> None:
    default = set(build_features(tiny_tables, AS_OF).columns)
    windowed = {"orders_14d", "revenue_14d", "orders_21d", "revenue_21d", "emails_sent_10d", "email_opens_10d",
                "email_clicks_10d", "open_rate_10d", "click_rate_10d", "views_2d", "cart_adds_2d", "checkouts_2d",
                "views_3d", "cart_adds_3d", "checkouts_3d", "cart_abandoned_3d"}
    gone = {"orders_30d", "revenue_90d", "orders_365d", "emails_sent_7d", "open_rate_90d", "views_1d",
            "checkouts_30d", "cart_abandoned_1d", "cart_abandoned_7d"}
    assert windowed <= set(built.columns) and not gone & set(built.columns)
    assert gone <= default and not windowed & default
    unwindowed = {c for c in default if not (c.endswith("d") and c[-2].isdigit())}  # not orders_30d and the like
    assert set(built.reset_index().columns) - windowed == unwindowed


def test_values_by_hand(built: pd.DataFrame) -> None:
    """As of Feb 1 (the fixture's story is in conftest.py):

    * orders: a's o1 (Jan 1, 25) and o2 (Jan 11 00:00, 10), b's o3 (Jan 20, 15). 14 days back is
      Jan 18: only b's; 21 days back is Jan 11 00:00, inclusive: a's o2 and b's.
    * email, 10 days back (Jan 22): a's send (Jan 25) and open (Jan 26): open rate 1.
    * browsing, 2 days back (Jan 30): c's view and cart add on Jan 31; 3 days back (Jan 29 00:00)
      also b's cart add on Jan 29. Abandoned carts within 3 days: b and c.
    * intent over 10 days (Jan 22 on): a nothing, b one cart add (5; its order on Jan 20 is out),
      c a view and a cart add (3 + 5).
    * lifecycle with new = 10 days, at-risk beyond 1.1 and lapsed beyond 2 expected gaps (a's own
      gap 10 days; b, with one order, gets the median gap, 10): a, 21 days since its last order, is
      lapsed (> 20); b, first order 12 days ago, is no longer new and at-risk (12 > 11).
    """
    a, b, c = built.loc["a"], built.loc["b"], built.loc["c"]
    assert (a["orders_14d"], a["revenue_14d"], a["orders_21d"], a["revenue_21d"]) == (0, 0, 1, 10)
    assert (b["orders_14d"], b["revenue_14d"], b["orders_21d"], b["revenue_21d"]) == (1, 15, 1, 15)
    assert (a["emails_sent_10d"], a["email_opens_10d"], a["email_clicks_10d"], a["open_rate_10d"]) == (1, 1, 0, 1.0)
    assert (c["views_2d"], c["cart_adds_2d"], b["cart_adds_2d"], b["cart_adds_3d"]) == (1, 1, 0, 1)
    assert [bool(x["cart_abandoned_3d"]) for x in (a, b, c)] == [False, True, True]
    assert [x["intent_score"] for x in (a, b, c)] == [0, 5, 8]
    assert [x["lifecycle_stage"] for x in (a, b, c)] == ["lapsed", "at-risk", "prospect"]


def test_the_reference_twin_agrees_with_the_config(tiny_tables: Tables, built: pd.DataFrame) -> None:
    slow = reference_features(*(tiny_tables.frame(t) for t in ("orders", "customers", "events", "products")), AS_OF,
                              CONFIG, customer_changes=tiny_tables.frame("customer_changes")).set_index("customer_id")
    assert sorted(slow.columns) == sorted(built.columns)
    pd.testing.assert_frame_equal(slow[built.columns], built, check_dtype=False)


def test_training_sets_carry_the_config(tiny_tables: Tables) -> None:
    frame = build_training_set(tiny_tables, ["2024-01-21"], Target.PURCHASED, 7, config=CONFIG).frame
    assert "orders_14d" in frame.columns and "orders_30d" not in frame.columns
