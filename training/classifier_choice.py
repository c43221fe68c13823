"""Which classifier a shop gets: XGBoost on every feature, the logistic model on log-RFM
(:mod:`training.linear`) or, for churn, the BG/NBD quantity P(no order in the horizon)
(:mod:`training.bgnbd_classifier`), whichever ranks the validation month best.

All are fitted on the same folds (:class:`training.train.Folds`): XGBoost on the training folds with
early stopping on the validation fold, the logistic model on both, BG/NBD on the training fold's latest
as_of (no label). None has seen the calibration fold (the latest labelled month before the holdout), so
it is the validation month here: the kind with the higher ROC-AUC of its raw scores there is shipped
(calibrated on that month afterwards, which keeps the ranking); on a tie the simplest: logistic, then
BG/NBD, then XGBoost. On a shop where every feature but recency, frequency and spend is noise, the shop
gets a model that does not learn the noise; on one whose customers buy as BG/NBD assumes, BG/NBD.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from sklearn.metrics import roc_auc_score

from features.errors import InputError
from features.training_set import Target
from training.fitting import fit_bgnbd_bundle, fit_bundle, fit_logistic_bundle
from training.model import BGNBD, LOGISTIC, XGBOOST, ModelBundle

__all__ = ["KINDS", "SIMPLEST_FIRST", "ClassifierChoice", "candidate_kinds", "choose_classifier", "fit_candidates",
           "fit_kind"]

KINDS = (XGBOOST, LOGISTIC, BGNBD)
SIMPLEST_FIRST = (LOGISTIC, BGNBD, XGBOOST)  # who wins a tie of validation ROC-AUC


def candidate_kinds(label: str) -> tuple[str, ...]:
    """The kinds compared for a classifier of ``label`` (churned or purchased): every kind for churn;
    no BG/NBD for purchase propensity, which scores every known customer while BG/NBD has nothing to say
    about customers who never ordered."""
    return KINDS if label == Target.CHURNED.value else (XGBOOST, LOGISTIC)


@dataclass(frozen=True)
class ClassifierChoice:
    """The kind chosen, each kind's validation ROC-AUC, and why, in words."""

    kind: str
    roc_auc: dict[str, float]
    reason: str


def fit_kind(kind: str, train: pd.DataFrame, valid: pd.DataFrame, calibration: pd.DataFrame, columns: list[str],
             label: str, horizon_days: int, params: dict, random_state: int, meta: dict) -> ModelBundle:
    """One calibrated bundle of ``kind`` (``params``: XGBoost's; ``columns``: XGBoost's inputs)."""
    if kind == LOGISTIC:
        return fit_logistic_bundle(train, valid, calibration, label, horizon_days, random_state, meta)
    if kind == BGNBD:
        return fit_bgnbd_bundle(train, calibration, label, horizon_days, random_state, meta)
    if kind == XGBOOST:
        return fit_bundle(train, valid, calibration, columns, label, horizon_days, params, random_state, meta)[0]
    raise InputError(f"The classifier kind must be one of {', '.join(KINDS)}. Got {kind!r} instead.")


def fit_candidates(kinds: tuple[str, ...], fit: Callable[[str], ModelBundle]) -> tuple[dict[str, ModelBundle],
                                                                                       dict[str, str]]:
    """``fit(kind)`` for each of ``kinds``: the bundles, and the kinds whose fit the shop's data refused
    (an InputError: say, a BG/NBD likelihood without a finite maximum) with the reason. Those are left out
    of the comparison rather than failing the command; an InputError naming every reason when none fits."""
    bundles, failed = {}, {}
    for kind in kinds:
        try:
            bundles[kind] = fit(kind)
        except InputError as exc:
            failed[kind] = str(exc)
    if not bundles:
        raise InputError("No classifier kind could be fitted on this data: "
                         + "; ".join(f"{kind}: {why}" for kind, why in failed.items()))
    return bundles, failed


def choose_classifier(bundles: dict[str, ModelBundle], calibration: pd.DataFrame, label: str,
                      failed: dict[str, str] | None = None) -> ClassifierChoice:
    """The kind of ``bundles`` (kind -> fitted bundle) whose raw scores rank ``calibration`` best;
    ``failed`` (kind -> why it was not fitted, from :func:`fit_candidates`) is named in the reason."""
    y = calibration[label].to_numpy(int)
    left_out = "".join(f"; {kind} not fitted: {why}" for kind, why in (failed or {}).items())
    if y.min() == y.max():
        kept = XGBOOST if XGBOOST in bundles else next(iter(bundles))
        return ClassifierChoice(kept, {}, f"the validation month has only one class of {label}: {kept} kept"
                                          + left_out)
    auc = {kind: float(roc_auc_score(y, bundle.raw_proba(calibration))) for kind, bundle in bundles.items()}
    order = sorted(auc, key=lambda kind: (-auc[kind], SIMPLEST_FIRST.index(kind)))
    best, other = order[0], order[1:]
    versus = ", ".join(f"{kind} {auc[kind]:.4f}" for kind in other) or "no other kind"
    return ClassifierChoice(best, auc, f"{best}: validation ROC-AUC {auc[best]:.4f} against {versus} "
                                       f"({len(y):,} customers of the latest labelled month before the holdout)"
                                       + left_out)
