"""Logistic regression on log(1 + recency, frequency, spend): the simple model every classifier is
measured against, and the one a shop gets when XGBoost does not beat it (training/classifier_choice.py).

It reads four model inputs (:data:`COLUMNS`); a customer without an order has no recency and is given
their tenure instead (as long absent as they have been known). Inputs are standardised, so its
contributions to the log-odds are ``coef * z`` per input, which gives reasons in the registry's words
like XGBoost's contributions do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from training.design import design_matrix

__all__ = ["COLUMNS", "LogRFMModel"]

COLUMNS = ["recency_days", "orders_count", "revenue", "tenure_days"]  # tenure stands in for a missing recency
_INPUTS = 3  # recency (or tenure), orders, revenue


def _log_inputs(matrix: np.ndarray) -> np.ndarray:
    """(n, 3) log(1 + recency or tenure, orders, revenue) from a (n, 4) matrix of :data:`COLUMNS`."""
    x = np.asarray(matrix, float)[:, :_INPUTS].copy()
    x[:, 0] = np.where(np.isnan(x[:, 0]), matrix[:, 3], x[:, 0])
    return np.log1p(np.nan_to_num(np.clip(x, 0, None), nan=0.0))


@dataclass(frozen=True)
class LogRFMModel:
    """A fitted logistic regression on standardised log-RFM inputs."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    @classmethod
    def fit(cls, features: pd.DataFrame, y: np.ndarray) -> LogRFMModel:
        """Fit on a feature frame and its 0/1 labels."""
        logs = _log_inputs(cls.matrix(features))
        mean, scale = logs.mean(axis=0), logs.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        model = LogisticRegression().fit((logs - mean) / scale, np.asarray(y, int))
        return cls(tuple(map(float, mean)), tuple(map(float, scale)), tuple(map(float, model.coef_[0])),
                   float(model.intercept_[0]))

    @staticmethod
    def matrix(features: pd.DataFrame) -> np.ndarray:
        return design_matrix(features, COLUMNS).to_numpy(np.float32)

    def _z(self, matrix: np.ndarray) -> np.ndarray:
        return (_log_inputs(matrix) - np.array(self.mean)) / np.array(self.scale)

    def raw_proba(self, matrix: np.ndarray) -> np.ndarray:
        """P(label) of each row of a :data:`COLUMNS` matrix."""
        return 1 / (1 + np.exp(-(self._z(matrix) @ np.array(self.coef) + self.intercept)))

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        return self.raw_proba(self.matrix(features))

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """Per-input contributions to the log-odds, as XGBoost gives them: one column per input of
        :data:`COLUMNS` (tenure's is 0: it only stands in for recency) and the bias last."""
        parts = self._z(matrix) * np.array(self.coef)
        out = np.zeros((len(parts), len(COLUMNS) + 1), np.float32)
        out[:, :_INPUTS] = parts
        out[:, -1] = self.intercept
        return out

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "scale": list(self.scale), "coef": list(self.coef), "intercept": self.intercept}

    @classmethod
    def from_dict(cls, data: dict) -> LogRFMModel:
        return cls(tuple(data["mean"]), tuple(data["scale"]), tuple(data["coef"]), float(data["intercept"]))
