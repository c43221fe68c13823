"""Classification metrics as plain functions of labels and probabilities."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate - mean prediction| over equal-width probability bins, weighted by size."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += mask.sum() * abs(y[mask].mean() - p[mask].mean())
    return total / len(y)


def lift_and_capture(y: np.ndarray, p: np.ndarray, top: float) -> tuple[float, float]:
    """Among the ``top`` share with the highest scores: positive rate / overall rate (lift) and the
    share of all positives they hold (capture). Ties at the cut are broken by position."""
    y = np.asarray(y, float)
    n = max(1, round(top * len(y)))
    chosen = y[np.argsort(-np.asarray(p, float), kind="stable")[:n]]
    base = y.mean()
    return float(chosen.mean() / base) if base else float("nan"), float(chosen.sum() / y.sum()) if y.sum() else float("nan")


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC-AUC, PR-AUC, log-loss, Brier, ECE, lift and capture at the top 10 % and 20 %.

    Log-loss, Brier and ECE need probabilities; for a score that is only a ranking they are NaN.
    """
    y = np.asarray(y, int)
    p = np.asarray(p, float)
    out = {"roc_auc": float(roc_auc_score(y, p)), "pr_auc": float(average_precision_score(y, p))}
    if ((p >= 0) & (p <= 1)).all():
        clipped = np.clip(p, 1e-6, 1 - 1e-6)
        out |= {"log_loss": float(log_loss(y, clipped, labels=[0, 1])),
                "brier": float(brier_score_loss(y, p)),
                "ece": expected_calibration_error(y, p)}
    else:
        out |= {"log_loss": float("nan"), "brier": float("nan"), "ece": float("nan")}
    for top in (0.1, 0.2):
        lift, capture = lift_and_capture(y, p, top)
        out[f"lift_at_{int(top * 100)}"] = lift
        out[f"capture_at_{int(top * 100)}"] = capture
    return out
