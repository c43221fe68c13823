"""The BG/NBD quantity as a churn classifier: P(no order in the next ``horizon_days``), the churn label
itself under the buy-till-you-die model of :mod:`training.clv`.

It reads three model inputs (:data:`COLUMNS`), which give the model's frequency, recency and T
(:func:`training.clv.bgnbd_inputs`, the arithmetic of :func:`training.clv.features_summary`). The
parameters (r, alpha, a, b) are fitted by :func:`training.clv.fit_bgnbd` on the customers with an
order at one as_of; no label is read (the calibrator, fitted on the calibration month, maps the
quantity to the shop's churn rate). A customer at T with x repeat orders places none in the next h days
with probability

    P(churn) = (1 - P_alive) + P_alive ((alpha + T) / (alpha + T + h))^(r + x)

(:func:`training.clv.no_order_log_odds`). For a row without an order (x = 0, T = 0) it is the prior
(alpha / (alpha + h))^r, so that scoring never meets a NaN; churn is only scored for customers with an
order (:func:`training.scoring.score_features`).

Reasons: :meth:`BgNbdChurnModel.contributions` are exact Shapley values of the log-odds over the three
inputs against a reference customer (the fitted population's medians), bias last: the log-odds of the
reference. They sum to the row's log-odds, as XGBoost's contributions do.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from math import factorial

import numpy as np
import pandas as pd
from scipy.special import expit

from features.errors import InputError
from training.clv import bgnbd_inputs, fit_bgnbd, no_order_log_odds
from training.design import design_matrix

__all__ = ["COLUMNS", "BgNbdChurnModel"]

COLUMNS = ["orders_count", "recency_days", "days_since_first_order"]
_N = len(COLUMNS)
_COALITIONS = np.array(list(product((False, True), repeat=_N)))  # every subset of inputs taken from the row


def _shapley_pairs() -> list[list[tuple[int, int, float]]]:
    """For each input j, the (coalition with j, the same without j, weight) triples of its Shapley value;
    weight |S|! (n - |S| - 1)! / n! of the coalition S without j."""
    index = {tuple(bool(v) for v in c): k for k, c in enumerate(_COALITIONS)}
    pairs: list[list[tuple[int, int, float]]] = [[] for _ in range(_N)]
    for k, coalition in enumerate(_COALITIONS):
        for j in np.flatnonzero(coalition):
            size = int(coalition.sum()) - 1
            without = tuple(bool(c) and i != j for i, c in enumerate(coalition))
            pairs[j].append((k, index[without], factorial(size) * factorial(_N - size - 1) / factorial(_N)))
    return pairs


_PAIRS = _shapley_pairs()


@dataclass(frozen=True)
class BgNbdChurnModel:
    """Fitted BG/NBD parameters, the horizon they predict over, and the reference row (medians of
    :data:`COLUMNS` over the customers fitted on) the contributions are measured against."""

    r: float
    alpha: float
    a: float
    b: float
    horizon_days: int
    reference: tuple[float, ...]

    @classmethod
    def fit(cls, features: pd.DataFrame, horizon_days: int) -> BgNbdChurnModel:
        """Fit on the customers with an order in ``features`` (rows of one as_of)."""
        if int(horizon_days) < 1:
            raise InputError(f"The BG/NBD churn model's horizon_days must be at least 1. Got {horizon_days} instead.")
        missing = [c for c in COLUMNS if c not in features.columns]
        if missing:
            raise InputError(f"the features lack {', '.join(missing)}, which the BG/NBD churn model reads "
                             f"({', '.join(COLUMNS)}).")
        matrix = cls.matrix(features)
        buyers = matrix[np.nan_to_num(matrix[:, 0]) > 0]
        if not len(buyers):
            raise InputError("The BG/NBD churn model needs customers with an order to fit on; the rows have none "
                             "(orders_count is 0 or missing in every row).")
        x, tx, T = bgnbd_inputs(*buyers.T)
        # no minimum of repeat buyers, unlike the CLV model: a fit on few ranks the validation month badly
        # and is not chosen, and a shop with few repeat buyers still gets its run
        params = fit_bgnbd(pd.DataFrame({"frequency": x, "recency": tx, "T": T}), min_repeat_buyers=0)
        reference = tuple(float(v) for v in np.nanmedian(buyers.astype(float), axis=0))
        return cls(**params, horizon_days=int(horizon_days), reference=reference)

    @staticmethod
    def matrix(features: pd.DataFrame) -> np.ndarray:
        return design_matrix(features, COLUMNS).to_numpy(np.float32)

    def log_odds(self, matrix: np.ndarray) -> np.ndarray:
        """Log-odds of no order in the horizon for each row of a :data:`COLUMNS` matrix."""
        x, tx, T = bgnbd_inputs(*np.asarray(matrix, float).T)
        return no_order_log_odds(self.r, self.alpha, self.a, self.b, x, tx, T, self.horizon_days)

    def raw_proba(self, matrix: np.ndarray) -> np.ndarray:
        """P(no order in the next ``horizon_days``) of each row of a :data:`COLUMNS` matrix."""
        return expit(self.log_odds(matrix))

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        return self.raw_proba(self.matrix(features))

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """Exact Shapley values of :meth:`log_odds` over the inputs of :data:`COLUMNS` against
        :attr:`reference` (an input outside a coalition takes the reference's value), one column per
        input, and the bias last (the reference's log-odds): each row sums to its log-odds."""
        x = np.asarray(matrix, float)
        reference = np.array(self.reference, float)
        values = np.stack([self.log_odds(np.where(coalition, x, reference)) for coalition in _COALITIONS], axis=1)
        out = np.empty((len(x), _N + 1))
        for j, pairs in enumerate(_PAIRS):
            # differences of equal inputs are exactly 0, and each row's sum is the same in any batch
            out[:, j] = sum(w * (values[:, with_j] - values[:, without_j]) for with_j, without_j, w in pairs)
        out[:, -1] = values[:, 0]  # the empty coalition: the reference row
        return out

    def to_dict(self) -> dict:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b, "horizon_days": self.horizon_days,
                "reference": list(self.reference)}

    @classmethod
    def from_dict(cls, data: dict) -> BgNbdChurnModel:
        missing = sorted({"r", "alpha", "a", "b", "horizon_days", "reference"} - set(data))
        if missing:
            raise InputError(f"The saved BG/NBD churn model lacks {', '.join(missing)}; expected the keys of "
                             "BgNbdChurnModel.to_dict().")
        return cls(*(float(data[k]) for k in ("r", "alpha", "a", "b")), int(data["horizon_days"]),
                   tuple(float(v) for v in data["reference"]))
