"""Metric, calibration and reason-code functions on tiny literal inputs."""

from __future__ import annotations

import numpy as np
import pytest

from training.calibration import Calibrator, fit_calibrator
from training.metrics import classification_metrics, expected_calibration_error, lift_and_capture
from training.reasons import describe, top_reasons


def test_metrics_on_a_literal_example() -> None:
    y = np.array([0, 0, 1, 1, 0, 1, 0, 0, 1, 0])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.05, 0.3, 0.6, 0.7])
    m = classification_metrics(y, p)
    assert m["roc_auc"] == pytest.approx(21 / 24)  # 21 of 24 positive-negative pairs ordered right
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["lift_at_10"] == pytest.approx(1 / 0.4)  # top 1 of 10 is a positive; base rate 0.4
    assert m["capture_at_20"] == pytest.approx(2 / 4)  # top 2: 0.9 and 0.8, both positive


def test_expected_calibration_error_by_hand() -> None:
    y = np.array([0, 1, 1, 1])
    p = np.array([0.05, 0.05, 0.95, 0.95])
    # bin 0: mean p 0.05, rate 0.5 -> 0.45; bin 9: mean p 0.95, rate 1 -> 0.05; weights 2/4 each
    assert expected_calibration_error(y, p) == pytest.approx(0.25)


def test_lift_and_capture_with_no_positives_is_nan() -> None:
    lift, capture = lift_and_capture(np.zeros(5), np.arange(5.0), 0.2)
    assert np.isnan(lift) and np.isnan(capture)


def test_a_ranking_score_gets_no_probability_metrics() -> None:
    m = classification_metrics(np.array([0, 1, 0, 1]), np.array([3.0, 10.0, 1.0, 7.0]))
    assert m["roc_auc"] == 1.0 and np.isnan(m["log_loss"])


def test_calibrator_round_trip_and_choice() -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, 4000)
    y = (rng.uniform(0, 1, 4000) < raw**2).astype(int)  # raw overstates the probability
    calibrator, losses = fit_calibrator(raw, y)
    assert set(losses) == {"isotonic", "platt"} and calibrator.method == min(losses, key=losses.get)
    again = Calibrator.from_dict(calibrator.to_dict())
    np.testing.assert_allclose(again.apply(raw), calibrator.apply(raw))
    assert abs(calibrator.apply(np.array([0.5]))[0] - 0.25) < 0.05


@pytest.mark.parametrize(("column", "value", "text"), [
    ("recency_days", 142.3, "no order for 142 days"),
    ("recency_days", np.nan, "never ordered"),
    ("recency_days", 1.2, "no order for 1 day"),  # the count as shown decides the plural
    ("orders_90d", 1, "1 order in the last 90 days"),
    ("orders_90d", 0, "0 orders in the last 90 days"),
    ("orders_count", 1, "1 order in total"),
    ("emails_sent_7d", 1, "1 email sent in the last 7 days"),
    ("email_opens_30d", 3, "3 email opens in the last 30 days"),
    ("email_clicks_30d", 1, "1 email click in the last 30 days"),
    ("views_1d", 1, "1 product view in the last day"),
    ("cart_adds_7d", 1, "1 cart add in the last 7 days"),
    ("checkouts_30d", 1, "1 checkout started in the last 30 days"),
    ("returns_count", 1, "1 return"),
    ("categories_count", 1, "bought from 1 category"),
    ("distinct_products", 1, "bought 1 different product"),
    ("tenure_days", 1, "customer for 1 day"),
    ("days_since_first_order", 1, "first order 1 day ago"),
    ("days_since_last_open", 1, "last opened an email 1 day ago"),
    ("days_since_last_click", 2, "last clicked an email 2 days ago"),
    ("ipi_mean_days", 1, "usually orders every 1 day"),
    ("ipi_std_days", 1, "order rhythm varies by 1 day"),
    ("overdue_days", 1, "1 day past the usual next order"),
    ("overdue_days", -1, "next order due in 1 day"),
    ("open_rate_30d", 0.25, "opened 25% of emails in the last 30 days"),
    ("lifecycle_stage=lapsed", 1, "lifecycle stage lapsed"),
    ("cart_abandoned_1d", 1, "abandoned a cart in the last day"),
    ("something_new", 2.5, "something new = 2.5"),
])
def test_reason_phrases(column: str, value: float, text: str) -> None:
    assert describe(column, value) == text


def test_top_reasons_keep_only_features_that_raise_the_score() -> None:
    columns = ["recency_days", "orders_count", "revenue"]
    contributions = np.array([[0.9, -0.2, 0.1, 0.0], [-0.5, -0.1, -0.3, 0.0]])
    matrix = np.array([[200.0, 1.0, 30.0], [3.0, 9.0, 900.0]])
    assert top_reasons(contributions, matrix, columns).tolist() == [
        ["no order for 200 days", "spent 30.00 in total", None], [None, None, None]]
