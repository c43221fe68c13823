"""Plots of an experiment read-out, as PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from experiments import sequential  # noqa: E402
from experiments.analysis import OUTCOME_OF, Readout  # noqa: E402
from experiments.attribution import EXPOSED_AT, VARIANT  # noqa: E402
from experiments.stats import Sample, two_proportion_ztest, welch_ttest  # noqa: E402
from serving.experiment_config import Metric  # noqa: E402
from training.plots import save_figure  # noqa: E402  (Agg backend, tight layout, closes the figure)


def rates_plot(readout: Readout, outcomes: pd.DataFrame, path: Path) -> Path:
    """Each metric per variant with its 95 % interval."""
    metrics = list(Metric)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4))
    names = [s.variant for s in readout.summaries]
    z = stats.norm.ppf(0.975)
    for ax, metric in zip(axes, metrics, strict=True):
        means, errors = [], []
        for name in names:
            values = outcomes.loc[outcomes[VARIANT] == name, OUTCOME_OF[metric]].to_numpy(float)
            s = Sample.of(values)
            means.append(s.mean)
            errors.append(z * math.sqrt(s.variance / s.n) if s.n > 1 else 0)
        ax.bar(names, means, yerr=errors, capsize=4, color=["#888888"] + ["#2a7ab0"] * (len(names) - 1))
        ax.set_title(metric.value.replace("_", " "), fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return save_figure(fig, path)


def lift_plot(readout: Readout, path: Path) -> Path:
    """Relative lift of each treatment on each metric with its interval (forest plot)."""
    rows = [r for r in readout.results if math.isfinite(r.comparison.relative_lift)]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    alpha = readout.experiment.alpha
    for i, r in enumerate(rows):
        lo, hi = r.comparison.relative_ci
        color = ("#2e8b57" if r.better() else "#c0392b") if r.significant(alpha) else "#555555"
        ax.plot([lo * 100, hi * 100], [i, i], color=color, lw=2)
        ax.plot(r.comparison.relative_lift * 100, i, "o", color=color)
    ax.axvline(0, color="k", lw=1, ls=":")
    ax.set_yticks(range(len(rows)), [f"{r.metric.value} ({r.treatment})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    interval = "always-valid" if readout.sequential else f"{1 - alpha:.0%}"
    ax.set(xlabel=f"relative lift vs control, % ({interval} interval)", title="Lift by metric")
    return save_figure(fig, path)


def lift_over_time_plot(readout: Readout, outcomes: pd.DataFrame, path: Path) -> Path:
    """The primary metric's absolute lift over recipients exposed up to each day: the fixed-sample
    interval (valid only at the planned end) and the always-valid confidence sequence (valid at
    every look)."""
    experiment = readout.experiment
    metric, control, alpha = experiment.primary_metric, experiment.control_variant, experiment.alpha
    column = OUTCOME_OF[metric]
    days = pd.to_datetime(outcomes[EXPOSED_AT]).dt.floor("D")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    test = two_proportion_ztest if metric.is_rate else welch_ttest
    for treatment in experiment.treatments:
        points = []
        for day in sorted(days.unique()):
            seen = outcomes[days <= day]
            c = Sample.of(seen.loc[seen[VARIANT] == control, column].to_numpy(float))
            t = Sample.of(seen.loc[seen[VARIANT] == treatment, column].to_numpy(float))
            if c.n < 30 or t.n < 30:
                continue
            comparison = test(c, t, alpha)
            always = sequential.interval(comparison.absolute_lift, comparison.absolute_se ** 2, c.n + t.n, alpha,
                                         readout.sequential_tuning)
            points.append((day, comparison.absolute_lift, *comparison.absolute_ci, *always))
        if not points:
            continue
        frame = pd.DataFrame(points, columns=["day", "lift", "lo", "hi", "seq_lo", "seq_hi"])
        line, = ax.plot(frame["day"], frame["lift"], label=f"{treatment} - {control}")
        ax.fill_between(frame["day"], frame["seq_lo"], frame["seq_hi"], color=line.get_color(), alpha=0.15,
                        label="always-valid")
        ax.plot(frame["day"], frame["lo"], ls="--", lw=1, color=line.get_color(), label=f"fixed {1 - alpha:.0%}")
        ax.plot(frame["day"], frame["hi"], ls="--", lw=1, color=line.get_color())
    ax.axhline(0, color="k", lw=1, ls=":")
    ax.set(title=f"{metric.value}: lift by exposure date", ylabel="absolute lift")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    return save_figure(fig, path)


def power_curve_plot(baseline: float, mdes: np.ndarray, sizes: list[int], path: Path) -> Path:
    """Recipients per variant against the relative minimum detectable effect."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(mdes * 100, sizes)
    ax.set(xscale="linear", yscale="log", xlabel="minimum detectable effect, relative %",
           ylabel="recipients per variant", title=f"Sample size at baseline {baseline:.2%}")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
