"""The evaluation protocols on a hand-made shop whose splits are worked out in the docstrings."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest

from features.tables import Tables
from training.protocols import (
    ALL_ITEMS,
    LEAVE_LATEST_OUT,
    NEW_ITEMS,
    TIME_SPLIT,
    NoTestCustomersError,
    choose_protocol,
    leave_latest_out,
    time_split,
    validation_fold,
)

ORDERS = [  # order, customer, product, time
    ("o1", "c1", "p1", "2024-01-05 10:00"), ("o2", "c1", "p2", "2024-02-10 10:00"),
    ("o3", "c1", "p3", "2024-03-20 09:00"), ("o4", "c1", "p1", "2024-03-20 18:00"),
    ("o5", "c2", "p2", "2024-01-20 10:00"), ("o6", "c2", "p4", "2024-03-05 10:00"),
    ("o7", "c3", "p1", "2024-03-10 10:00"),
    ("o8", "c4", "p1", "2024-02-01 10:00"), ("o9", "c4", "p2", "2024-02-01 15:00"),
]
EVENTS = [("c1", "product_view", "p3", "2024-03-20 08:00"), ("c1", "product_view", "p3", "2024-03-01 08:00")]


@pytest.fixture(scope="module")
def shop() -> Tables:
    """c1 buys on three days (75 days apart first to last), c2 on two (45 days), c3 and c4 on one each."""
    orders = pd.DataFrame(ORDERS, columns=["order_id", "customer_id", "product_id", "ordered_at"])
    events = pd.DataFrame(EVENTS, columns=["customer_id", "event_type", "product_id", "occurred_at"])
    return Tables.from_frames(orders.assign(ordered_at=pd.to_datetime(orders["ordered_at"]), quantity=1.0,
                                            unit_price=1.0),
                              events=events.assign(occurred_at=pd.to_datetime(events["occurred_at"])))


def pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["customer_id"], frame["product_id"], strict=True))


def test_time_split_holds_out_the_window_of_customers_with_history(shop: Tables) -> None:
    """as_of 2024-03-01: before it c1 {p1, p2}, c2 {p2}, c4 {p1, p2}; after it c1 {p3, p1}, c2 {p4},
    c3 {p1}. c3 has no history, so is no test customer; c1's p1 is a repurchase (all items only)."""
    test = time_split(shop, datetime(2024, 3, 1))
    assert pairs(test.truth[ALL_ITEMS]) == {("c1", "p1"), ("c1", "p3"), ("c2", "p4")}
    assert pairs(test.truth[NEW_ITEMS]) == {("c1", "p3"), ("c2", "p4")}
    assert pairs(test.before) == {("c1", "p1"), ("c1", "p2"), ("c2", "p2"), ("c4", "p1"), ("c4", "p2")}
    assert (test.inputs, test.protocol) == (None, TIME_SPLIT)
    short = time_split(shop, datetime(2024, 3, 1), datetime(2024, 3, 6))  # [03-01, 03-06): c2's p4 only
    assert pairs(short.truth[ALL_ITEMS]) == pairs(short.truth[NEW_ITEMS]) == {("c2", "p4")}


def test_leave_latest_out_holds_out_each_customers_latest_day(shop: Tables) -> None:
    """c1's latest day 2024-03-20 ({p3, p1}; p1 bought before: all items only), c2's 2024-03-05 ({p4});
    c3 and c4 bought on one day only, so their rows stay in the input. The input loses c1's two
    orders and view of 03-20 and c2's order of 03-05: 9 - 3 = 6 order lines, 1 event."""
    test = leave_latest_out(shop)
    assert pairs(test.truth[ALL_ITEMS]) == {("c1", "p1"), ("c1", "p3"), ("c2", "p4")}
    assert pairs(test.truth[NEW_ITEMS]) == {("c1", "p3"), ("c2", "p4")}
    assert sorted(test.inputs.frame("orders")["order_id"]) == ["o1", "o2", "o5", "o7", "o8", "o9"]
    assert list(test.inputs.frame("events")["occurred_at"]) == [pd.Timestamp("2024-03-01 08:00")]
    assert pairs(test.before) == {("c1", "p1"), ("c1", "p2"), ("c2", "p2"), ("c3", "p1"), ("c4", "p1"),
                                  ("c4", "p2")}
    assert test.as_of == datetime(2024, 3, 20, 18, 0, 0, 1) and test.protocol == LEAVE_LATEST_OUT
    assert shop.count("orders") == 9, "the source tables are left whole"


def test_leave_latest_out_before_an_as_of(shop: Tables) -> None:
    """Rows before 2024-03-15: c1's latest day is 02-10 ({p2}, new), c2's 03-05 ({p4})."""
    test = leave_latest_out(shop, datetime(2024, 3, 15))
    assert pairs(test.truth[ALL_ITEMS]) == pairs(test.truth[NEW_ITEMS]) == {("c1", "p2"), ("c2", "p4")}
    assert test.as_of == datetime(2024, 3, 15)


def test_validation_fold_is_before_the_holdout(shop: Tables) -> None:
    """Leave-latest-out: the input's latest days: c1 02-10 ({p2}); c2 has one day left, so is out.
    Time split at 03-01 with a 30-day window: the window [01-31, 03-01) holds c1's p2 (c4 has no
    history before it); the models fit on the rows before 03-01."""
    fold = validation_fold(shop, leave_latest_out(shop), 30)
    assert pairs(fold.truth[ALL_ITEMS]) == {("c1", "p2")}
    fold = validation_fold(shop, time_split(shop, datetime(2024, 3, 1)), 30)
    assert pairs(fold.truth[NEW_ITEMS]) == {("c1", "p2")} and fold.as_of == datetime(2024, 1, 31)
    assert fold.inputs.time_range()[1] < datetime(2024, 3, 1)


def test_choose_protocol_compares_the_median_span_with_the_window(shop: Tables) -> None:
    """Spans of the customers who bought on two or more days: c1 75 days, c2 45: median 60."""
    assert choose_protocol(shop, 30)[0] == TIME_SPLIT
    protocol, reason = choose_protocol(shop, 90)
    assert protocol == LEAVE_LATEST_OUT and "median of 60 days" in reason
    one_day = Tables.from_frames(pd.DataFrame({"order_id": ["a"], "customer_id": ["c"], "product_id": ["p"],
                                               "ordered_at": [datetime(2024, 1, 1)], "quantity": [1.0],
                                               "unit_price": [1.0]}))
    assert choose_protocol(one_day)[0] == LEAVE_LATEST_OUT
    with pytest.raises(NoTestCustomersError, match="nothing to hold out"):
        leave_latest_out(one_day)
