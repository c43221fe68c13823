"""The read-out of one experiment: per-variant rates, lifts with intervals and p-values, Bayesian
probability to beat control and expected loss, sample-ratio-mismatch check, CUPED on revenue, and
an always-valid (sequential) option.

Each treatment is compared with the control on every metric. With more than one treatment the
p-values of each metric are Holm-corrected over its treatments. A guardrail metric is breached when
a treatment is worse than control at ``alpha`` (unadjusted: a guardrail should be sensitive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pandas as pd

from experiments import bayes, sequential
from experiments.attribution import VARIANT, Recipients
from experiments.stats import (
    SRM_ALPHA,
    Comparison,
    Sample,
    SampleRatioCheck,
    cuped,
    holm,
    sample_ratio_mismatch,
    suppression_balance,
    two_proportion_ztest,
    welch_ttest,
)
from features.errors import InputError
from serving.experiment_config import Experiment, Metric

# The per-recipient outcome column behind each metric.
OUTCOME_OF = {Metric.OPEN_RATE: "opened", Metric.CLICK_RATE: "clicked", Metric.CONVERSION_RATE: "converted",
              Metric.UNSUBSCRIBE_RATE: "unsubscribed", Metric.REVENUE_PER_RECIPIENT: "revenue"}
COVARIATE = "pre_revenue"


@dataclass(frozen=True)
class VariantSummary:
    variant: str
    recipients: int
    suppressed: int
    values: dict[Metric, float]  # rate or revenue per recipient


@dataclass(frozen=True)
class MetricResult:
    metric: Metric
    treatment: str
    comparison: Comparison  # CUPED-adjusted for revenue when the covariate is available
    bayes: bayes.BayesResult
    unadjusted: Comparison | None = None  # revenue before CUPED

    def significant(self, alpha: float) -> bool:
        return self.comparison.decision_p_value < alpha

    def better(self) -> bool:
        lift = self.comparison.absolute_lift
        return lift > 0 if self.metric.higher_is_better else lift < 0


@dataclass
class Readout:
    experiment: Experiment
    summaries: list[VariantSummary]
    results: list[MetricResult]
    srm: SampleRatioCheck
    sequential: bool
    cuped_theta: float | None = None
    cuped_variance_reduction: float | None = None
    warnings: list[str] = field(default_factory=list)
    sequential_tuning: float = sequential.DEFAULT_TUNING
    suppression_p_value: float | None = None  # chi-square: do variants suppress the same share of customers?

    def result(self, metric: Metric, treatment: str) -> MetricResult:
        return next(r for r in self.results if r.metric is metric and r.treatment == treatment)

    def guardrail_breaches(self) -> list[MetricResult]:
        alpha = self.experiment.alpha
        return [r for r in self.results if r.metric in self.experiment.guardrail_metrics
                and r.comparison.p_value < alpha and not r.better()]

    def verdict(self, treatment: str) -> str:
        """One line for the primary metric of ``treatment``."""
        if self.srm.mismatch:
            return "do not trust: sample ratio mismatch"
        if self.suppression_p_value is not None and self.suppression_p_value < SRM_ALPHA:
            return "do not trust: variants suppress different shares of their customers"
        if not any(r.treatment == treatment for r in self.results):
            return "not compared: fewer than 2 recipients"
        r = self.result(self.experiment.primary_metric, treatment)
        breached = [b.metric.value for b in self.guardrail_breaches() if b.treatment == treatment]
        if not r.significant(self.experiment.alpha):
            verdict = "no significant difference"
        else:
            verdict = "wins" if r.better() else "loses"
        return verdict + (f"; guardrail breached: {', '.join(breached)}" if breached else "")


def always_valid(comparison: Comparison, n_total: int, alpha: float, tuning: float) -> Comparison:
    """The fixed-sample intervals and p-value replaced by always-valid ones; estimates kept."""
    abs_var, rel_var = comparison.absolute_se ** 2, comparison.relative_se ** 2
    rel_ci = (sequential.interval(comparison.relative_lift, rel_var, n_total, alpha, tuning)
              if math.isfinite(comparison.relative_lift) else (math.nan, math.nan))
    return replace(comparison, absolute_ci=sequential.interval(comparison.absolute_lift, abs_var, n_total, alpha, tuning),
                   relative_ci=rel_ci, p_value=sequential.p_value(comparison.absolute_lift, abs_var, n_total, alpha, tuning),
                   method=comparison.method + ", always-valid confidence sequence")


def _samples(outcomes: pd.DataFrame, metric: Metric, variants: list[str]) -> dict[str, Sample]:
    column = OUTCOME_OF[metric]
    by_variant = {v: g for v, g in outcomes.groupby(VARIANT)}
    out = {}
    for v in variants:
        group = by_variant.get(v, outcomes.iloc[:0])
        covariate = group[COVARIATE].to_numpy(float) if metric is Metric.REVENUE_PER_RECIPIENT else None
        out[v] = Sample.of(group[column].to_numpy(float), covariate)
    return out


def analyze(outcomes: pd.DataFrame, experiment: Experiment, recipients: Recipients | None = None,
            use_sequential: bool = False, sequential_tuning: float = sequential.DEFAULT_TUNING,
            seed: int = 0) -> Readout:
    """Compare every treatment with the control on every metric.

    ``outcomes``: one row per recipient (:func:`experiments.attribution.attribute`). ``recipients``
    adds the suppressed counts and the warnings about left-out customers."""
    names = [v.name for v in experiment.variants]
    control, alpha = experiment.control_variant, experiment.alpha
    counts = outcomes[VARIANT].value_counts().reindex(names, fill_value=0)
    warnings = []
    suppression_p = None
    if recipients is not None:
        if recipients.conflicting:
            warnings.append(f"{recipients.conflicting:,} customers were logged under more than one variant and are "
                            "left out (were weights or the salt changed while it ran?)")
        for variant, n in recipients.unknown_variants.items():
            warnings.append(f"{n:,} exposures name variant '{variant}', which the experiment does not define; left out")
        if recipients.forgotten:
            warnings.append(f"{recipients.forgotten:,} exposures of forgotten customers are left out (their outcomes "
                            "were deleted)")
        suppression_p = suppression_balance(counts.to_dict(), recipients.suppressed)
        if suppression_p is not None and suppression_p < SRM_ALPHA:
            shares = {v: f"{recipients.suppressed.get(v, 0) / max(1, counts[v] + recipients.suppressed.get(v, 0)):.1%}"
                      for v in names}
            warnings.append(f"variants suppress different shares of their customers ({shares}, chi-square p = "
                            f"{suppression_p:.2g}): the recipients are selected differently, so the lifts compare "
                            "different customers; give every variant the same suppression rules")
    empty = [v for v in names if counts[v] < 2]
    if control in empty:
        raise InputError(f"experiment '{experiment.name}': the control variant '{control}' has {counts[control]} "
                         "recipients; nothing can be compared with it")
    for v in empty:
        warnings.append(f"variant '{v}' has {counts[v]} recipient{'' if counts[v] == 1 else 's'}: it is not compared")
    srm = sample_ratio_mismatch(counts.tolist(), [v.weight for v in experiment.variants])
    if srm.mismatch:
        warnings.append(f"sample ratio mismatch (chi-square p = {srm.p_value:.2g} < 0.001): recipients per variant "
                        f"{dict(zip(names, srm.counts, strict=True))} do not match the weights; the assignment or "
                        "the logging is broken and the lifts below cannot be trusted")

    treatments = [v for v in experiment.treatments if v not in empty]
    results: list[MetricResult] = []
    theta = reduction = None
    for metric in Metric:
        samples = _samples(outcomes, metric, names)
        adjusted = samples
        if metric is Metric.REVENUE_PER_RECIPIENT:
            adjusted, theta = cuped({v: samples[v] for v in [control, *treatments]})
            raw_var = sum(samples[v].variance * samples[v].n for v in adjusted) / sum(samples[v].n for v in adjusted)
            new_var = sum(adjusted[v].variance * adjusted[v].n for v in adjusted) / sum(adjusted[v].n for v in adjusted)
            reduction = 1 - new_var / raw_var if raw_var > 0 else 0.0
        metric_results = []
        for t in treatments:
            test = two_proportion_ztest if metric.is_rate else welch_ttest
            if adjusted is samples:
                comparison = test(samples[control], samples[t], alpha)
            else:  # CUPED: the lift is the adjusted difference over the control's plain mean
                comparison = welch_ttest(adjusted[control], adjusted[t], alpha, (samples[control].mean, samples[t].mean))
            unadjusted = welch_ttest(samples[control], samples[t], alpha) if adjusted is not samples else None
            if use_sequential:  # N of the pair, as GrowthBook does
                n_pair = int(counts[control] + counts[t])
                comparison = always_valid(comparison, n_pair, alpha, sequential_tuning)
                unadjusted = always_valid(unadjusted, n_pair, alpha, sequential_tuning) if unadjusted else None
            posterior = (bayes.beta_binomial(samples[control], samples[t], metric.higher_is_better, seed) if metric.is_rate
                         else bayes.gaussian(adjusted[control], adjusted[t], metric.higher_is_better,
                                             (samples[control].mean, samples[t].mean)))
            metric_results.append(MetricResult(metric, t, comparison, posterior, unadjusted))
        if len(metric_results) > 1:
            adjusted_p = holm([r.comparison.p_value for r in metric_results])
            metric_results = [replace(r, comparison=replace(r.comparison, adjusted_p_value=p))
                              for r, p in zip(metric_results, adjusted_p, strict=True)]
        results += metric_results

    suppressed = recipients.suppressed if recipients is not None else {}
    summaries = [VariantSummary(v, int(counts[v]), int(suppressed.get(v, 0)),
                                {m: float(outcomes.loc[outcomes[VARIANT] == v, OUTCOME_OF[m]].astype(float).mean())
                                 if counts[v] else math.nan for m in Metric})
                 for v in names]
    return Readout(experiment, summaries, results, srm, use_sequential, theta, reduction, warnings,
                   sequential_tuning, suppression_p if recipients is not None else None)
