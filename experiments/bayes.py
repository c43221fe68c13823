"""Bayesian read-out: probability that the treatment beats the control, and expected loss.

* proportions: independent Beta(1 + successes, 1 + failures) posteriors (uniform priors), compared
  by Monte Carlo with a fixed seed (so a report is reproducible);
* means: normal posteriors N(mean, variance / n) (flat prior, large-sample), in closed form.

Expected loss is the rate (or amount per recipient) given up, on average over the posterior, by
shipping the treatment when the control is better: E[max(control - treatment, 0)]; the loss of
keeping the control is E[max(treatment - control, 0)]. For a metric where lower is better
(unsubscribes) pass ``higher_is_better=False`` and the roles of gain and loss swap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from experiments.stats import Sample, relative_lift

DRAWS = 200_000


@dataclass(frozen=True)
class BayesResult:
    probability_to_beat_control: float
    expected_loss_treatment: float  # of shipping the treatment
    expected_loss_control: float  # of keeping the control
    relative_lift_interval: tuple[float, float]  # 95 % credible interval of treatment / control - 1


def beta_binomial(control: Sample, treatment: Sample, higher_is_better: bool = True, seed: int = 0,
                  draws: int = DRAWS) -> BayesResult:
    rng = np.random.default_rng(seed)
    c = rng.beta(1 + control.sum, 1 + control.n - control.sum, draws)
    t = rng.beta(1 + treatment.sum, 1 + treatment.n - treatment.sum, draws)
    gain = (t - c) if higher_is_better else (c - t)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.quantile(t / c - 1, [0.025, 0.975])
    return BayesResult(float((gain > 0).mean()), float(np.maximum(-gain, 0).mean()),
                       float(np.maximum(gain, 0).mean()), (float(rel[0]), float(rel[1])))


def _normal_loss(mu: float, sd: float) -> float:
    """E[max(-D, 0)] for D ~ N(mu, sd^2)."""
    if sd == 0:
        return float(max(-mu, 0.0))
    z = mu / sd
    return float(sd * stats.norm.pdf(z) - mu * stats.norm.cdf(-z))


def gaussian(control: Sample, treatment: Sample, higher_is_better: bool = True,
             relative_to: tuple[float, float] | None = None) -> BayesResult:
    """``relative_to``: the (control, treatment) means the relative lift refers to (see
    :func:`experiments.stats.welch_ttest`)."""
    diff = treatment.mean - control.mean
    mu = diff
    if not higher_is_better:
        mu = -mu
    var_c, var_t = control.variance / control.n, treatment.variance / treatment.n
    sd = math.sqrt(var_c + var_t)
    probability = float(stats.norm.cdf(mu / sd)) if sd > 0 else float(mu > 0)
    mean_c, mean_t = relative_to or (control.mean, treatment.mean)
    rel, rel_sd = relative_lift(diff, mean_c, mean_t, control.variance, control.n, treatment.variance, treatment.n)
    z = stats.norm.ppf(0.975)
    interval = (rel - z * rel_sd, rel + z * rel_sd)
    return BayesResult(probability, _normal_loss(mu, sd), _normal_loss(-mu, sd), interval)
