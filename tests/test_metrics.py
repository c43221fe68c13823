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
    ("recency_days", 142.3, "last order 142 days ago"),
    ("recency_days", np.nan, "never ordered"),
    ("recency_days", 1.2, "last order 1 day ago"),  # the count as shown decides the plural
    ("recency_days", 0.2, "last order less than a day ago"),
    ("orders_90d", 1, "1 order in the last 90 days"),
    ("orders_90d", 0, "no orders in the last 90 days"),
    ("orders_14d", 2, "2 orders in the last 14 days"),  # a window of other feature settings
    ("orders_count", 1, "1 order in total"),
    ("orders_count", 0, "no orders yet"),
    ("revenue_30d", 0, "spent nothing in the last 30 days"),
    ("emails_sent_7d", 1, "1 email sent in the last 7 days"),
    ("email_opens_30d", 3, "3 email opens in the last 30 days"),
    ("email_clicks_30d", 1, "1 email click in the last 30 days"),
    ("views_1d", 1, "1 product view in the last day"),
    ("cart_adds_7d", 3, "3 cart adds in the last 7 days"),
    ("checkouts_30d", 1, "1 checkout started in the last 30 days"),
    ("returns_count", 1, "1 return"),
    ("returns_count", 0, "no returns"),
    ("categories_count", 1, "bought from 1 category"),
    ("distinct_products", 1, "bought 1 different product"),
    ("tenure_days", 400, "first seen 400 days ago"),
    ("days_since_first_order", 1, "first order 1 day ago"),
    ("days_since_last_open", 1, "last opened an email 1 day ago"),
    ("days_since_last_click", 2, "last clicked an email 2 days ago"),
    ("ipi_mean_days", 30, "orders usually come every 30 days"),
    ("ipi_mean_days", np.nan, "fewer than two orders so far"),
    ("ipi_std_days", 1, "days between orders vary by about 1 day"),
    ("ipi_std_days", np.nan, "fewer than three orders so far"),
    ("overdue_days", 12, "next order 12 days overdue at their usual pace"),
    ("overdue_days", -1, "next order due in 1 day at their usual pace"),
    ("overdue_days", np.nan, "fewer than two orders so far"),
    ("overdue_ratio", 2.14, "time since the last order is 2.1 times their usual gap"),
    ("open_rate_30d", 0.25, "opened 25% of emails in the last 30 days"),
    ("open_rate_30d", np.nan, "no emails sent in the last 30 days"),
    ("lifecycle_stage=lapsed", 1, "lapsed: no order for over 3 times their usual gap"),
    ("lifecycle_stage=loyal", 0, "not a loyal customer"),
    ("rfm_segment=Champions", 1, "in the Champions segment"),
    ("cart_abandoned_1d", 1, "left items in the cart in the last day"),
    ("email_consent", 1, "consented to email"),
    ("email_consent", np.nan, "email consent not on record"),
    ("abandoned_cart_value", 0, "no items left in the cart"),
    ("rfm_frequency", 2, "ranks 2 of 5 for number of orders"),
])
def test_reason_phrases(column: str, value: float, text: str) -> None:
    assert describe(column, value) == text


def test_a_column_without_a_declaration_has_no_phrase() -> None:
    with pytest.raises(KeyError, match="no phrase for 'something_new'"):
        describe("something_new", 2.5)


def test_top_reasons_keep_only_features_that_raise_the_score() -> None:
    columns = ["recency_days", "orders_count", "revenue"]
    contributions = np.array([[0.9, -0.2, 0.1, 0.0], [-0.5, -0.1, -0.3, 0.0]])
    matrix = np.array([[200.0, 1.0, 30.0], [3.0, 9.0, 900.0]])
    assert top_reasons(contributions, matrix, columns).tolist() == [
        ["last order 200 days ago", "spent 30.00 in total", None], [None, None, None]]


def test_a_phrase_is_given_once_per_customer() -> None:
    """Two orders or fewer: the mean gap and how overdue the next order is say the same in words; the
    next feature that raises the score takes the place of the repeat."""
    columns = ["ipi_mean_days", "overdue_days", "revenue", "returns_count"]
    contributions = np.array([[0.9, 0.8, 0.1, 0.05, 0.0], [0.9, 0.8, -0.1, -0.2, 0.0]])
    matrix = np.array([[np.nan, np.nan, 30.0, 0.0], [np.nan, np.nan, 30.0, 0.0]])
    assert top_reasons(contributions, matrix, columns).tolist() == [
        ["fewer than two orders so far", "spent 30.00 in total", "no returns"],
        ["fewer than two orders so far", None, None]]
