"""Frequentist comparison of a treatment with a control, on per-variant aggregates.

Everything works from :class:`Sample` aggregates (count, sum, sum of squares, and for CUPED the
pre-exposure covariate's sums), so the same numbers can be checked against another engine.

* proportions: two-proportion z-test (pooled variance for the test, unpooled for the interval);
* means: Welch's t-test with Welch-Satterthwaite degrees of freedom;
* relative lift ``treatment / control - 1``: delta-method interval on the ratio of means;
* several treatments: Holm's step-down correction of the p-values;
* sample-ratio mismatch: chi-square goodness of fit of the recipients against the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from features.errors import InputError

SRM_ALPHA = 0.001  # the usual threshold: an SRM at p < 0.001 means the assignment is broken


@dataclass(frozen=True)
class Sample:
    """Aggregates of one metric over one variant's recipients.

    ``pre_*`` and ``sum_product`` describe a pre-exposure covariate (e.g. revenue before exposure)
    for CUPED: its sum, sum of squares and the sum of metric x covariate.
    """

    n: int
    sum: float
    sum_squares: float
    pre_sum: float | None = None
    pre_sum_squares: float | None = None
    sum_product: float | None = None

    @classmethod
    def of(cls, values: np.ndarray, covariate: np.ndarray | None = None) -> Sample:
        values = np.asarray(values, float)
        if covariate is None:
            return cls(len(values), float(values.sum()), float((values ** 2).sum()))
        covariate = np.asarray(covariate, float)
        return cls(len(values), float(values.sum()), float((values ** 2).sum()), float(covariate.sum()),
                   float((covariate ** 2).sum()), float((values * covariate).sum()))

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 in the denominator)."""
        if self.n < 2:
            return math.nan
        return max(0.0, (self.sum_squares - self.sum ** 2 / self.n) / (self.n - 1))

    @property
    def has_covariate(self) -> bool:
        return self.pre_sum is not None and self.pre_sum_squares is not None and self.sum_product is not None


@dataclass(frozen=True)
class Comparison:
    """Treatment against control on one metric."""

    control_mean: float
    treatment_mean: float
    absolute_lift: float
    absolute_ci: tuple[float, float]
    relative_lift: float
    relative_ci: tuple[float, float]
    p_value: float
    method: str
    absolute_se: float  # standard error of the absolute lift (unpooled)
    relative_se: float  # delta-method standard error of the relative lift
    adjusted_p_value: float | None = None  # Holm, when there are several treatments

    @property
    def decision_p_value(self) -> float:
        return self.p_value if self.adjusted_p_value is None else self.adjusted_p_value


def relative_lift(diff: float, control_mean: float, treatment_mean: float, var_c: float, n_c: int,
                  var_t: float, n_t: int) -> tuple[float, float]:
    """Relative lift ``diff / control_mean`` and its delta-method standard error (``var_*``: variance
    of one unit): se^2 = var_t / (n_t mean_c^2) + mean_t^2 var_c / (n_c mean_c^4). NaN when the
    control mean is 0."""
    if control_mean == 0 or not np.isfinite(control_mean):
        return math.nan, math.nan
    se = math.sqrt(var_t / (n_t * control_mean ** 2) + treatment_mean ** 2 * var_c / (n_c * control_mean ** 4))
    return diff / control_mean, se


def _interval(estimate: float, se: float, quantile: float) -> tuple[float, float]:
    return float(estimate - quantile * se), float(estimate + quantile * se)


def _check(control: Sample, treatment: Sample, alpha: float) -> None:
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1); got {alpha}")
    for name, s in (("control", control), ("treatment", treatment)):
        if s.n < 2:
            raise InputError(f"the {name} variant has {s.n} recipient{'' if s.n == 1 else 's'}; at least 2 are needed to compare")


def two_proportion_ztest(control: Sample, treatment: Sample, alpha: float = 0.05) -> Comparison:
    """Two-sided z-test of two rates (``sum`` = successes). The test uses the pooled rate; the
    interval of the difference the unpooled (Wald) standard error."""
    _check(control, treatment, alpha)
    pc, pt = control.mean, treatment.mean
    for name, p in (("control", pc), ("treatment", pt)):
        if not 0 <= p <= 1:
            raise InputError(f"the {name} rate is {p}: a proportion needs 0 <= successes <= recipients")
    pooled = (control.sum + treatment.sum) / (control.n + treatment.n)
    se_test = math.sqrt(pooled * (1 - pooled) * (1 / control.n + 1 / treatment.n))
    diff = pt - pc
    p_value = 2 * stats.norm.sf(abs(diff) / se_test) if se_test > 0 else (1.0 if diff == 0 else 0.0)
    z = stats.norm.ppf(1 - alpha / 2)
    var_c, var_t = pc * (1 - pc), pt * (1 - pt)
    se = math.sqrt(var_c / control.n + var_t / treatment.n)
    rel, rel_se = relative_lift(diff, pc, pt, var_c, control.n, var_t, treatment.n)
    return Comparison(pc, pt, diff, _interval(diff, se, z), rel, _interval(rel, rel_se, z), float(p_value),
                      "two-proportion z-test", se, rel_se)


def welch_ttest(control: Sample, treatment: Sample, alpha: float = 0.05,
                relative_to: tuple[float, float] | None = None) -> Comparison:
    """Two-sided Welch t-test of two means, Welch-Satterthwaite degrees of freedom; the relative
    interval uses the same t quantile.

    ``relative_to``: the (control, treatment) means that the relative lift and the reported means
    refer to; CUPED passes the unadjusted means, so the lift is the adjusted difference over the
    control's plain mean (as GrowthBook does)."""
    _check(control, treatment, alpha)
    vc, vt = control.variance / control.n, treatment.variance / treatment.n
    se = math.sqrt(vc + vt)
    diff = treatment.mean - control.mean
    mean_c, mean_t = relative_to or (control.mean, treatment.mean)
    rel, rel_se = relative_lift(diff, mean_c, mean_t, control.variance, control.n, treatment.variance, treatment.n)
    if se == 0:  # both variants constant
        return Comparison(mean_c, mean_t, diff, (diff, diff), rel, (rel, rel),
                          1.0 if diff == 0 else 0.0, "Welch t-test", 0.0, rel_se)
    df = (vc + vt) ** 2 / (vc ** 2 / (control.n - 1) + vt ** 2 / (treatment.n - 1))
    t = stats.t.ppf(1 - alpha / 2, df)
    p_value = 2 * stats.t.sf(abs(diff) / se, df)
    return Comparison(mean_c, mean_t, diff, _interval(diff, se, t), rel, _interval(rel, rel_se, t),
                      float(p_value), "Welch t-test", se, rel_se)


def cuped(samples: dict[str, Sample]) -> tuple[dict[str, Sample], float]:
    """CUPED: the metric minus theta x (covariate - its overall mean), theta pooled over all variants
    (cov(metric, covariate) / var(covariate)). Returns samples of the adjusted metric (same n) and
    theta. Each adjusted sample keeps its own mean shift and the variance
    var(y) + theta^2 var(x) - 2 theta cov(x, y)."""
    if not all(s.has_covariate for s in samples.values()):
        raise InputError("CUPED needs the pre-exposure covariate's sums in every variant")
    n = sum(s.n for s in samples.values())
    sx = sum(s.pre_sum for s in samples.values())
    sy = sum(s.sum for s in samples.values())
    sxx = sum(s.pre_sum_squares for s in samples.values())
    sxy = sum(s.sum_product for s in samples.values())
    var_x = sxx - sx * sx / n
    theta = (sxy - sx * sy / n) / var_x if var_x > 0 else 0.0
    mean_x = sx / n
    adjusted = {}
    for name, s in samples.items():
        # y' = y - theta (x - mean_x): sums follow from the aggregates
        shift = theta * (s.pre_sum - s.n * mean_x)
        new_sum = s.sum - shift
        # sum of y'^2 = sum (y - theta x + theta mean_x)^2
        c = theta * mean_x
        new_sq = (s.sum_squares + theta ** 2 * s.pre_sum_squares + s.n * c ** 2 - 2 * theta * s.sum_product
                  + 2 * c * s.sum - 2 * theta * c * s.pre_sum)
        adjusted[name] = replace(s, sum=new_sum, sum_squares=new_sq)
    return adjusted, theta


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order."""
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()


@dataclass(frozen=True)
class SampleRatioCheck:
    counts: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    p_value: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < SRM_ALPHA


def sample_ratio_mismatch(counts: list[int], weights: list[float]) -> SampleRatioCheck:
    """Chi-square goodness of fit (k - 1 degrees of freedom) of recipients per variant against the
    configured weights; a mismatch is flagged at p < 0.001."""
    if len(counts) != len(weights) or len(counts) < 2:
        raise InputError(f"need one count per variant (at least 2); got {len(counts)} counts, {len(weights)} weights")
    total = sum(counts)
    if total == 0:
        raise InputError("no recipients in any variant: nothing to check")
    expected = [total * w / sum(weights) for w in weights]
    chi2, p = stats.chisquare(counts, expected)
    return SampleRatioCheck(tuple(int(c) for c in counts), tuple(expected), float(chi2), float(p))


def suppression_balance(recipients: Mapping[str, int], suppressed: Mapping[str, int]) -> float | None:
    """Chi-square test of independence between variant and being suppressed (no email sent): the
    p-value, or None when nobody was suppressed or fewer than two variants have customers. Randomised
    variants with the same suppression rules suppress the same share; a small p means they do not."""
    table = [[int(recipients.get(v, 0)), int(suppressed.get(v, 0))] for v in recipients]
    table = [row for row in table if sum(row)]
    if len(table) < 2 or not any(row[1] for row in table):
        return None
    return float(stats.chi2_contingency(table, correction=False).pvalue)
