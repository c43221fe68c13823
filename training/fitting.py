"""Fit one calibrated classifier from its folds: parameters (defaults or Optuna), XGBoost with early
stopping on the validation fold, a calibrator on the calibration fold; or the logistic model on
log-RFM (:mod:`training.linear`) on the training and validation folds, or the BG/NBD churn quantity
(:mod:`training.bgnbd_classifier`) on the training fold's latest as_of, calibrated the same way. Used by
``train_classifier`` (training/train.py) and by ``sendwise run``'s backtest and refit (training/retrain.py)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import optuna
import pandas as pd

from features.errors import InputError
from features.training_set import Target
from training import bgnbd_classifier, linear
from training.bgnbd_classifier import BgNbdChurnModel
from training.calibration import fit_calibrator
from training.design import design_matrix
from training.linear import LogRFMModel
from training.model import ModelBundle
from training.tuning import BASE_PARAMS, dmatrix, fit_booster, tune

TrialLogger = Callable[[optuna.Trial, dict, float | None], None]


def matrix(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    return design_matrix(frame, columns).to_numpy(np.float32)


def choose_params(train: pd.DataFrame, valid: pd.DataFrame, columns: list[str], label: str, trials: int,
                  random_state: int, on_trial: TrialLogger | None = None) -> dict:
    """The XGBoost parameters: the defaults, or the best of ``trials`` Optuna trials (validation log-loss)."""
    if trials <= 0:
        return BASE_PARAMS | {"seed": random_state}
    d_train = dmatrix(matrix(train, columns), train[label].to_numpy(int), columns)
    d_valid = dmatrix(matrix(valid, columns), valid[label].to_numpy(int), columns)
    return tune(d_train, d_valid, trials, random_state, on_trial)


def fit_bundle(train: pd.DataFrame, valid: pd.DataFrame, calibration: pd.DataFrame, columns: list[str], label: str,
               horizon_days: int, params: dict, random_state: int, meta: dict) -> tuple[ModelBundle, dict[str, float]]:
    """A calibrated bundle fitted with ``params``, and the calibrators' out-of-fold log-losses. The
    parameters go into ``meta['xgb_params']``, so that a later run can refit the same recipe."""
    d_train = dmatrix(matrix(train, columns), train[label].to_numpy(int), columns)
    d_valid = dmatrix(matrix(valid, columns), valid[label].to_numpy(int), columns)
    booster = fit_booster(params, d_train, d_valid)
    raw_calibration = booster.inplace_predict(matrix(calibration, columns))
    calibrator, losses = fit_calibrator(raw_calibration, calibration[label].to_numpy(int), random_state)
    bundle = ModelBundle(label, horizon_days, columns, booster, calibrator, meta | {"xgb_params": dict(params)})
    bundle.meta["valid_log_loss"] = float(booster.eval(d_valid).split(":")[-1])
    return bundle, losses


def fit_logistic_bundle(train: pd.DataFrame, valid: pd.DataFrame, calibration: pd.DataFrame, label: str,
                        horizon_days: int, random_state: int, meta: dict) -> ModelBundle:
    """The logistic model on log-RFM, fitted on the training and validation folds (it has nothing to
    stop early), calibrated on the calibration fold."""
    fitted = pd.concat([train, valid], ignore_index=True)
    model = LogRFMModel.fit(fitted, fitted[label].to_numpy(int))
    raw = model.raw_proba(LogRFMModel.matrix(calibration))
    calibrator, _ = fit_calibrator(raw, calibration[label].to_numpy(int), random_state)
    return ModelBundle(label, horizon_days, list(linear.COLUMNS), None, calibrator, dict(meta), model)


def fit_bgnbd_bundle(train: pd.DataFrame, calibration: pd.DataFrame, label: str, horizon_days: int,
                     random_state: int, meta: dict) -> ModelBundle:
    """The BG/NBD churn quantity, its parameters fitted on the customers of the training fold's latest
    as_of (their purchase histories; no label is read), calibrated on the calibration fold. Churn only:
    BG/NBD says nothing of customers who never ordered."""
    if label != Target.CHURNED.value:
        raise InputError(f"The BG/NBD model predicts churn only (label {Target.CHURNED.value!r}). Got {label!r}.")
    latest = train[train["as_of"] == train["as_of"].max()] if "as_of" in train else train
    model = BgNbdChurnModel.fit(latest, horizon_days)
    raw = model.raw_proba(BgNbdChurnModel.matrix(calibration))
    calibrator, _ = fit_calibrator(raw, calibration[label].to_numpy(int), random_state)
    return ModelBundle(label, horizon_days, list(bgnbd_classifier.COLUMNS), None, calibrator, dict(meta), model)
