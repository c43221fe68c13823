"""Simple baselines evaluated next to every model on the same holdout (the other one, logistic
regression on log RFM, is :class:`training.linear.LogRFMModel`, which a shop may also be given)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def recency_rule(features: pd.DataFrame, churn: bool) -> np.ndarray:
    """Longer since the last order, more likely to churn (less likely to buy). A ranking, not a
    probability. Customers who never ordered rank as the longest absent."""
    recency = features["recency_days"].astype(float).fillna(features["tenure_days"].astype(float)).to_numpy()
    return recency if churn else -recency
