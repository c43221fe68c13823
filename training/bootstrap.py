"""Champion against challenger offline: paired bootstrap on one holdout.

Both models are scored on the same rows; each bootstrap resample draws rows (customers) with
replacement and computes both metrics on that same resample, so what the two models have in common
cancels and the interval is of the difference itself.

* ROC-AUC: resamples are stratified by label (positives and negatives drawn separately, so every
  resample has both classes); AUC from ranks (Mann-Whitney), many resamples at once.
* a per-customer metric such as NDCG@10: the difference of the means.

The interval is the percentile interval of the resampled differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from features.errors import InputError

DEFAULT_RESAMPLES = 2000
_CHUNK_CELLS = 20_000_000  # resamples x rows ranked at once


@dataclass(frozen=True)
class PairedDifference:
    metric: str
    champion: float
    challenger: float
    difference: float  # challenger - champion on the full holdout
    interval: tuple[float, float]
    share_not_better: float  # resamples where the challenger is not better
    resamples: int
    rows: int

    @property
    def significant(self) -> bool:
        """The interval excludes zero on the challenger's side."""
        return self.interval[0] > 0


def _auc_of_rows(scores: np.ndarray, positives: int) -> np.ndarray:
    """AUC of each row of ``scores`` whose first ``positives`` columns are the positives."""
    ranks = rankdata(scores, axis=1)
    negatives = scores.shape[1] - positives
    return (ranks[:, :positives].sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    y = np.asarray(y, bool)
    return float(_auc_of_rows(np.concatenate([p[y], p[~y]])[None, :], int(y.sum()))[0])


def paired_auc(y: np.ndarray, champion: np.ndarray, challenger: np.ndarray, resamples: int = DEFAULT_RESAMPLES,
               alpha: float = 0.05, seed: int = 0) -> PairedDifference:
    """Bootstrap interval of ROC-AUC(challenger) - ROC-AUC(champion) on the same labelled rows."""
    y = np.asarray(y, bool)
    champion, challenger = np.asarray(champion, float), np.asarray(challenger, float)
    if not (len(y) == len(champion) == len(challenger)):
        raise InputError(f"labels and both models' scores must have one value per row; got {len(y)}, "
                         f"{len(champion)}, {len(challenger)}")
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if len(pos) < 2 or len(neg) < 2:
        raise InputError(f"the holdout needs at least 2 positive and 2 negative rows; got {len(pos)} and {len(neg)}")
    rng = np.random.default_rng(seed)
    diffs = []
    per_chunk = max(1, _CHUNK_CELLS // len(y))
    for start in range(0, resamples, per_chunk):
        b = min(per_chunk, resamples - start)
        rows = np.hstack([pos[rng.integers(0, len(pos), (b, len(pos)))], neg[rng.integers(0, len(neg), (b, len(neg)))]])
        diffs.append(_auc_of_rows(challenger[rows], len(pos)) - _auc_of_rows(champion[rows], len(pos)))
    return _result("roc_auc", roc_auc(y, champion), roc_auc(y, challenger), np.concatenate(diffs), alpha, len(y))


def paired_mean(champion: np.ndarray, challenger: np.ndarray, metric: str, resamples: int = DEFAULT_RESAMPLES,
                alpha: float = 0.05, seed: int = 0) -> PairedDifference:
    """Bootstrap interval of mean(challenger) - mean(champion) of a per-customer metric."""
    champion, challenger = np.asarray(champion, float), np.asarray(challenger, float)
    if len(champion) != len(challenger) or len(champion) < 2:
        raise InputError(f"need the same customers (at least 2) for both models; got {len(champion)} and {len(challenger)}")
    rng = np.random.default_rng(seed)
    delta = challenger - champion
    diffs = np.concatenate([delta[rng.integers(0, len(delta), (min(1000, resamples - s), len(delta)))].mean(axis=1)
                            for s in range(0, resamples, 1000)])
    return _result(metric, float(champion.mean()), float(challenger.mean()), diffs, alpha, len(delta))


def _result(metric: str, champion: float, challenger: float, diffs: np.ndarray, alpha: float, rows: int) -> PairedDifference:
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return PairedDifference(metric, champion, challenger, challenger - champion, (float(low), float(high)),
                            float((diffs <= 0).mean()), len(diffs), rows)
