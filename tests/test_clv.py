"""CLV: the summary and holdout protocol on a pinned fixture, the closed-form predictions against
PyMC-Marketing's own on one fitted model (a 400-customer generated shop, fitted once per module)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from features.errors import InputError
from features.schema import CUSTOMER_ID, ORDER_ID, ORDERED_AT, PRODUCT_ID, QUANTITY, UNIT_PRICE
from features.tables import Tables
from training.clv import (
    PREDICTION_COLUMNS,
    ClvModel,
    choose_horizon,
    clv_summary,
    evaluate_clv,
    fit_clv,
    historic_rate,
    orders_calibration,
    top_decile_share,
)
from training.protocols import clv_holdout

AS_OF = pd.Timestamp("2024-01-11")
DEMO_AS_OF = "2025-07-01"  # the conftest demo shop (400 customers from 2024-07-02): 136 buyers, 72 repeat


def _orders(rows: list[tuple[str, str, str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{CUSTOMER_ID: c, ORDER_ID: o, PRODUCT_ID: "P1", ORDERED_AT: pd.Timestamp(at),
                          QUANTITY: q, UNIT_PRICE: p} for c, o, at, q, p in rows])


@pytest.fixture(scope="module")
def pinned() -> Tables:
    """as_of 2024-01-11, a 10-day holdout [01-11, 01-21).

    A: o1 01-01 10:00 (2 x 5 = 10) and o2 01-01 15:00 (4): one day worth 14; o3 01-05 (20); a return
       01-06 (-2 x 5, ignored); o4 01-08 (3 x 2 = 6). Days 01-01, 01-05, 01-08: frequency 2, recency 7,
       T 10, monetary (20 + 6) / 2 = 13, spend 40. Holdout: o5 (8) and o6 (2) on 01-12, o7 01-20 23:00 (5):
       2 order days worth 15; o8 at 01-21 00:00 (100) is after the window.
    B: o9 01-10 23:00 (3): frequency 0, recency 0, T 1, monetary 0, spend 3; nothing in the holdout.
    C: first order in the holdout (01-15): not a calibration customer.
    D: only a return before the as_of: not a customer of the summary.
    """
    return Tables.from_frames(_orders([
        ("A", "o1", "2024-01-01 10:00", 2, 5), ("A", "o2", "2024-01-01 15:00", 1, 4),
        ("A", "o3", "2024-01-05 09:00", 4, 5), ("A", "r1", "2024-01-06 12:00", -2, 5),
        ("A", "o4", "2024-01-08 18:00", 3, 2), ("A", "o5", "2024-01-12 08:00", 1, 8),
        ("A", "o6", "2024-01-12 20:00", 1, 2), ("A", "o7", "2024-01-20 23:00", 1, 5),
        ("A", "o8", "2024-01-21 00:00", 1, 100), ("B", "o9", "2024-01-10 23:00", 1, 3),
        ("C", "o10", "2024-01-15 10:00", 1, 7), ("D", "r2", "2024-01-03 10:00", -1, 9),
    ]))


def test_summary_pinned(pinned: Tables) -> None:
    got = clv_summary(pinned, AS_OF)
    assert got.to_dict("records") == [
        {CUSTOMER_ID: "A", "frequency": 2.0, "recency": 7.0, "T": 10.0, "monetary_value": 13.0, "spend": 40.0},
        {CUSTOMER_ID: "B", "frequency": 0.0, "recency": 0.0, "T": 1.0, "monetary_value": 0.0, "spend": 3.0},
    ]


def test_summary_equals_pymc_marketing_rfm_summary(pinned: Tables) -> None:
    from pymc_marketing.clv.utils import rfm_summary

    lines = pinned.frame("orders")
    lines = lines[(lines[QUANTITY] > 0) & (lines[ORDERED_AT] < AS_OF)].assign(value=lambda f: f[QUANTITY] * f[UNIT_PRICE])
    orders = lines.groupby([CUSTOMER_ID, ORDER_ID], as_index=False).agg(at=(ORDERED_AT, "min"), value=("value", "sum"))
    expected = rfm_summary(orders, CUSTOMER_ID, "at", "value", observation_period_end=AS_OF)
    got = clv_summary(pinned, AS_OF)
    pd.testing.assert_frame_equal(got.drop(columns="spend"), expected.sort_values(CUSTOMER_ID, ignore_index=True),
                                  check_dtype=False)


def test_holdout_pinned(pinned: Tables) -> None:
    got = clv_holdout(pinned, AS_OF, 10)
    assert got.to_dict("records") == [
        {CUSTOMER_ID: "A", "actual_orders": 2.0, "actual_orders_placed": 3.0, "actual_spend": 15.0},
        {CUSTOMER_ID: "B", "actual_orders": 0.0, "actual_orders_placed": 0.0, "actual_spend": 0.0}]
    with pytest.raises(InputError, match=r"\[2024-01-11, 2024-02-10\) is not inside the data"):
        clv_holdout(pinned, AS_OF, 30)


def test_historic_rate_pinned(pinned: Tables) -> None:
    # A: 40 spent and 3 order days over T = 10 days; B: 3 over T = 1 day; horizon 10
    got = historic_rate(clv_summary(pinned, AS_OF), 10)
    assert got["predicted_clv"].tolist() == [40.0, 30.0]
    assert got["expected_orders"].tolist() == [3.0, 10.0]
    # per day of a 20-day shop history instead: 40 / 20 x 10 and 3 / 20 x 10
    assert historic_rate(clv_summary(pinned, AS_OF), 10, history_days=20)["predicted_clv"].tolist() == [20.0, 1.5]


def test_too_few_repeat_buyers(pinned: Tables) -> None:
    with pytest.raises(InputError, match=r"1 customers ordered on more than one day .* at least 30 are needed"):
        fit_clv(pinned, AS_OF)


def test_metrics_pinned() -> None:
    # top decile of 10 customers = 1 customer: the highest prediction (20) spent 10 of 40;
    # predicted total 8 x 1 + 20 + 5 = 33 over 40; MAE (8 x 1 + 10 + 25) / 10 = 4.3
    actual = np.array([0, 0, 0, 0, 0, 0, 0, 0, 10, 30], float)
    predicted = np.array([1, 1, 1, 1, 1, 1, 1, 1, 20, 5], float)
    assert top_decile_share(predicted, actual) == 0.25
    ids = [f"c{i}" for i in range(10)]
    holdout = pd.DataFrame({CUSTOMER_ID: ids, "actual_orders": actual > 0, "actual_spend": actual})
    frame = pd.DataFrame({CUSTOMER_ID: ids, "expected_orders": predicted / 10, "predicted_clv": predicted})
    got = evaluate_clv(holdout, {"m": frame})["m"]
    assert got["mae"] == pytest.approx(4.3) and got["total_ratio"] == pytest.approx(0.825)
    assert got["top_decile_share"] == 0.25
    # orders: predicted 3.3 over 2 actual; spend per order: 33 / 3.3 = 10 predicted over 40 / 2 = 20 actual
    assert got["orders_ratio"] == pytest.approx(1.65) and got["spend_per_order_ratio"] == pytest.approx(0.5)
    assert got["orders_ratio"] * got["spend_per_order_ratio"] == pytest.approx(got["total_ratio"])
    # the served model counts orders, not order days: compared with the orders placed when asked
    placed = holdout.assign(actual_orders_placed=2.0 * actual.astype(bool))
    assert evaluate_clv(placed, {"m": frame}, orders="actual_orders_placed")["m"]["orders_ratio"] == pytest.approx(0.825)
    with pytest.raises(InputError, match="no column 'orders_placed'.* expected one of actual_orders"):
        evaluate_clv(holdout, {"m": frame}, orders="orders_placed")
    with pytest.raises(InputError, match="lack holdout customers, e.g. 'c9'"):
        evaluate_clv(holdout, {"m": frame.iloc[:9]})


def test_orders_calibration_pinned() -> None:
    # 4 customers in 2 bins by expected orders: (0.1, 0.2) then (1.0, 3.0)
    got = orders_calibration(np.array([3.0, 0.1, 1.0, 0.2]), np.array([2.0, 0.0, 2.0, 1.0]), bins=2)
    assert got.to_dict("records") == [
        {"decile": 1, "customers": 2, "expected_orders": pytest.approx(0.15), "actual_orders": 0.5},
        {"decile": 2, "customers": 2, "expected_orders": 2.0, "actual_orders": 2.0}]


@pytest.mark.parametrize(("history", "asked", "expected"), [
    (400, 365, 365), (364, 365, 180), (120, 365, 90), (30, 365, 90), (30, 180, 90), (100, 60, 60)])
def test_choose_horizon(history: float, asked: int, expected: int) -> None:
    horizon, why = choose_horizon(history, asked)
    assert horizon == expected and str(horizon) in why
    assert ("shorter than" in why) == (expected != asked)


@pytest.fixture(scope="module")
def fitted(demo_tables: Tables) -> tuple[ClvModel, pd.DataFrame]:
    return fit_clv(demo_tables, DEMO_AS_OF), clv_summary(demo_tables, DEMO_AS_OF)


def test_fit_report_and_horizon(fitted: tuple[ClvModel, pd.DataFrame]) -> None:
    model, summary = fitted
    # the shop starts 2024-07-02: 364 days of history before 2025-07-01, short of 365
    assert model.horizon_days == 180 and "shorter than the 365 days asked" in model.report["horizon"]
    assert model.customers == len(summary) == 136 and model.repeat_buyers == int((summary["frequency"] > 0).sum())
    assert model.as_of == pd.Timestamp(DEMO_AS_OF).to_pydatetime()


def _library_models(model: ClvModel, summary: pd.DataFrame) -> tuple[object, object]:
    """PyMC-Marketing's models holding ``model``'s parameters as their (one-draw) fit result."""
    import arviz as az
    from pymc_marketing import clv

    bg, gg = clv.BetaGeoModel(), clv.GammaGammaModel()
    bg.build_model(summary[[CUSTOMER_ID, "frequency", "recency", "T"]])
    gg.build_model(summary.loc[summary["frequency"] > 0, [CUSTOMER_ID, "frequency", "monetary_value"]])
    bg.idata = az.from_dict(posterior={k: np.array([[getattr(model, k)]]) for k in ("r", "alpha", "a", "b")})
    gg.idata = az.from_dict(posterior={k: np.array([[getattr(model, k)]]) for k in ("p", "q", "v")})
    return bg, gg


def test_the_fit_is_pymc_marketings_maximum_likelihood(fitted: tuple[ClvModel, pd.DataFrame]) -> None:
    """The run's scipy fit and the library's MAP fit with flat priors find the same parameters."""
    from training.clv import fit_library_models, library_parameters

    model, summary = fitted
    reference = ClvModel(**library_parameters(*fit_library_models(summary)), as_of=model.as_of,
                         horizon_days=model.horizon_days, customers=model.customers, repeat_buyers=model.repeat_buyers)
    for name in ("r", "alpha", "a", "b"):
        assert getattr(model, name) == pytest.approx(getattr(reference, name), rel=1e-3), name
    # Gamma-Gamma's likelihood is flat along q, v -> infinity with v / q fixed (a shop whose order values
    # hardly vary): the parameters may differ there, the spend they predict hardly (1 % here)
    ours, theirs = model.predict(summary, 180), reference.predict(summary, 180)
    np.testing.assert_allclose(ours["predicted_clv"], theirs["predicted_clv"], rtol=2e-2)


def test_closed_form_equals_pymc_marketing(fitted: tuple[ClvModel, pd.DataFrame]) -> None:
    model, summary = fitted
    bg, gg = _library_models(model, summary)
    got = model.predict(summary, 120)
    orders = bg.expected_purchases(data=summary, future_t=120).values.reshape(-1)
    spend = gg.expected_customer_spend(data=summary).values.reshape(-1)
    np.testing.assert_allclose(got["expected_orders"], orders, rtol=1e-9)
    np.testing.assert_allclose(got["p_alive"], bg.expected_probability_alive(data=summary).values.reshape(-1), rtol=1e-9)
    np.testing.assert_allclose(got["predicted_clv"], orders * spend, rtol=1e-9)
    assert model.mean_spend == pytest.approx(float(gg.expected_new_customer_spend().values.reshape(-1)[0]))
    # the model's own a and b describe real drop-out on this shop, so P(alive) is not 1 for everyone
    assert got["p_alive"].min() < 0.5


def test_predict_columns_and_types(fitted: tuple[ClvModel, pd.DataFrame]) -> None:
    model, summary = fitted
    got = model.predict(summary)
    assert tuple(got.columns) == PREDICTION_COLUMNS
    assert got[CUSTOMER_ID].tolist() == summary[CUSTOMER_ID].tolist()
    for col in ("expected_orders", "p_alive", "predicted_clv"):
        assert got[col].dtype == np.float64 and np.isfinite(got[col]).all() and (got[col] >= 0).all()
    assert got["next_order_date"].dtype == "datetime64[ns]"
    assert got["p_alive"].le(1).all()


def test_no_repeat_purchase_gets_population_mean_spend(fitted: tuple[ClvModel, pd.DataFrame]) -> None:
    model, summary = fitted
    got = model.predict(summary)
    one = (summary["frequency"] == 0).to_numpy()
    assert one.any()
    np.testing.assert_allclose(got.loc[one, "p_alive"], 1.0)
    np.testing.assert_allclose(got.loc[one, "predicted_clv"], got.loc[one, "expected_orders"] * model.mean_spend)


def test_next_order_date_is_when_expected_orders_reach_one(fitted: tuple[ClvModel, pd.DataFrame]) -> None:
    model, summary = fitted
    got = model.predict(summary)
    dated = got["next_order_date"].notna().to_numpy()
    assert dated.any() and (~dated).any()
    assert (got.loc[dated, "expected_orders"] >= 1).all() and (got.loc[~dated, "expected_orders"] < 1).all()
    x, tx, T = (summary.loc[dated, c].to_numpy(float) for c in ("frequency", "recency", "T"))
    days = ((got.loc[dated, "next_order_date"] - pd.Timestamp(DEMO_AS_OF)) / pd.Timedelta(days=1)).to_numpy()
    assert (days == np.floor(days)).all() and (days <= model.horizon_days).all()
    # below one expected order at the start of that day, at least one by its end
    assert (model.expected_orders(x, tx, T, days) < 1).all()
    assert (model.expected_orders(x, tx, T, days + 1) >= 1).all()


def test_next_order_date_takes_a_whole_day_bisection(fitted: tuple[ClvModel, pd.DataFrame],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The date is a whole day: the service dates one customer after each of their events in
    ceil(log2(horizon)) evaluations of the expected orders, not a bisection down to fractions of a second."""
    model, summary = fitted
    frame = model.predict(summary)
    i = int(np.argmax(frame["expected_orders"]))
    assert frame["next_order_date"].notna().iloc[i]
    calls, evaluate = [], ClvModel.expected_orders

    def counted(self: ClvModel, *args: object) -> np.ndarray:
        calls.append(1)
        return evaluate(self, *args)

    monkeypatch.setattr(ClvModel, "expected_orders", counted)
    got = model.predict_row(summary.iloc[i].to_dict())
    assert got["next_order_date"] == frame["next_order_date"].iloc[i]
    assert len(calls) <= 1 + math.ceil(math.log2(model.horizon_days))  # the horizon's orders, then the days


def test_recent_buyer_ranks_above_lapsed_one(fitted: tuple[ClvModel, pd.DataFrame]) -> None:
    """Same orders and tenure; one last bought yesterday, one nine months ago."""
    model, _ = fitted
    two = pd.DataFrame({CUSTOMER_ID: ["recent", "lapsed"], "frequency": [5.0, 5.0], "recency": [299.0, 30.0],
                        "T": [300.0, 300.0], "monetary_value": [40.0, 40.0]})
    got = model.predict(two).set_index(CUSTOMER_ID)
    for col in ("p_alive", "expected_orders", "predicted_clv"):
        assert got.loc["recent", col] > got.loc["lapsed", col]


def test_to_dict_round_trip(fitted: tuple[ClvModel, pd.DataFrame]) -> None:
    model, summary = fitted
    again = ClvModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    pd.testing.assert_frame_equal(again.predict(summary), model.predict(summary))
    with pytest.raises(InputError, match="lacks alpha, as_of"):
        ClvModel.from_dict({k: v for k, v in model.to_dict().items() if k not in ("alpha", "as_of")})


def test_predict_row_equals_predict_and_a_later_as_of_moves_the_date(fitted: tuple[ClvModel, pd.DataFrame]) -> None:
    model, summary = fitted
    frame = model.predict(summary)
    for i in (int(np.argmax(frame["expected_orders"])), int(np.argmin(frame["expected_orders"]))):
        got = model.predict_row(summary.iloc[i].to_dict())
        want = frame.iloc[i]
        assert got["expected_orders"] == want["expected_orders"] and got["predicted_clv"] == want["predicted_clv"]
        assert got["next_order_date"] == (None if pd.isna(want["next_order_date"]) else want["next_order_date"])
    later = model.predict(summary, as_of=pd.Timestamp(DEMO_AS_OF) + pd.Timedelta(days=10))
    dated = frame["next_order_date"].notna()
    assert ((later.loc[dated, "next_order_date"] - frame.loc[dated, "next_order_date"]) == pd.Timedelta(days=10)).all()


def test_predicting_needs_no_pymc(fitted: tuple[ClvModel, pd.DataFrame]) -> None:
    """The service scores from saved parameters: importing and predicting must not load pymc."""
    model, summary = fitted
    code = ("import json, sys, pandas as pd; from training.clv import ClvModel; "
            "m = ClvModel.from_dict(json.loads(sys.argv[1])); "
            "print(m.predict(pd.DataFrame(json.loads(sys.argv[2])))['expected_orders'].round(9).tolist()); "
            "assert not [k for k in sys.modules if k.startswith(('pymc', 'pytensor'))], 'pymc was imported'")
    rows = summary.head(3).to_dict("records")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(model.to_dict()), json.dumps(rows)],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(model.predict(summary.head(3))["expected_orders"].round(9).tolist())

