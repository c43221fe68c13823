"""Do sendwise's A/B statistics agree with GrowthBook's stats engine (gbstats) on the same aggregates?

    python benchmarks/gbstats_agreement.py

gbstats 0.8 pins pandas 1.5 and numpy 1.26, so it runs from its own virtual environment
(``benchmarks/.work/gbstats-venv``, created on first use with ``pip install "gbstats>=0.8,<0.9"``)
through ``benchmarks/gbstats_side.py``. Both engines get the same per-variant aggregates (count, sum,
sum of squares, and for CUPED the pre-exposure covariate's sums) of generated experiments: rates from
2 % to 30 % and revenue-like means (zero-inflated log-normal), 500 to 200,000 recipients per arm,
with and without a planted lift.

Compared, with tolerance 1e-3 (p-values; interval ends in the metric's units, relative lifts as
fractions):

* means, Welch t-test: p-value, absolute and relative intervals (the same method);
* means with CUPED: the same, on regression-adjusted statistics (theta pooled over both arms);
* sequential (always-valid) intervals and p-values, rates and means (the same formula);
* rates: our two-proportion z-test against gbstats' Welch t-test on Bernoulli data. The methods
  differ (pooled vs unpooled variance in the test, normal vs t quantiles); the script reports the
  largest gap per sample size, which shrinks as n grows;
* Bayesian, means: probability to beat control and expected loss (same normal posterior, flat prior);
* Bayesian, rates: our Beta-binomial posteriors (Monte Carlo) against gbstats' normal approximation:
  reported, with the reason when they differ;
* sample-ratio mismatch p-values.

Writes benchmarks/results/gbstats_agreement.json and prints a table; exits 1 if a check that should
agree does not.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from experiments import bayes
from experiments.analysis import always_valid
from experiments.stats import Sample, cuped, sample_ratio_mismatch, two_proportion_ztest, welch_ttest

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "benchmarks" / ".work" / "gbstats-venv"
SIDE = ROOT / "benchmarks" / "gbstats_side.py"
TOLERANCE = 1e-3
ALPHA = 0.05
TUNING = 5000


def gbstats_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "gbstats>=0.8,<0.9"], check=True)
    return python


def _aggregate(values: np.ndarray, covariate: np.ndarray | None = None) -> dict:
    out = {"n": len(values), "sum": float(values.sum()), "sum_squares": float((values ** 2).sum())}
    if covariate is not None:
        out |= {"pre_sum": float(covariate.sum()), "pre_sum_squares": float((covariate ** 2).sum()),
                "sum_product": float((values * covariate).sum())}
    return out


def generate_cases(seed: int = 0) -> dict:
    """Rates and revenue-like means at several sizes, some with a planted lift."""
    rng = np.random.default_rng(seed)
    cases = []
    for n in (500, 2_000, 10_000, 50_000, 200_000):
        for base in (0.02, 0.1, 0.3):
            for lift in (0.0, 0.1):
                x_c = rng.binomial(n, base)
                x_t = rng.binomial(int(n * 1.02), base * (1 + lift))
                cases.append({"id": f"rate-n{n}-p{base}-lift{lift}", "metric_type": "proportion", "alpha": ALPHA,
                              "control": {"n": n, "sum": float(x_c), "sum_squares": float(x_c)},
                              "treatment": {"n": int(n * 1.02), "sum": float(x_t), "sum_squares": float(x_t)},
                              "cuped": None, "sequential": {"tuning_parameter": TUNING}})
    for n in (500, 5_000, 50_000):
        for lift in (0.0, 0.15):
            arms = {}
            for arm, scale in (("control", 1.0), ("treatment", 1.0 + lift)):
                activity = rng.gamma(0.5, 2.0, n)
                pre = np.where(rng.random(n) < 0.3 * activity, rng.lognormal(3.3, 0.8, n), 0.0)
                post = np.where(rng.random(n) < 0.05 * activity * scale, rng.lognormal(3.3, 0.8, n), 0.0)
                arms[arm] = (post, pre)
            cases.append({"id": f"revenue-n{n}-lift{lift}", "metric_type": "mean", "alpha": ALPHA,
                          "control": _aggregate(arms["control"][0]), "treatment": _aggregate(arms["treatment"][0]),
                          "cuped": {arm: {k: v for k, v in _aggregate(*arms[arm]).items()
                                          if k in ("pre_sum", "pre_sum_squares", "sum_product")}
                                    for arm in ("control", "treatment")},
                          "sequential": {"tuning_parameter": TUNING}})
    srm = []
    for i, (weights, skew) in enumerate((([0.5, 0.5], 1.0), ([0.5, 0.5], 1.04), ([0.2, 0.3, 0.5], 1.0),
                                         ([0.2, 0.3, 0.5], 1.1))):
        p = np.array(weights) * np.r_[skew, np.ones(len(weights) - 1)]
        srm.append({"id": f"srm-{i}", "weights": weights,
                    "counts": rng.multinomial(20_000, p / p.sum()).tolist()})
    return {"cases": cases, "srm": srm, "power": []}


def _sample(arm: dict, pre: dict | None = None) -> Sample:
    pre = pre or {}
    return Sample(arm["n"], arm["sum"], arm["sum_squares"], pre.get("pre_sum"), pre.get("pre_sum_squares"),
                  pre.get("sum_product"))


@dataclass
class Check:
    name: str
    must_agree: bool
    note: str = ""
    gaps: list[tuple[str, float]] = field(default_factory=list)

    def add(self, case: str, ours: float, theirs: float) -> None:
        self.gaps.append((case, abs(ours - theirs) if math.isfinite(ours) and math.isfinite(theirs) else math.inf))

    @property
    def worst(self) -> tuple[str, float]:
        return max(self.gaps, key=lambda g: g[1])

    @property
    def agrees(self) -> bool:
        return self.worst[1] <= TOLERANCE


def _add_comparison(check: Check, case: str, ours, theirs_rel: dict, theirs_abs: dict) -> None:
    check.add(f"{case} p", ours.p_value, theirs_abs["p_value"])
    for i in (0, 1):
        check.add(f"{case} abs ci", ours.absolute_ci[i], theirs_abs["ci"][i])
        check.add(f"{case} rel ci", ours.relative_ci[i], theirs_rel["ci"][i])


def compare(cases: dict, theirs: dict) -> list[Check]:
    by_id = {c["id"]: c for c in theirs["cases"]}
    checks = {
        "welch": Check("means: Welch t-test (p, intervals)", True),
        "cuped": Check("means with CUPED: Welch on adjusted (p, intervals)", True),
        "seq_mean": Check("means: sequential (always-valid p, intervals)", True),
        "seq_rate": Check("rates: sequential (always-valid p, intervals)", True),
        "bayes_mean": Check("means: P(beat control), expected loss", True),
        "srm": Check("sample-ratio mismatch p-value", True),
        "rate_large": Check("rates, n >= 10,000: z-test vs gbstats t-test (p, intervals)", True,
                            "different methods, same answer at this size"),
        "rate_small": Check("rates, n < 10,000: z-test vs gbstats t-test (p, intervals)", False,
                            "pooled vs unpooled variance and z vs t quantiles: the gap shrinks as n grows"),
        "bayes_rate": Check("rates: P(beat control)", False,
                            "Beta-binomial Monte Carlo (ours) vs normal approximation (gbstats)"),
    }
    for case in cases["cases"]:
        g = by_id[case["id"]]["results"]
        rel, ab = g["relative"], g["absolute"]
        c, t = _sample(case["control"]), _sample(case["treatment"])
        cid = case["id"]
        if case["metric_type"] == "proportion":
            ours = two_proportion_ztest(c, t, ALPHA)
            _add_comparison(checks["rate_large" if c.n >= 10_000 else "rate_small"], cid, ours,
                            rel["frequentist"], ab["frequentist"])
            seq_t = always_valid(ours, c.n + t.n, ALPHA, TUNING)
            _add_comparison(checks["seq_rate"], cid, seq_t, rel["frequentist_sequential"], ab["frequentist_sequential"])
            checks["bayes_rate"].add(cid, bayes.beta_binomial(c, t).probability_to_beat_control,
                                     ab["bayesian"]["chance_to_win"])
        else:
            ours = welch_ttest(c, t, ALPHA)
            _add_comparison(checks["welch"], cid, ours, rel["frequentist"], ab["frequentist"])
            _add_comparison(checks["seq_mean"], cid, always_valid(ours, c.n + t.n, ALPHA, TUNING),
                            rel["frequentist_sequential"], ab["frequentist_sequential"])
            posterior = bayes.gaussian(c, t)
            checks["bayes_mean"].add(f"{cid} P(beat)", posterior.probability_to_beat_control, ab["bayesian"]["chance_to_win"])
            checks["bayes_mean"].add(f"{cid} loss", posterior.expected_loss_treatment, ab["bayesian"]["risk"][1])
            adjusted, _ = cuped({"c": _sample(case["control"], case["cuped"]["control"]),
                                 "t": _sample(case["treatment"], case["cuped"]["treatment"])})
            ours_cuped = welch_ttest(adjusted["c"], adjusted["t"], ALPHA, (c.mean, t.mean))
            _add_comparison(checks["cuped"], cid, ours_cuped, rel["frequentist_cuped"], ab["frequentist_cuped"])
    srm_theirs = {s["id"]: s for s in theirs["srm"]}
    for s in cases["srm"]:
        checks["srm"].add(s["id"], sample_ratio_mismatch(s["counts"], s["weights"]).p_value, srm_theirs[s["id"]]["p_value"])
    return list(checks.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gbstats_agreement.json",
                        help="where the JSON goes")
    args = parser.parse_args()
    cases = generate_cases()
    python = gbstats_python()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.json", Path(tmp) / "out.json"
        src.write_text(json.dumps(cases))
        subprocess.run([str(python), str(SIDE), str(src), str(out)], check=True)
        theirs = json.loads(out.read_text())
    checks = compare(cases, theirs)
    table = Table(title=f"sendwise vs gbstats {theirs['versions']['gbstats']} on {len(cases['cases'])} cases "
                        f"(tolerance {TOLERANCE:g})")
    for col in ("check", "values compared", "largest gap", "at", "agree", "note"):
        table.add_column(col)
    for check in checks:
        case, gap = check.worst
        status = "yes" if check.agrees else ("NO" if check.must_agree else "no (expected)")
        table.add_row(check.name, str(len(check.gaps)), f"{gap:.2e}", case, status, check.note)
    Console(width=200).print(table)
    result = {
        "benchmark": "A/B statistics agreement with gbstats", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "gbstats": theirs["versions"], "tolerance": TOLERANCE,
        "checks": [{"check": c.name, "must_agree": c.must_agree, "agrees": c.agrees, "values": len(c.gaps),
                    "largest_gap": c.worst[1], "at": c.worst[0], "note": c.note} for c in checks],
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(f"written to {args.out}")
    return 0 if all(c.agrees for c in checks if c.must_agree) else 1


if __name__ == "__main__":
    sys.exit(main())
