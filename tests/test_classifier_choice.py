"""The logistic model on log-RFM as a shippable classifier (training/linear.py, training/model.py,
training/registry.py) and the choice between it and XGBoost (training/classifier_choice.py)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from features.errors import InputError
from training.classifier_choice import choose_classifier, fit_candidates, fit_kind
from training.linear import COLUMNS, LogRFMModel
from training.model import BGNBD, LOGISTIC, XGBOOST, ModelBundle
from training.registry import load_version, log_and_register
from training.tracking import configure_tracking
from training.tuning import BASE_PARAMS

LABEL = "churned"
FAST = BASE_PARAMS | {"seed": 0, "eta": 0.3}  # the default trees, fewer rounds to converge


def _customers(n: int, seed: int, signal: str) -> pd.DataFrame:
    """``n`` customers whose churn follows log recency (``rfm``) or an interaction of two other
    inputs the logistic model does not read (``interaction``)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "recency_days": rng.exponential(60, n), "orders_count": rng.integers(1, 20, n).astype(float),
        "revenue": rng.exponential(300, n), "tenure_days": rng.uniform(100, 700, n),
        "noise_a": rng.normal(size=n), "noise_b": rng.normal(size=n)})
    frame.loc[rng.random(n) < 0.1, "recency_days"] = np.nan  # prospects: tenure stands in
    if signal == "rfm":
        logit = 1.2 * (np.log1p(frame["recency_days"].fillna(frame["tenure_days"])) - 3.5)
    else:
        logit = 3.0 * np.sign(frame["noise_a"] * frame["noise_b"])
    frame[LABEL] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


def test_the_logistic_model_equals_the_baseline_it_replaces() -> None:
    """Same inputs, scaler and regression as the log-RFM baseline had as a scikit-learn pipeline."""
    frame = _customers(2_000, 1, "rfm")
    x = frame[["recency_days", "orders_count", "revenue"]].astype(float)
    x["recency_days"] = x["recency_days"].fillna(frame["tenure_days"])
    logs = np.log1p(x.clip(lower=0).fillna(0).to_numpy())
    before = make_pipeline(StandardScaler(), LogisticRegression()).fit(logs, frame[LABEL]).predict_proba(logs)[:, 1]
    model = LogRFMModel.fit(frame, frame[LABEL].to_numpy())
    assert np.allclose(model.predict_proba(frame), before, atol=1e-6)
    matrix = LogRFMModel.matrix(frame)
    contributions = model.contributions(matrix)
    assert contributions.shape == (len(frame), len(COLUMNS) + 1) and not contributions[:, 3].any()  # tenure: 0
    assert np.allclose(1 / (1 + np.exp(-contributions.sum(axis=1))), model.raw_proba(matrix), atol=1e-5)
    assert LogRFMModel.from_dict(model.to_dict()) == model


@pytest.mark.parametrize(("signal", "expected"), [("rfm", LOGISTIC), ("interaction", XGBOOST)])
def test_the_kind_that_ranks_the_validation_month_better_is_chosen(signal: str, expected: str) -> None:
    train, valid, calibration = (_customers(n, seed, signal) for n, seed in ((3_000, 2), (1_000, 3), (1_500, 4)))
    columns = [*COLUMNS, "noise_a", "noise_b"]
    bundles = {kind: fit_kind(kind, train, valid, calibration, columns, LABEL, 90, FAST, 0, {})
               for kind in (XGBOOST, LOGISTIC)}
    choice = choose_classifier(bundles, calibration, LABEL)
    assert choice.kind == expected, choice.reason
    assert set(choice.roc_auc) == {XGBOOST, LOGISTIC} and f"{expected}: validation ROC-AUC" in choice.reason


def test_a_tie_goes_to_the_logistic_model() -> None:
    calibration = _customers(500, 5, "rfm")
    fitted = fit_kind(LOGISTIC, calibration, calibration, calibration, list(COLUMNS), LABEL, 90, {}, 0, {})
    choice = choose_classifier({XGBOOST: fitted, LOGISTIC: fitted}, calibration, LABEL)
    assert choice.kind == LOGISTIC


def test_a_registered_logistic_bundle_loads_back_and_serves_calibrated_probabilities(tmp_path: Path) -> None:
    frame = _customers(1_500, 6, "rfm")
    bundle = fit_kind(LOGISTIC, frame, frame, frame, list(COLUMNS), LABEL, 90, {}, 0, {"trained_as_of": "2026-01-01"})
    configure_tracking(tmp_path / "mlruns")
    mlflow.set_experiment("classifier-choice")  # this store's: not the experiment another test's store left active
    with mlflow.start_run():
        version = log_and_register(bundle, "churn", frame.head(20), bundle.predict_proba(frame.head(20)))
    loaded = load_version("churn", version)
    assert loaded.kind == LOGISTIC and loaded.booster is None
    assert np.allclose(loaded.predict_proba(frame), bundle.predict_proba(frame))
    assert np.allclose(loaded.contributions(frame), bundle.contributions(frame))
    served = mlflow.pyfunc.load_model(f"models:/churn/{version}").predict(frame[COLUMNS].astype("float32"))
    assert np.allclose(np.asarray(served), bundle.predict_proba(frame))  # calibrated, as the service's
    with pytest.raises(ValueError, match="exactly one model"):
        ModelBundle(LABEL, 90, list(COLUMNS), None, bundle.calibrator)


class _Scores:
    """A stand-in bundle whose raw scores are one column of the frame."""

    def __init__(self, column: str) -> None:
        self.column = column

    def raw_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return frame[self.column].to_numpy(float)


def test_a_kind_the_data_refuses_is_left_out_of_the_choice_and_named() -> None:
    def fit(kind: str) -> _Scores:
        if kind == BGNBD:
            raise InputError("the BG/NBD likelihood has no finite maximum")
        return _Scores("good" if kind == LOGISTIC else "noise")

    bundles, failed = fit_candidates((XGBOOST, LOGISTIC, BGNBD), fit)
    assert set(bundles) == {XGBOOST, LOGISTIC} and "no finite maximum" in failed[BGNBD]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    month = pd.DataFrame({"churned": y, "good": y + rng.normal(0, 0.5, 400), "noise": rng.random(400)})
    choice = choose_classifier(bundles, month, "churned", failed)
    assert choice.kind == LOGISTIC and set(choice.roc_auc) == {XGBOOST, LOGISTIC}
    assert "bgnbd not fitted: the BG/NBD likelihood has no finite maximum" in choice.reason
    with pytest.raises(InputError, match="No classifier kind could be fitted on this data: bgnbd: the BG/NBD"):
        fit_candidates((BGNBD,), fit)
