"""Simple baselines evaluated next to every model on the same holdout."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.linear import LogRFMModel


def recency_rule(features: pd.DataFrame, churn: bool) -> np.ndarray:
    """Longer since the last order, more likely to churn (less likely to buy). A ranking, not a
    probability. Customers who never ordered rank as the longest absent."""
    recency = features["recency_days"].astype(float).fillna(features["tenure_days"].astype(float)).to_numpy()
    return recency if churn else -recency


class LogRFMLogistic:
    """Logistic regression on log(1 + recency, frequency, monetary) (:class:`training.linear.LogRFMModel`)."""

    def fit(self, features: pd.DataFrame, y: np.ndarray) -> LogRFMLogistic:
        self.model_ = LogRFMModel.fit(features, y)
        return self

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        return self.model_.predict_proba(features)
