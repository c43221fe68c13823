"""Always-valid inference for peeking: asymptotic confidence sequences.

Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and asymptotic
confidence sequences" (2023, arXiv:2103.06476), eq. 9 with the normal-mixture boundary; the form
GrowthBook uses. With N recipients in all, an estimate whose variance is ``variance`` (so that
``variance * N`` is the per-unit variance s^2) and a tuning sample size N* (where the boundary is
tightest):

    rho^2     = (-2 log alpha + log(-2 log alpha + 1)) / N*
    halfwidth = sqrt(s^2) sqrt( 2 (N rho^2 + 1) / (N^2 rho^2) log( sqrt(N rho^2 + 1) / alpha ) )

The interval holds at every sample size at once with probability 1 - alpha, so a team may look at
the results daily and stop whenever it excludes zero. The always-valid p-value comes
from features.errors import InputError
from the same mixture's e-value; it is below alpha exactly when the sequence excludes zero.
"""

from __future__ import annotations

import math

DEFAULT_TUNING = 5000


def _rho2(alpha: float, tuning: float) -> float:
    return (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning


def halfwidth(variance: float, n_total: int, alpha: float, tuning: float = DEFAULT_TUNING) -> float:
    """Half-width of the confidence sequence for an estimate with variance ``variance`` at N = ``n_total``."""
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1); got {alpha}")
    if tuning <= 0:
        raise InputError(f"the tuning sample size must be positive; got {tuning}")
    rho2 = _rho2(alpha, tuning)
    s2 = variance * n_total
    width = 2 * (n_total * rho2 + 1) / (n_total ** 2 * rho2) * math.log(math.sqrt(n_total * rho2 + 1) / alpha)
    return math.sqrt(s2) * math.sqrt(width)


def interval(estimate: float, variance: float, n_total: int, alpha: float,
             tuning: float = DEFAULT_TUNING) -> tuple[float, float]:
    h = halfwidth(variance, n_total, alpha, tuning)
    return estimate - h, estimate + h


def p_value(estimate: float, variance: float, n_total: int, alpha: float, tuning: float = DEFAULT_TUNING) -> float:
    """Always-valid p-value min(1, 1/E) from the mixture e-value
    E = exp(rho^2 z^2 N / (2 (N rho^2 + 1))) / sqrt(N rho^2 + 1), z^2 = estimate^2 / variance
    (eq. 155): below ``alpha`` exactly when the sequence at ``alpha`` excludes zero."""
    if variance <= 0:
        return 1.0 if estimate == 0 else 0.0
    rho2 = _rho2(alpha, tuning)
    spread = n_total * rho2 + 1
    log_e = rho2 * estimate ** 2 / variance * n_total / (2 * spread) - 0.5 * math.log(spread)
    return float(min(1.0, math.exp(-log_e)))
