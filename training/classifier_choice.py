"""Which classifier a shop gets: XGBoost on every feature, or the logistic model on log-RFM
(:mod:`training.linear`), whichever ranks the validation month better.

Both are fitted on the same folds (:class:`training.train.Folds`): XGBoost on the training folds with
early stopping on the validation fold, the logistic model on both. Neither has seen the calibration
fold (the latest labelled month before the holdout), so it is the validation month here: the kind with
the higher ROC-AUC of its raw scores there is shipped (calibrated on that month afterwards, which keeps
the ranking); on a tie the logistic model, the simpler one. On a shop where every feature but
recency, frequency and spend is noise, the shop gets the model that does not learn the noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sklearn.metrics import roc_auc_score

from training.fitting import fit_bundle, fit_logistic_bundle
from training.model import LOGISTIC, XGBOOST, ModelBundle

__all__ = ["KINDS", "ClassifierChoice", "candidate_kinds", "choose_classifier", "fit_kind"]

KINDS = (XGBOOST, LOGISTIC)


def candidate_kinds(label: str) -> tuple[str, ...]:
    """The kinds compared for a classifier of ``label`` (churned or purchased)."""
    return KINDS


@dataclass(frozen=True)
class ClassifierChoice:
    """The kind chosen, each kind's validation ROC-AUC, and why, in words."""

    kind: str
    roc_auc: dict[str, float]
    reason: str


def fit_kind(kind: str, train: pd.DataFrame, valid: pd.DataFrame, calibration: pd.DataFrame, columns: list[str],
             label: str, horizon_days: int, params: dict, random_state: int, meta: dict) -> ModelBundle:
    """One calibrated bundle of ``kind`` (``params``: XGBoost's)."""
    if kind == LOGISTIC:
        return fit_logistic_bundle(train, valid, calibration, label, horizon_days, random_state, meta)
    return fit_bundle(train, valid, calibration, columns, label, horizon_days, params, random_state, meta)[0]


def choose_classifier(bundles: dict[str, ModelBundle], calibration: pd.DataFrame, label: str) -> ClassifierChoice:
    """The kind of ``bundles`` (kind -> fitted bundle) whose raw scores rank ``calibration`` best."""
    y = calibration[label].to_numpy(int)
    if y.min() == y.max():
        return ClassifierChoice(XGBOOST, {}, f"the validation month has only one class of {label}: XGBoost kept")
    auc = {kind: float(roc_auc_score(y, bundle.raw_proba(calibration))) for kind, bundle in bundles.items()}
    order = sorted(auc, key=lambda kind: (auc[kind], kind == LOGISTIC), reverse=True)
    best, other = order[0], order[1:]
    versus = ", ".join(f"{kind} {auc[kind]:.4f}" for kind in other)
    return ClassifierChoice(best, auc, f"{best}: validation ROC-AUC {auc[best]:.4f} against {versus} "
                                       f"({len(y):,} customers of the latest labelled month before the holdout)")
