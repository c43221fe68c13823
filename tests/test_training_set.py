"""Labelled training sets: label windows, eligibility, fully observed windows only."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest

from features.tables import Tables
from features.training_set import Target, build_training_set, monthly_as_of_dates
from features.validate import ContractError


def test_churn_labels_only_customers_with_an_earlier_order(tiny_tables: Tables) -> None:
    # As of Jan 15: a (ordered Jan 1, Jan 11) and nobody else has ordered; b orders Jan 20 but is not
    # a customer with an earlier order, so only a is labelled; a orders nothing in [Jan 15, Jan 18).
    result = build_training_set(tiny_tables, ["2024-01-15"], Target.CHURNED, horizon_days=3)
    assert result.frame[["customer_id", "churned"]].values.tolist() == [["a", True]]


def test_purchase_labels_every_known_customer(tiny_tables: Tables) -> None:
    result = build_training_set(tiny_tables, ["2024-01-15"], Target.PURCHASED, horizon_days=10)
    labels = dict(result.frame[["customer_id", "purchased"]].values.tolist())
    assert labels == {"a": False}  # b and c are not known before Jan 15 (b's only row is Jan 20)
    later = build_training_set(tiny_tables, ["2024-01-12"], Target.PURCHASED, horizon_days=10)
    assert dict(later.frame[["customer_id", "purchased"]].values.tolist()) == {"a": False}


def test_label_window_is_half_open(tiny_tables: Tables) -> None:
    # a's return on Jan 15 is no purchase; b's order on Jan 20 00:00 is outside [Jan 10, Jan 20).
    result = build_training_set(tiny_tables, ["2024-01-10"], Target.PURCHASED, horizon_days=10)
    assert dict(result.frame[["customer_id", "purchased"]].values.tolist()) == {"a": True}


def test_as_of_dates_without_a_fully_observed_window_are_skipped(tiny_tables: Tables) -> None:
    # the data ends Jan 31 12:00
    result = build_training_set(tiny_tables, ["2024-01-15", "2024-01-25"], Target.PURCHASED, horizon_days=10)
    assert result.as_of_dates == [datetime(2024, 1, 15)]
    assert result.skipped == [datetime(2024, 1, 25)]
    with pytest.raises(ContractError, match="latest usable as_of is 2024-01-21 12:00"):
        build_training_set(tiny_tables, ["2024-01-25"], Target.PURCHASED, horizon_days=10)


def test_stacked_monthly_set_on_generated_data(demo_tables: Tables) -> None:
    dates = monthly_as_of_dates(demo_tables, horizon_days=90, periods=6)
    assert len(dates) == 6 and all((b - a).days in (28, 29, 30, 31) for a, b in zip(dates, dates[1:]))
    result = build_training_set(demo_tables, dates, Target.CHURNED, 90)
    frame = result.frame
    assert set(frame["as_of"]) == {pd.Timestamp(d) for d in dates}
    assert (frame["orders_count"] > 0).all()
    assert 0.2 < frame["churned"].mean() < 0.9
    # planted behaviour: churners have been away longer
    assert frame.loc[frame["churned"], "recency_days"].median() > frame.loc[~frame["churned"], "recency_days"].median()


def test_a_horizon_that_is_not_positive_is_an_input_error(tiny_tables: Tables) -> None:
    from features.errors import InputError
    with pytest.raises(InputError, match="horizon_days must be positive; got 0"):
        build_training_set(tiny_tables, ["2024-01-15"], Target.PURCHASED, horizon_days=0)
