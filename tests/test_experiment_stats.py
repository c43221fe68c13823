"""A/B statistics: pinned values on tiny literal cases, agreement with scipy on raw data, and
simulations (A/A false positives, planted lifts, power, peeking)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from experiments import bayes, power, sequential
from experiments.analysis import always_valid
from experiments.stats import (
    Sample,
    cuped,
    holm,
    sample_ratio_mismatch,
    suppression_balance,
    two_proportion_ztest,
    welch_ttest,
)


def test_two_proportion_ztest_pinned() -> None:
    # 50/1000 vs 70/1000. Pooled rate 0.06: z = 0.02 / sqrt(0.06 * 0.94 * 2 / 1000) = 1.88311, p = 0.05969.
    # Interval: 0.02 +- 1.95996 * sqrt(0.05 * 0.95 / 1000 + 0.07 * 0.93 / 1000) = 0.02 +- 0.020798.
    r = two_proportion_ztest(Sample(1000, 50, 50), Sample(1000, 70, 70))
    assert r.p_value == pytest.approx(0.0596856, abs=1e-6)
    assert r.absolute_ci == pytest.approx((-0.000798, 0.040798), abs=1e-6)
    assert r.relative_lift == pytest.approx(0.4)
    # delta method: sqrt(0.07 * 0.93 / (1000 * 0.05^2) + 0.07^2 * 0.05 * 0.95 / (1000 * 0.05^4)) = 0.251555
    assert r.relative_se == pytest.approx(0.251555, abs=1e-6)


def test_welch_matches_scipy_on_raw_data() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(2, 1, 700), rng.lognormal(2.1, 1.2, 900)
    ours = welch_ttest(Sample.of(a), Sample.of(b))
    theirs = stats.ttest_ind(b, a, equal_var=False)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9)
    ci = theirs.confidence_interval(0.95)
    assert ours.absolute_ci == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_holm_pinned() -> None:
    # sorted 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04 -> kept monotone at 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_sample_ratio_mismatch() -> None:
    check = sample_ratio_mismatch([5000, 5100], [0.5, 0.5])
    assert check.chi2 == pytest.approx((50 ** 2 + 50 ** 2) / 5050)  # sum of (observed - expected)^2 / expected
    assert check.p_value == pytest.approx(stats.chi2.sf(check.chi2, 1)) and not check.mismatch
    rng = np.random.default_rng(0)
    assert sample_ratio_mismatch(rng.multinomial(20_000, [0.52, 0.48]).tolist(), [0.5, 0.5]).mismatch
    assert not sample_ratio_mismatch(rng.multinomial(20_000, [0.2, 0.3, 0.5]).tolist(), [0.2, 0.3, 0.5]).mismatch
    with pytest.raises(ValueError, match="one count per variant"):
        sample_ratio_mismatch([10, 10], [1.0])


def test_suppression_balance_pinned() -> None:
    # 2x2 table [[sent, suppressed]]: [[90, 10], [80, 20]]; expected [[85, 15], [85, 15]]
    chi2 = 2 * (5 ** 2 / 85) + 2 * (5 ** 2 / 15)
    assert suppression_balance({"a": 90, "b": 80}, {"a": 10, "b": 20}) == pytest.approx(stats.chi2.sf(chi2, 1))
    assert suppression_balance({"a": 90, "b": 80}, {"a": 0, "b": 0}) is None
    assert suppression_balance({"a": 90, "b": 0}, {"a": 5}) is None  # one variant with customers


def test_cuped_from_aggregates_equals_adjusting_each_recipient() -> None:
    rng = np.random.default_rng(1)
    x = {v: rng.gamma(1, 20, n) for v, n in (("c", 800), ("t", 850))}
    y = {v: 0.6 * x[v] + rng.normal(0, 5, len(x[v])) + (2 if v == "t" else 0) for v in x}
    adjusted, theta = cuped({v: Sample.of(y[v], x[v]) for v in x})
    all_x, all_y = np.concatenate(list(x.values())), np.concatenate(list(y.values()))
    expected_theta = np.cov(all_x, all_y)[0, 1] / np.var(all_x, ddof=1)
    assert theta == pytest.approx(expected_theta, rel=1e-9)
    for v in x:
        by_hand = Sample.of(y[v] - theta * (x[v] - all_x.mean()))
        assert adjusted[v].mean == pytest.approx(by_hand.mean, rel=1e-9)
        assert adjusted[v].variance == pytest.approx(by_hand.variance, rel=1e-6)
        assert adjusted[v].variance < Sample.of(y[v]).variance / 2  # the covariate explains most of it
    plain = welch_ttest(Sample.of(y["c"]), Sample.of(y["t"]))
    reduced = welch_ttest(adjusted["c"], adjusted["t"])
    assert reduced.absolute_se < plain.absolute_se / 2


def test_bayes_gaussian_closed_form_and_beta_binomial() -> None:
    c, t = Sample(2000, 100, 100), Sample(2000, 130, 130)
    g = bayes.gaussian(Sample.of(np.r_[np.ones(100), np.zeros(1900)]), Sample.of(np.r_[np.ones(130), np.zeros(1870)]))
    mu, sd = 0.015, math.sqrt(Sample(2000, 100, 100).variance / 2000 + Sample(2000, 130, 130).variance / 2000)
    assert g.probability_to_beat_control == pytest.approx(stats.norm.cdf(mu / sd))
    assert g.expected_loss_treatment == pytest.approx(sd * stats.norm.pdf(mu / sd) - mu * stats.norm.cdf(-mu / sd))
    b = bayes.beta_binomial(c, t)
    assert b.probability_to_beat_control == pytest.approx(g.probability_to_beat_control, abs=0.01)
    assert 0 <= b.expected_loss_treatment < b.expected_loss_control
    same = bayes.beta_binomial(c, c)
    assert same.probability_to_beat_control == pytest.approx(0.5, abs=0.01)
    lower_better = bayes.beta_binomial(c, t, higher_is_better=False)
    assert lower_better.probability_to_beat_control == pytest.approx(1 - b.probability_to_beat_control, abs=0.01)


def test_sequential_interval_is_wider_and_p_value_consistent() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        n = int(rng.integers(200, 50_000))
        estimate, variance = rng.normal(0, 0.02), rng.uniform(1e-6, 1e-4)
        lo, hi = sequential.interval(estimate, variance, n, 0.05)
        assert hi - lo > 2 * 1.96 * math.sqrt(variance)  # the price of peeking
        p = sequential.p_value(estimate, variance, n, 0.05)
        assert (p < 0.05) == (lo > 0 or hi < 0)


def _rates(rng: np.random.Generator, n: int, p_c: float, p_t: float) -> tuple[Sample, Sample]:
    x_c, x_t = rng.binomial(n, p_c), rng.binomial(n, p_t)
    return Sample(n, x_c, x_c), Sample(n, x_t, x_t)


def test_aa_false_positive_rate_is_alpha() -> None:
    """1,000 A/A tests at alpha 0.05: the rejection count must lie in the binomial 99.9 % interval."""
    rng = np.random.default_rng(11)
    sims, alpha = 1000, 0.05
    rejections = sum(two_proportion_ztest(*_rates(rng, 5000, 0.04, 0.04)).p_value < alpha for _ in range(sims))
    revenue = sum(welch_ttest(Sample.of(rng.exponential(30, 800) * (rng.random(800) < 0.1)),
                              Sample.of(rng.exponential(30, 800) * (rng.random(800) < 0.1))).p_value < alpha
                  for _ in range(sims))
    low, high = stats.binom.ppf([0.0005, 0.9995], sims, alpha)
    assert low <= rejections <= high, rejections
    assert low <= revenue <= high, revenue


def test_planted_lift_detected_at_planned_power() -> None:
    """With the calculator's sample size for 80 % power, about 80 % of simulated tests detect the lift."""
    rng = np.random.default_rng(12)
    n = power.sample_size_proportions(0.05, 0.2)  # 5 % -> 6 %
    sims = 400
    detected = sum(two_proportion_ztest(*_rates(rng, n, 0.05, 0.06)).p_value < 0.05 for _ in range(sims))
    low, high = stats.binom.ppf([0.0005, 0.9995], sims, 0.8)
    assert low <= detected <= high, detected
    assert power.power_proportions(n, 0.05, 0.2) == pytest.approx(0.8, abs=0.005)


def test_power_calculator_pinned() -> None:
    assert power.sample_size_proportions(0.10, 0.02, relative=False) == 3841  # the textbook 10 % -> 12 % case
    assert power.sample_size_means(std=10, mde=1) == 1570  # 2 (1.95996 + 0.84162)^2 100
    with pytest.raises(ValueError, match="keep the rate in"):
        power.sample_size_proportions(0.9, 0.2)


def test_peeking_inflates_naive_tests_but_not_always_valid_ones() -> None:
    """300 A/A experiments looked at 20 times each: stopping at the first p < 0.05 rejects far more
    often than 5 % with the fixed-sample test, and at most about 5 % with the confidence sequence."""
    rng = np.random.default_rng(21)
    sims, looks, per_look = 300, 20, 500
    naive = valid = 0
    for _ in range(sims):
        c = rng.random((looks, per_look)) < 0.05
        t = rng.random((looks, per_look)) < 0.05
        x_c, x_t = np.cumsum(c.sum(1)), np.cumsum(t.sum(1))
        stopped_naive = stopped_valid = False
        for look in range(looks):
            n = per_look * (look + 1)
            r = two_proportion_ztest(Sample(n, x_c[look], x_c[look]), Sample(n, x_t[look], x_t[look]))
            stopped_naive |= r.p_value < 0.05
            stopped_valid |= always_valid(r, 2 * n, 0.05, sequential.DEFAULT_TUNING).p_value < 0.05
        naive += stopped_naive
        valid += stopped_valid
    assert naive / sims > 0.12  # repeated looks at a fixed-sample test inflate the error (to about 20 %)
    assert valid <= stats.binom.ppf(0.999, sims, 0.05)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="treatment variant has 1 recipient; at least 2"):
        two_proportion_ztest(Sample(100, 5, 5), Sample(1, 0, 0))
    with pytest.raises(ValueError, match="alpha must be in"):
        welch_ttest(Sample(10, 5, 5), Sample(10, 5, 5), alpha=1.5)
    with pytest.raises(ValueError, match="needs 0 <= successes <= recipients"):
        two_proportion_ztest(Sample(10, 11, 11), Sample(10, 5, 5))
    with pytest.raises(ValueError, match="pre-exposure covariate"):
        cuped({"a": Sample(10, 5, 5)})
