"""Power calculator: recipients per variant needed to detect a minimum effect.

Two-sided tests at level ``alpha`` with equal allocation:

* rates: n = (z_{1-a/2} sqrt(2 pbar qbar) + z_{1-b} sqrt(p1 q1 + p2 q2))^2 / (p2 - p1)^2, the normal
  approximation of the two-proportion z-test (pooled variance under the null);
* means: n = 2 (z_{1-a/2} + z_{1-b})^2 sigma^2 / delta^2.
"""

from __future__ import annotations

import math

from scipy import stats

from features.errors import InputError


def _check(alpha: float, power: float) -> None:
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1); got {alpha}")
    if not 0 < power < 1:
        raise InputError(f"power must be in (0, 1); got {power}")


def treatment_rate(baseline: float, mde: float, relative: bool = True) -> float:
    """The treatment rate that a minimum detectable effect ``mde`` means."""
    if not 0 < baseline < 1:
        raise InputError(f"the baseline rate must be in (0, 1); got {baseline}")
    rate = baseline * (1 + mde) if relative else baseline + mde
    if mde == 0 or not 0 < rate < 1:
        kind = "relative" if relative else "absolute"
        raise InputError(f"a {kind} effect of {mde} on a baseline of {baseline} gives a rate of {rate}; "
                         "the effect must be non-zero and keep the rate in (0, 1)")
    return rate


def sample_size_proportions(baseline: float, mde: float, relative: bool = True, alpha: float = 0.05,
                            power: float = 0.8) -> int:
    """Recipients per variant to detect ``baseline`` -> the rate ``mde`` implies."""
    _check(alpha, power)
    p1, p2 = baseline, treatment_rate(baseline, mde, relative)
    pbar = (p1 + p2) / 2
    za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    n = (za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / (p2 - p1) ** 2
    return math.ceil(n)


def power_proportions(n: int, baseline: float, mde: float, relative: bool = True, alpha: float = 0.05) -> float:
    """Power of the two-proportion z-test with ``n`` recipients per variant."""
    p1, p2 = baseline, treatment_rate(baseline, mde, relative)
    pbar = (p1 + p2) / 2
    za = stats.norm.ppf(1 - alpha / 2)
    z = (abs(p2 - p1) * math.sqrt(n) - za * math.sqrt(2 * pbar * (1 - pbar))) / math.sqrt(
        p1 * (1 - p1) + p2 * (1 - p2))
    return float(stats.norm.cdf(z))


def sample_size_means(std: float, mde: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Recipients per variant to detect an absolute difference ``mde`` in a mean with spread ``std``."""
    _check(alpha, power)
    if std <= 0 or mde == 0:
        raise InputError(f"need std > 0 and a non-zero effect; got std={std}, mde={mde}")
    za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    return math.ceil(2 * (za + zb) ** 2 * std ** 2 / mde ** 2)
