"""Paired bootstrap of champion against challenger, and the promotion rule built on it."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.bootstrap import PairedDifference, paired_auc, paired_mean, roc_auc
from training.promotion import _significant


def _delong_difference_se(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """DeLong's standard error of AUC(b) - AUC(a) on the same rows (an independent reference)."""
    pos, neg = y == 1, y == 0

    def components(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, z = s[pos][:, None], s[neg][None, :]
        psi = (x > z) + 0.5 * (x == z)
        return psi.mean(axis=1), psi.mean(axis=0)

    (va, wa), (vb, wb) = components(a), components(b)
    s10 = np.cov(np.vstack([va, vb]))
    s01 = np.cov(np.vstack([wa, wb]))
    contrast = np.array([-1.0, 1.0])
    return float(np.sqrt(contrast @ s10 @ contrast / pos.sum() + contrast @ s01 @ contrast / neg.sum()))


@pytest.fixture
def holdout() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 1500
    y = (rng.random(n) < 0.4).astype(int)
    signal = y + rng.normal(0, 1.2, n)
    return y, signal + rng.normal(0, 0.8, n), signal + rng.normal(0, 0.3, n)


def test_auc_matches_sklearn_and_identical_models_differ_by_nothing(holdout) -> None:
    y, champion, _ = holdout
    assert roc_auc(y, champion) == pytest.approx(roc_auc_score(y, champion))
    same = paired_auc(y, champion, champion, resamples=200)
    assert same.difference == 0 and same.interval == (0.0, 0.0) and not same.significant


def test_better_challenger_is_significant_and_interval_matches_delong(holdout) -> None:
    y, champion, challenger = holdout
    result = paired_auc(y, champion, challenger, resamples=2000, seed=1)
    assert result.champion == pytest.approx(roc_auc_score(y, champion))
    assert result.difference == pytest.approx(roc_auc_score(y, challenger) - roc_auc_score(y, champion))
    assert result.significant and result.share_not_better < 0.025
    bootstrap_se = (result.interval[1] - result.interval[0]) / (2 * 1.96)
    assert bootstrap_se == pytest.approx(_delong_difference_se(y, champion, challenger), rel=0.15)


def test_paired_mean_of_per_customer_metrics() -> None:
    rng = np.random.default_rng(2)
    champion = rng.random(3000)
    result = paired_mean(champion, champion + 0.05 + rng.normal(0, 0.1, 3000), "ndcg_at_10", resamples=1000)
    assert result.difference == pytest.approx(0.05, abs=0.01) and result.significant
    noise = paired_mean(champion, champion + rng.normal(0, 0.1, 3000), "ndcg_at_10", resamples=1000)
    assert noise.interval[0] < 0 < noise.interval[1]
    with pytest.raises(ValueError, match="same customers"):
        paired_mean(champion, champion[:10], "ndcg_at_10")


def _difference(low: float, high: float) -> PairedDifference:
    return PairedDifference("roc_auc", 0.7, 0.7 + (low + high) / 2, (low + high) / 2, (low, high), 0.1, 1000, 500)


def test_promotion_rule_superiority_and_non_inferiority() -> None:
    assert _significant(_difference(0.001, 0.02), 0.005)[0]
    ok, why = _significant(_difference(-0.001, 0.02), 0.005)
    assert not ok and "may be noise" in why
    assert _significant(_difference(-0.004, 0.01), -0.005)[0]  # not worse by more than 0.005
    ok, why = _significant(_difference(-0.02, 0.01), -0.005)
    assert not ok and "worse by more than 0.005" in why
    ok, why = _significant(_difference(-0.02, -0.007), 0.005)
    assert not ok and "the challenger is worse" in why


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="at least 2 positive and 2 negative"):
        paired_auc(np.array([1, 0, 0]), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="one value per row"):
        paired_auc(np.array([1, 0, 1, 0]), np.zeros(4), np.zeros(3))
