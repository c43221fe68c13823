"""Probability calibration: isotonic or Platt, whichever has the lower out-of-fold log-loss."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold

from features.errors import InputError

EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


@dataclass
class Calibrator:
    """Maps a model's raw probability to a calibrated one. ``method``: isotonic or platt."""

    method: str
    params: dict[str, list[float]] = field(default_factory=dict)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, float)
        if self.method == "isotonic":
            return np.interp(raw, self.params["x"], self.params["y"])
        if self.method == "platt":
            a, b = self.params["coef"]
            return 1 / (1 + np.exp(-(a * _logit(raw) + b)))
        raise InputError(f"unknown calibration method {self.method!r}; expected isotonic or platt")

    def to_dict(self) -> dict:
        return {"method": self.method, "params": self.params}

    @classmethod
    def from_dict(cls, data: dict) -> Calibrator:
        return cls(data["method"], data["params"])


def _fit(method: str, raw: np.ndarray, y: np.ndarray) -> Calibrator:
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=EPS, y_max=1 - EPS).fit(raw, y)
        return Calibrator("isotonic", {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})
    lr = LogisticRegression(C=1e6).fit(_logit(raw).reshape(-1, 1), y)
    return Calibrator("platt", {"coef": [float(lr.coef_[0, 0]), float(lr.intercept_[0])]})


def fit_calibrator(raw: np.ndarray, y: np.ndarray, random_state: int = 0) -> tuple[Calibrator, dict[str, float]]:
    """Choose isotonic or Platt by 5-fold out-of-fold log-loss on (raw, y), then fit it on all of it.

    Returns the calibrator and each method's out-of-fold log-loss.
    """
    raw, y = np.asarray(raw, float), np.asarray(y, int)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=random_state)
    losses = {}
    for method in ("isotonic", "platt"):
        oof = np.empty(len(y))
        for fit_idx, eval_idx in folds.split(raw, y):
            oof[eval_idx] = _fit(method, raw[fit_idx], y[fit_idx]).apply(raw[eval_idx])
        losses[method] = float(log_loss(y, np.clip(oof, EPS, 1 - EPS), labels=[0, 1]))
    best = min(losses, key=losses.get)
    return _fit(best, raw, y), losses
