"""Batch scoring of every known customer with the champion churn and propensity models, and their
lifetime value from the CLV model fitted with the churn model (:mod:`training.clv`, kept in its
metadata): expected orders and spend over the horizon, P(alive) and the next order date."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from functools import lru_cache

import numpy as np
import pandas as pd
from threadpoolctl import ThreadpoolController

from features.build import build_features, to_timestamp
from features.config import FeatureConfig
from features.errors import InputError
from features.schema import CUSTOMER_ID
from features.tables import Tables
from features.validate import ContractError
from training.clv import ClvModel, features_summary, features_summary_row
from training.design import design_row, trained_feature_config
from training.model import ModelBundle
from training.reasons import reasons_frame, top_reasons, top_reasons_row

# churn_risk bands by churn probability: [0, 0.3) low, [0.3, 0.6) medium, [0.6, 1] high;
# none for prospects (no order yet, so churn does not apply)
RISK_CUTS = (0.3, 0.6)
RISK_LABELS = ("low", "medium", "high")
CHUNK = 200_000
REASONS = 3
CLV_KEY = "clv"  # the churn model's metadata key of its CLV model (ClvModel.to_dict())
CLV_FIELDS = ("expected_orders", "predicted_clv", "p_alive", "next_order_date")


def risk_band(p: np.ndarray) -> np.ndarray:
    return np.array(RISK_LABELS, dtype=object)[np.searchsorted(RISK_CUTS, p, side="right")]


def clv_model(churn: ModelBundle) -> ClvModel | None:
    """The CLV model fitted with ``churn`` (None for a model trained without one)."""
    saved = churn.meta.get(CLV_KEY)
    return None if saved is None else ClvModel.from_dict(saved)


def clv_columns(features: pd.DataFrame, model: ClvModel | None, horizon_days: int | None = None,
                at: datetime | None = None) -> pd.DataFrame:
    """:data:`CLV_FIELDS` for each row of ``features`` (in order, one row per customer) over
    ``horizon_days`` (default: the model's) from ``at`` (default: the features' as_of); missing for a
    customer without an order, or without a model."""
    ids = features[CUSTOMER_ID].to_numpy()
    if model is None or not len(features):
        empty = pd.DataFrame({name: np.full(len(features), np.nan) for name in CLV_FIELDS[:3]})
        return empty.assign(next_order_date=pd.Series([pd.NaT] * len(features), dtype="datetime64[ns]"))
    when = at if at is not None else (features["as_of"].iloc[0] if "as_of" in features else None)
    predicted = model.predict(features_summary(features), horizon_days, when).set_index(CUSTOMER_ID)
    return predicted.reindex(ids)[list(CLV_FIELDS)].reset_index(drop=True)


def score_features(features: pd.DataFrame, churn: ModelBundle, propensity: ModelBundle,
                   progress: Callable[[int], None] | None = None, clv_horizon_days: int | None = None) -> pd.DataFrame:
    """Scores for a feature frame; processed in chunks so that a million rows stay small. The CLV
    fields over ``clv_horizon_days`` (default: the CLV model's horizon)."""
    parts, clv = [], clv_model(churn)
    for start in range(0, len(features), CHUNK):
        chunk = features.iloc[start: start + CHUNK]
        buyer = (chunk["orders_count"] > 0).to_numpy()
        x_churn, x_prop = churn.matrix(chunk), propensity.matrix(chunk)
        # churn is defined for customers with an order; prospects get no churn score, and their
        # reasons come from the propensity model
        churn_p = np.where(buyer, churn.predict_proba(chunk, x_churn), np.nan)
        reasons = np.full((len(chunk), REASONS), None, dtype=object)
        for model, x, rows in ((churn, x_churn, np.flatnonzero(buyer)), (propensity, x_prop, np.flatnonzero(~buyer))):
            if len(rows):
                reasons[rows] = top_reasons(model.contributions(chunk, matrix=x[rows]), x[rows], model.columns, REASONS)
        part = pd.DataFrame({
            CUSTOMER_ID: chunk[CUSTOMER_ID].to_numpy(),
            "churn_probability": churn_p,
            "purchase_probability": propensity.predict_proba(chunk, x_prop),
            "churn_risk": np.where(buyer, risk_band(np.nan_to_num(churn_p)), None),
            "rfm_segment": chunk["rfm_segment"].to_numpy(),
            "lifecycle_stage": chunk["lifecycle_stage"].to_numpy(),
        })
        parts.append(pd.concat([part, clv_columns(chunk, clv, clv_horizon_days), reasons_frame(reasons)], axis=1))
        if progress:
            progress(min(start + CHUNK, len(features)))
    return pd.concat(parts, ignore_index=True)


def score_row(values: dict, churn: ModelBundle, propensity: ModelBundle, at: datetime | None = None) -> dict:
    """One customer's scores from their feature ``values`` at ``at``, equal to the row
    :func:`score_features` gives them, without a frame (the service scores one customer right after an
    event): the models run on one OpenMP thread (:func:`_one_thread`), the reasons and the lifetime value
    come from the one-row helpers (:func:`~training.reasons.top_reasons_row`,
    :meth:`~training.clv.ClvModel.predict_row`)."""
    buyer = (values.get("orders_count") or 0) > 0
    x_prop = design_row(values, propensity.columns)[None, :]
    x_churn = x_prop if churn.columns == propensity.columns else design_row(values, churn.columns)[None, :]
    model, x = (churn, x_churn) if buyer else (propensity, x_prop)
    with _one_thread():
        churn_p = float(churn.predict_proba(None, x_churn)[0]) if buyer else np.nan
        purchase_p = float(propensity.predict_proba(None, x_prop)[0])
        contributions = model.contributions(None, matrix=x)
    reasons = top_reasons_row(contributions[0], x[0], model.columns, REASONS)
    return {"churn_probability": churn_p, "purchase_probability": purchase_p,
            "churn_risk": risk_band(np.array([churn_p]))[0] if buyer else None,
            "rfm_segment": values.get("rfm_segment"), "lifecycle_stage": values.get("lifecycle_stage"),
            **_clv_row(values, clv_model(churn), at),
            **{f"reason_{i + 1}": reason for i, reason in enumerate(reasons)}}


@lru_cache(maxsize=1)
def _openmp() -> ThreadpoolController:
    """The process's OpenMP runtimes (XGBoost's), looked up once (a lookup takes milliseconds)."""
    return ThreadpoolController().select(user_api="openmp")


def _one_thread() -> AbstractContextManager:
    """Run XGBoost on one OpenMP thread in this thread until the block ends (then as before). For one
    row more threads only wait for each other, and, on a machine whose cores are busy, for the
    scheduler: milliseconds per call. One row's predictions are the same on any number of threads."""
    return _openmp().limit(limits=1)


def _clv_row(values: dict, model: ClvModel | None, at: datetime | None) -> dict:
    """:func:`clv_columns` of one customer's ``values``: :data:`CLV_FIELDS`, NaN and NaT for a customer
    without an order or without a model."""
    summary = None if model is None else features_summary_row(values)
    if summary is None:
        return {"expected_orders": np.nan, "predicted_clv": np.nan, "p_alive": np.nan, "next_order_date": pd.NaT}
    predicted = model.predict_row(summary, None, at if at is not None else values.get("as_of"))
    date = predicted["next_order_date"]
    return {name: predicted[name] for name in CLV_FIELDS[:3]} | {"next_order_date": pd.NaT if date is None else date}


def score_customers(tables: Tables, as_of: object, churn: ModelBundle, propensity: ModelBundle,
                    progress: Callable[[int], None] | None = None) -> tuple[pd.DataFrame, datetime]:
    """Score every customer known before ``as_of`` from rows strictly before it."""
    when = to_timestamp(as_of)
    start, _ = tables.time_range()
    if start is None or when <= start:
        raise ContractError(f"--as-of {when:%Y-%m-%dT%H:%M:%S} is not after the first row of the data ({start:%Y-%m-%dT%H:%M:%S}).")
    features = build_features(tables.before(when), when, models_feature_config(churn, propensity))
    return score_features(features, churn, propensity, progress), when


def models_feature_config(*bundles: ModelBundle) -> FeatureConfig:
    """The feature settings the models were trained with; an InputError when they differ (their
    inputs are different columns)."""
    configs = {id(b): trained_feature_config(b.meta) for b in bundles}
    first = next(iter(configs.values()))
    for bundle in bundles:
        if configs[id(bundle)] != first:
            raise InputError(f"the {bundles[0].target} and {bundle.target} models were trained with different feature "
                             "settings (windows or weights): retrain one with the other's --feature-config.")
    return first
