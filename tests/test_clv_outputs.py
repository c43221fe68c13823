"""Customer lifetime value in every output that has scores: ``score`` (training/scoring.py), the
service's ``/score`` and fresh answers (serving/state.py), the policy's and the segments' signals, from
the CLV model the churn model carries (training/clv.py, fitted on the features by ``sendwise run``)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from features.build import build_features
from features.snapshot import data_end
from features.tables import Tables
from serving.policy import SCORE_SIGNALS
from serving.schemas import Score
from serving.segments import known_signals
from serving.state import CustomerTable
from training.classifier_choice import fit_kind
from training.clv import features_summary, fit_clv_features
from training.linear import COLUMNS
from training.model import LOGISTIC, ModelBundle
from training.scoring import CLV_FIELDS, CLV_KEY, score_features, score_row


@pytest.fixture(scope="module")
def scored(demo_tables: Tables) -> tuple[pd.DataFrame, ModelBundle, ModelBundle]:
    """The demo shop's features at its end, and churn (carrying a CLV model) and propensity models."""
    at = data_end(demo_tables) + timedelta(microseconds=1)
    features = build_features(demo_tables, at)
    labelled = features.assign(churned=np.arange(len(features)) % 3 == 0, purchased=np.arange(len(features)) % 2)
    churn = fit_kind(LOGISTIC, labelled, labelled, labelled, list(COLUMNS), "churned", 90, {}, 0,
                     {CLV_KEY: fit_clv_features(features, at).to_dict()})
    propensity = fit_kind(LOGISTIC, labelled, labelled, labelled, list(COLUMNS), "purchased", 30, {}, 0, {})
    return features, churn, propensity


def test_score_has_the_clv_fields_of_buyers_and_none_for_prospects(scored) -> None:
    features, churn, propensity = scored
    out = score_features(features, churn, propensity)
    assert set(CLV_FIELDS) <= set(out.columns)
    buyer = (features["orders_count"] > 0).to_numpy()
    assert out.loc[buyer, "predicted_clv"].notna().all() and out.loc[~buyer, list(CLV_FIELDS)].isna().all().all()
    assert (out.loc[buyer, "p_alive"].between(0, 1)).all() and (out.loc[buyer, "expected_orders"] >= 0).all()
    # more orders and a recent last order: more expected orders than a lapsed one-off buyer
    summary = features_summary(features).set_index("customer_id")
    loyal = summary["frequency"].idxmax()
    lapsed = summary[summary["frequency"] == 0]["T"].idxmax()
    by_id = out.set_index("customer_id")
    assert by_id.at[loyal, "expected_orders"] > by_id.at[lapsed, "expected_orders"]
    longer = score_features(features, churn, propensity, clv_horizon_days=730).set_index("customer_id")
    assert longer.at[loyal, "predicted_clv"] > by_id.at[loyal, "predicted_clv"]  # --clv-horizon moves it


def test_one_customer_scored_online_equals_the_batch_row(scored) -> None:
    features, churn, propensity = scored
    batch = score_features(features, churn, propensity).set_index("customer_id")
    at = features["as_of"].iloc[0]
    for customer in features.loc[features["orders_count"] > 1, "customer_id"].head(5):
        values = features.set_index("customer_id").loc[customer].to_dict()
        online = score_row(values, churn, propensity, at)
        for name in CLV_FIELDS:
            assert online[name] == pytest.approx(batch.at[customer, name]) if name != "next_order_date" else (
                online[name] == batch.at[customer, name] or (pd.isna(online[name]) and pd.isna(batch.at[customer, name])))


def test_the_service_answers_them_and_policies_and_segments_may_read_them(scored) -> None:
    features, churn, propensity = scored
    table = CustomerTable(features, churn, propensity)
    customer = features.loc[features["orders_count"] > 2, "customer_id"].iloc[0]
    record = table.scores(customer)
    answer = Score(customer_id=customer, known=True, model_versions={}, **record).model_dump(mode="json")
    assert answer["predicted_clv"] > 0 and 0 < answer["p_alive"] <= 1
    assert answer["next_order_date"] is None or len(answer["next_order_date"]) == 10  # a day: 2025-07-01
    assert {"expected_orders", "predicted_clv", "p_alive"} <= set(SCORE_SIGNALS) <= set(known_signals())
    assert table.signals(customer)["predicted_clv"] == record["predicted_clv"]
