"""The BG/NBD churn quantity as a third classifier kind (training/bgnbd_classifier.py): its formula against
a numeric integration of the model, its Shapley reasons, bundles of every kind saved and loaded (and
bundles saved before it), the choice between the kinds, and every place that scores a bundle."""

from __future__ import annotations

import json
from datetime import timedelta
from itertools import permutations
from math import factorial
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats
from scipy.special import logit

from features.build import build_features
from features.errors import InputError
from features.schema import CUSTOMER_ID
from features.snapshot import data_end
from features.tables import Tables
from training import bgnbd_classifier
from training.bgnbd_classifier import BgNbdChurnModel
from training.classifier_choice import candidate_kinds, choose_classifier, fit_kind
from training.clv import ClvModel, bgnbd_inputs, features_summary, fit_clv_features
from training.design import feature_columns
from training.model import BGNBD, BUNDLE_FILE, LOGISTIC, XGBOOST, ModelBundle
from training.registry import load_version, log_and_register
from training.retrain import classifier_recipe
from training.scoring import CLV_KEY, score_features, score_row
from training.tracking import configure_tracking
from training.tuning import BASE_PARAMS

LABEL, HORIZON = "churned", 90
FAST = BASE_PARAMS | {"seed": 0, "eta": 0.3}
PARAMS = {"r": 0.8, "alpha": 12.0, "a": 0.7, "b": 2.5}
COLUMNS = bgnbd_classifier.COLUMNS


def _model(reference: tuple[float, ...] = (3.0, 30.0, 200.0)) -> BgNbdChurnModel:
    return BgNbdChurnModel(**PARAMS, horizon_days=HORIZON, reference=reference)


def _integrated_no_order(x: int, tx: float, T: float, h: float) -> float:
    """P(no order in (T, T + h]) by numeric integration of the BG/NBD likelihood (Fader, Hardie & Lee
    2005, eq. 3) over the Gamma(r, alpha) rates and Beta(a, b) dropout probabilities:
    [A(T + h) + D] / [A(T) + D], A(u) = E[(1 - p)^x] E[lambda^x e^(-lambda u)] (alive, no order until
    u), D = E[p (1 - p)^(x - 1)] E[lambda^x e^(-lambda tx)] (dropped out after the last order)."""
    r, alpha, a, b = PARAMS.values()
    rate, drop = stats.gamma(r, scale=1 / alpha), stats.beta(a, b)

    def mean(f, dist, upper: float) -> float:
        return integrate.quad(lambda v: f(v) * dist.pdf(v), 0, upper, epsabs=0, epsrel=1e-11, limit=500)[0]

    def alive(u: float) -> float:
        return mean(lambda p: (1 - p) ** x, drop, 1) * mean(lambda lam: lam ** x * np.exp(-lam * u), rate, 50)

    dropped = 0.0
    if x > 0:
        dropped = mean(lambda p: p * (1 - p) ** (x - 1), drop, 1) * mean(lambda lam: lam ** x * np.exp(-lam * tx), rate, 50)
    return (alive(T + h) + dropped) / (alive(T) + dropped)


@pytest.mark.parametrize(("x", "tx", "T"), [(0, 0.0, 0.0), (0, 0.0, 150.0), (1, 20.0, 40.0), (4, 100.0, 130.0),
                                            (4, 30.0, 300.0), (12, 280.0, 290.0)])
def test_the_churn_probability_is_the_bgnbd_probability_of_no_order(x: int, tx: float, T: float) -> None:
    # orders_count = x + 1 (with the first), recency_days = T - tx, days_since_first_order = T; the
    # customer without an order (0, 0, 0) is the prior: (alpha / (alpha + h))^r
    row = np.array([[x + 1, T - tx, T]], np.float32) if T else np.array([[0, np.nan, np.nan]], np.float32)
    got = _model().raw_proba(row)[0]
    assert got == pytest.approx(_integrated_no_order(x, tx, T, HORIZON), rel=1e-7)
    # and P(alive) in the formula is the CLV model's
    clv = ClvModel(**PARAMS, p=1, q=2, v=1, as_of=pd.Timestamp("2025-01-01"), horizon_days=HORIZON, customers=1,
                   repeat_buyers=1)
    alive = clv.p_alive(np.array([x]), np.array([tx]), np.array([T]))[0]
    s = ((PARAMS["alpha"] + T) / (PARAMS["alpha"] + T + HORIZON)) ** (PARAMS["r"] + x)
    assert got == pytest.approx((1 - alive) + alive * s, rel=1e-12)


def test_every_row_gets_a_probability_and_the_inputs_are_features_summarys() -> None:
    rows = np.array([[np.nan, np.nan, np.nan], [0, np.nan, np.nan], [2, np.nan, 40], [3, 500, 40], [1, 0, 0]], np.float32)
    p = _model().raw_proba(rows)
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    features = pd.DataFrame({CUSTOMER_ID: list("abcd"), "orders_count": [0, 1, 3, 7],
                             "recency_days": [np.nan, 10.5, 3.0, 80.0], "days_since_first_order": [np.nan, 10.5, 90.0, 400.0],
                             "avg_order_value": [np.nan, 20.0, 30.0, 25.0]})
    summary = features_summary(features)
    buyers = features[features["orders_count"] > 0]
    got = bgnbd_inputs(*(buyers[c].to_numpy(float) for c in COLUMNS))
    for name, values in zip(("frequency", "recency", "T"), got, strict=True):
        np.testing.assert_array_equal(values, summary[name].to_numpy())


def _shapley_by_permutations(model: BgNbdChurnModel, row: np.ndarray) -> np.ndarray:
    """The definition: each input's marginal log-odds, averaged over the orders of adding the inputs."""
    reference, out = np.array(model.reference, float), np.zeros(len(COLUMNS))
    for order in permutations(range(len(COLUMNS))):
        current = reference.copy()
        for j in order:
            before = model.log_odds(current[None, :])[0]
            current[j] = row[j]
            out[j] += model.log_odds(current[None, :])[0] - before
    return out / factorial(len(COLUMNS))


def test_the_contributions_are_exact_shapley_values_summing_to_the_log_odds() -> None:
    rng = np.random.default_rng(0)
    orders = rng.integers(1, 30, 300)
    first = rng.uniform(0, 700, 300)
    rows = np.column_stack([orders, first * rng.uniform(0, 1, 300), first]).astype(np.float32)
    model = _model()
    contributions = model.contributions(rows)
    assert contributions.shape == (len(rows), len(COLUMNS) + 1)
    log_odds = model.log_odds(rows)
    np.testing.assert_allclose(contributions.sum(axis=1), log_odds, rtol=1e-12, atol=1e-12)
    moderate = np.abs(log_odds) < 15  # beyond, the probability is 1 within float precision
    assert moderate.sum() > 200 and (log_odds > 20).any()
    np.testing.assert_allclose(log_odds[moderate], logit(model.raw_proba(rows[moderate])), rtol=1e-6, atol=1e-9)
    assert np.all(contributions[:, -1] == model.log_odds(np.array([model.reference]))[0])
    for i in range(10):
        np.testing.assert_allclose(contributions[i, :-1], _shapley_by_permutations(model, rows[i]), rtol=1e-9, atol=1e-12)
    # the reference customer has nothing to explain; a long-silent customer's recency raises churn
    np.testing.assert_allclose(model.contributions(np.array([model.reference]))[0, :-1], 0, atol=1e-12)
    silent = model.contributions(np.array([[6, 400, 500]], np.float32))[0]
    assert silent[1] > 0 and silent[1] == silent[:-1].max()


# -- a shop whose customers buy as BG/NBD says -------------------------------------------------------------
def _bgnbd_shop(n: int, seed: int) -> list[np.ndarray]:
    """Order days of ``n`` customers drawn from the BG/NBD process of :data:`PARAMS`: a first order on a
    uniform day of [0, 600), then Poisson orders at the customer's Gamma rate, dropping out with the
    customer's Beta probability after each repeat order."""
    rng = np.random.default_rng(seed)
    rates, drops = rng.gamma(PARAMS["r"], 1 / PARAMS["alpha"], n), rng.beta(PARAMS["a"], PARAMS["b"], n)
    shop = []
    for rate, drop in zip(rates, drops, strict=True):
        t = [rng.uniform(0, 600)]
        while True:
            t.append(t[-1] + rng.exponential(1 / rate))
            if t[-1] > 1_000 or rng.random() < drop:
                break
        shop.append(np.array([v for v in t if v <= 1_000]))
    return shop


def _frame(shop: list[np.ndarray], as_of: float, seed: int) -> pd.DataFrame:
    """Feature rows at ``as_of`` of the customers with an order before it, the churn label of the
    following :data:`HORIZON` days, and noise features."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, days in enumerate(shop):
        before = days[days < as_of]
        if len(before):
            rows.append({CUSTOMER_ID: f"c{k}", "as_of": as_of, "orders_count": float(len(before)),
                         "recency_days": as_of - before[-1], "days_since_first_order": as_of - before[0],
                         "revenue": len(before) * rng.lognormal(3, 0.5), "tenure_days": as_of - before[0] + 5,
                         LABEL: int(not ((days >= as_of) & (days < as_of + HORIZON)).any())})
    frame = pd.DataFrame(rows)
    for j in range(4):
        frame[f"noise_{j}"] = rng.normal(size=len(frame))
    return frame


@pytest.fixture(scope="module")
def folds() -> dict[str, pd.DataFrame]:
    shop = _bgnbd_shop(4_000, 1)
    return {"train": pd.concat([_frame(shop, 600, 2), _frame(shop, 630, 3)], ignore_index=True),
            "valid": _frame(shop, 660, 4), "calibration": _frame(shop, 690, 5)}


@pytest.fixture(scope="module")
def bundles(folds: dict[str, pd.DataFrame]) -> dict[str, ModelBundle]:
    columns = [*COLUMNS, "revenue", "tenure_days", *(f"noise_{j}" for j in range(4))]
    return {kind: fit_kind(kind, folds["train"], folds["valid"], folds["calibration"], columns, LABEL, HORIZON, FAST,
                           0, {"trained_as_of": "2026-01-01"}) for kind in candidate_kinds(LABEL)}


def test_on_a_bgnbd_shop_the_bgnbd_kind_is_chosen(folds: dict[str, pd.DataFrame], bundles: dict[str, ModelBundle]) -> None:
    model = bundles[BGNBD].formula
    assert model.r == pytest.approx(PARAMS["r"], rel=0.25) and model.alpha == pytest.approx(PARAMS["alpha"], rel=0.35)
    choice = choose_classifier(bundles, folds["calibration"], LABEL)
    assert choice.kind == BGNBD, choice.reason
    assert set(choice.roc_auc) == {XGBOOST, LOGISTIC, BGNBD}
    assert all(f"{kind} {choice.roc_auc[kind]:.4f}" in choice.reason for kind in (XGBOOST, LOGISTIC))


def test_the_kinds_compared_and_a_kind_that_does_not_exist(folds: dict[str, pd.DataFrame]) -> None:
    assert candidate_kinds("churned") == (XGBOOST, LOGISTIC, BGNBD)
    assert candidate_kinds("purchased") == (XGBOOST, LOGISTIC)
    with pytest.raises(InputError, match="churn only"):
        fit_kind(BGNBD, folds["train"], folds["valid"], folds["calibration"], [], "purchased", 30, {}, 0, {})
    with pytest.raises(InputError, match="must be one of xgboost, logistic, bgnbd. Got 'forest'"):
        fit_kind("forest", folds["train"], folds["valid"], folds["calibration"], [], LABEL, HORIZON, {}, 0, {})


def test_a_tie_goes_to_the_simplest_kind(folds: dict[str, pd.DataFrame], bundles: dict[str, ModelBundle]) -> None:
    same = bundles[BGNBD]
    assert choose_classifier({XGBOOST: same, LOGISTIC: same, BGNBD: same}, folds["calibration"], LABEL).kind == LOGISTIC
    assert choose_classifier({XGBOOST: same, BGNBD: same}, folds["calibration"], LABEL).kind == BGNBD
    assert choose_classifier({BGNBD: same, XGBOOST: same}, folds["calibration"], LABEL).kind == BGNBD


@pytest.mark.parametrize("kind", [XGBOOST, LOGISTIC, BGNBD])
def test_a_bundle_of_every_kind_saves_and_loads(tmp_path: Path, folds: dict[str, pd.DataFrame],
                                                bundles: dict[str, ModelBundle], kind: str) -> None:
    bundle, frame = bundles[kind], folds["calibration"]
    loaded = ModelBundle.load(bundle.save(tmp_path).parent)
    assert loaded.kind == kind and loaded.columns == bundle.columns and (loaded.booster is None) == (kind != XGBOOST)
    np.testing.assert_array_equal(loaded.predict_proba(frame), bundle.predict_proba(frame))
    np.testing.assert_allclose(loaded.contributions(frame), bundle.contributions(frame), rtol=1e-6, atol=1e-6)
    if kind == BGNBD:
        assert loaded.formula == bundle.formula


def test_bundles_saved_before_the_bgnbd_kind_still_load(tmp_path: Path, folds: dict[str, pd.DataFrame],
                                                        bundles: dict[str, ModelBundle]) -> None:
    """A logistic bundle's descriptor as it has been written (its model under "linear"), and an
    XGBoost one from before kinds (no "kind")."""
    frame, logistic = folds["calibration"], bundles[LOGISTIC]
    (tmp_path / "logistic").mkdir()
    (tmp_path / "logistic" / BUNDLE_FILE).write_text(json.dumps({
        "target": LABEL, "horizon_days": HORIZON, "columns": logistic.columns,
        "calibrator": logistic.calibrator.to_dict(), "meta": {}, "kind": "logistic",
        "linear": logistic.formula.to_dict()}))
    old = ModelBundle.load(tmp_path / "logistic")
    assert old.kind == LOGISTIC
    np.testing.assert_array_equal(old.predict_proba(frame), logistic.predict_proba(frame))
    path = bundles[XGBOOST].save(tmp_path / "xgboost")
    descriptor = json.loads(path.read_text())
    del descriptor["kind"]
    path.write_text(json.dumps(descriptor))
    assert ModelBundle.load(path.parent).kind == XGBOOST
    descriptor["kind"] = "forest"
    path.write_text(json.dumps(descriptor))
    with pytest.raises(InputError, match="kind is 'forest'; expected one of xgboost, logistic, bgnbd"):
        ModelBundle.load(path.parent)


def test_a_registered_bgnbd_bundle_serves_calibrated_probabilities_and_its_recipe_refits(
        tmp_path: Path, folds: dict[str, pd.DataFrame], bundles: dict[str, ModelBundle]) -> None:
    frame, bundle = folds["calibration"], bundles[BGNBD]
    configure_tracking(tmp_path / "mlruns")
    mlflow.set_experiment("bgnbd-classifier")  # this store's: not the experiment another test's store left active
    with mlflow.start_run():
        version = log_and_register(bundle, "churn", frame.head(20), bundle.predict_proba(frame.head(20)))
    loaded = load_version("churn", version)
    assert loaded.kind == BGNBD and loaded.booster is None
    np.testing.assert_array_equal(loaded.predict_proba(frame), bundle.predict_proba(frame))
    served = mlflow.pyfunc.load_model(f"models:/churn/{version}").predict(frame[COLUMNS].astype("float32"))
    np.testing.assert_allclose(np.asarray(served), bundle.predict_proba(frame))  # calibrated, as the service's
    assert not np.allclose(bundle.predict_proba(frame), bundle.raw_proba(frame))
    # sendwise run: a champion of this kind is refitted by its recipe
    recipe = classifier_recipe("churn", version)
    assert recipe.kind == BGNBD and recipe.params == {} and recipe.horizon_days == HORIZON
    refit = fit_kind(recipe.kind, folds["valid"], folds["valid"], frame, [], LABEL, recipe.horizon_days, recipe.params,
                     0, {})
    assert refit.kind == BGNBD and refit.formula != bundle.formula


# -- scoring a BG/NBD churn model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shop(demo_tables: Tables) -> tuple[pd.DataFrame, pd.Timestamp]:
    at = data_end(demo_tables) + timedelta(microseconds=1)
    return build_features(demo_tables, at), pd.Timestamp(at)


@pytest.fixture(scope="module")
def demo_models(shop) -> tuple[ModelBundle, ModelBundle]:
    """A BG/NBD churn model (with a CLV model) and a logistic propensity model on the demo shop."""
    features, at = shop
    labelled = features.assign(churned=(features["recency_days"].fillna(1e9) > 60).astype(int),
                               purchased=(features["views_30d"] > 2).astype(int))
    buyers = labelled[labelled["orders_count"] > 0]
    columns = feature_columns(features)
    churn = fit_kind(BGNBD, buyers, buyers, buyers, columns, LABEL, HORIZON, {}, 0,
                     {CLV_KEY: fit_clv_features(features, at).to_dict()})
    propensity = fit_kind(LOGISTIC, labelled, labelled, labelled, columns, "purchased", 30, {}, 0, {})
    return churn, propensity


def _same(got: object, want: object) -> bool:
    if want is None or (not isinstance(want, str) and pd.isna(want)):
        return got is None or (not isinstance(got, str) and bool(pd.isna(got)))
    if isinstance(want, float | np.floating):
        return np.isclose(got, want, rtol=1e-9, atol=0)
    return got == want


def test_score_row_equals_score_features_with_a_bgnbd_churn_model(shop, demo_models) -> None:
    features, at = shop
    churn, propensity = demo_models
    rows = pd.concat([features[features["orders_count"] > 1].head(40), features[features["orders_count"] == 1].head(10),
                      features[features["orders_count"] == 0].head(10)], ignore_index=True)
    batch = score_features(rows, churn, propensity)
    buyers = rows["orders_count"] > 0
    assert batch.loc[buyers, "churn_probability"].between(0, 1).all()
    # a buyer more likely to churn than the reference customer has a reason saying why
    above = buyers & (churn.formula.log_odds(churn.matrix(rows)) > churn.formula.log_odds(np.array([churn.formula.reference]))[0])
    assert above.sum() > 20 and batch.loc[above, "reason_1"].notna().all()
    assert batch.loc[~buyers, "churn_probability"].isna().all()
    for i, values in enumerate(rows.drop(columns=CUSTOMER_ID).to_dict("records")):
        one = score_row(values, churn, propensity, at)
        for name, want in batch.iloc[i].items():
            if name != CUSTOMER_ID:
                assert _same(one[name], want), (i, name, one[name], want)


@pytest.mark.spark
def test_a_bgnbd_churn_model_scores_on_spark_as_locally(spark: object, shop, demo_models) -> None:
    from features.spark import to_pandas
    from training.spark_scoring import score_spark

    features, _ = shop
    churn, propensity = demo_models
    local = score_features(features, churn, propensity).astype({"next_order_date": "datetime64[us]"})
    remote = to_pandas(score_spark(spark.createDataFrame(features), churn, propensity))
    pd.testing.assert_frame_equal(remote.sort_values(CUSTOMER_ID, ignore_index=True),
                                  local.sort_values(CUSTOMER_ID, ignore_index=True), check_exact=False, rtol=1e-9, atol=0)


def test_a_shop_with_few_repeat_buyers_still_gets_a_bgnbd_candidate(folds: dict[str, pd.DataFrame]) -> None:
    """Unlike the CLV model, no minimum of repeat buyers: the validation month judges the fit."""
    frame = folds["train"]
    few = pd.concat([frame[frame["orders_count"] > 1].head(5), frame[frame["orders_count"] == 1].head(200)])
    model = BgNbdChurnModel.fit(few, HORIZON)
    assert np.isfinite(model.raw_proba(BgNbdChurnModel.matrix(frame))).all()
    with pytest.raises(InputError, match="needs customers with an order"):
        BgNbdChurnModel.fit(few.assign(orders_count=0), HORIZON)
    with pytest.raises(InputError, match="lack days_since_first_order"):
        BgNbdChurnModel.fit(few.drop(columns="days_since_first_order"), HORIZON)
