"""Simple baselines evaluated next to every model on the same holdout."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

RFM_COLUMNS = ("recency_days", "orders_count", "revenue")


def recency_rule(features: pd.DataFrame, churn: bool) -> np.ndarray:
    """Longer since the last order, more likely to churn (less likely to buy). A ranking, not a
    probability. Customers who never ordered rank as the longest absent."""
    recency = features["recency_days"].astype(float).fillna(features["tenure_days"].astype(float)).to_numpy()
    return recency if churn else -recency


def _log_rfm(features: pd.DataFrame) -> np.ndarray:
    x = features[list(RFM_COLUMNS)].astype(float)
    x["recency_days"] = x["recency_days"].fillna(features["tenure_days"].astype(float))
    return np.log1p(x.clip(lower=0).fillna(0).to_numpy())


class LogRFMLogistic:
    """Logistic regression on log(1 + recency, frequency, monetary)."""

    def fit(self, features: pd.DataFrame, y: np.ndarray) -> LogRFMLogistic:
        self.model_ = make_pipeline(StandardScaler(), LogisticRegression()).fit(_log_rfm(features), y)
        return self

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        return self.model_.predict_proba(_log_rfm(features))[:, 1]
