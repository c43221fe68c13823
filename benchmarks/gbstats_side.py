"""Reference side of the A/B statistics check: GrowthBook's ``gbstats`` run on the same aggregates.

    <gbstats-venv>/bin/python benchmarks/gbstats_side.py IN.json OUT.json

gbstats 0.8 pins pandas 1.5 / numpy 1.26, so this script runs from its own virtual environment
(``python3 -m venv benchmarks/.work/gbstats-venv && benchmarks/.work/gbstats-venv/bin/pip install
"gbstats>=0.8,<0.9"``) and imports only the standard library, numpy, pandas and gbstats; never sendwise.

For every case it reports, for both difference types (relative and absolute): the two-sided
frequentist t-test, the Bayesian effect test with GrowthBook's default (improper, flat) prior, the
same two on gbstats' regression-adjusted (CUPED) statistics when ``cuped`` is given, and gbstats'
sequential test (on the plain and, when given, the CUPED statistics) when ``sequential`` is given.
It also reports ``check_srm`` for each ``srm`` entry and says, for ``power`` entries, whether the
installed gbstats has a power / sample-size module. Values are gbstats' own, not recomputed here.

Two optional keys beyond the shared IN format: a case's ``prior`` {"mean", "stddev"} (a proper
Gaussian prior on the relative lift) adds ``bayesian_proper_prior`` results, and
``cuped.covariate_type`` ("proportion" | "mean", default: the metric's type, as in GrowthBook)
sets how gbstats treats the pre-exposure covariate.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from gbstats.bayesian.tests import (
    BayesianTestResult,
    EffectBayesianABTest,
    EffectBayesianConfig,
    GaussianPrior,
)
from gbstats.frequentist.tests import (
    FrequentistConfig,
    FrequentistTestResult,
    SequentialConfig,
    SequentialTwoSidedTTest,
    TwoSidedTTest,
)
from gbstats.models.statistics import (
    ProportionStatistic,
    RegressionAdjustedStatistic,
    SampleMeanStatistic,
    compute_theta,
)
from gbstats.utils import check_srm

DIFFERENCE_TYPES = ("relative", "absolute")
METRIC_TYPES = ("proportion", "mean")
# GrowthBook's metric defaults (gbstats/models/settings.py, MetricSettingsForStatsEngine):
# prior_proper=False, prior_mean=0, prior_stddev=0.1, on the relative lift.
DEFAULT_PRIOR = {"mean": 0.0, "stddev": 0.1, "proper": False}

BaseStatistic = ProportionStatistic | SampleMeanStatistic


class InputError(ValueError):
    """IN.json does not have the shape or values this script expects."""


def _number(value: Any, where: str, *, integer: bool = False, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}: expected a finite number, got {value!r}")
    if integer and float(value) != int(value):
        raise InputError(f"{where}: expected a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(f"{where}: expected a value >= {minimum}, got {value!r}")
    return int(value) if integer else float(value)


def _mapping(value: Any, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected an object with keys {list(keys)}, got {value!r}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise InputError(f"{where}: missing key(s) {missing}")
    return value


def _base_statistic(
    metric_type: str, n: int, total: float, total_squares: float, where: str
) -> BaseStatistic:
    """ProportionStatistic (variance p(1-p)) or SampleMeanStatistic (variance with n-1)."""
    if metric_type == "proportion":
        if total_squares != total:
            raise InputError(
                f"{where}: for a proportion the sum of squares must equal the sum "
                f"(count of successes), got {total_squares!r} and {total!r}"
            )
        if not 0 <= total <= n:
            raise InputError(f"{where}: a proportion needs 0 <= sum <= n, got sum={total!r}, n={n}")
        return ProportionStatistic(n=n, sum=total)
    return SampleMeanStatistic(n=n, sum=total, sum_squares=total_squares)


def _arm_statistic(case: dict[str, Any], arm: str, where: str) -> BaseStatistic:
    data = _mapping(case[arm], f"{where}.{arm}", ("n", "sum", "sum_squares"))
    n = _number(data["n"], f"{where}.{arm}.n", integer=True, minimum=0)
    total = _number(data["sum"], f"{where}.{arm}.sum")
    squares = _number(data["sum_squares"], f"{where}.{arm}.sum_squares", minimum=0)
    return _base_statistic(case["metric_type"], n, total, squares, f"{where}.{arm}")


def _cuped_statistic(
    case: dict[str, Any], arm: str, covariate_type: str, where: str
) -> RegressionAdjustedStatistic:
    post = _arm_statistic(case, arm, where)
    pre = _mapping(
        case["cuped"][arm], f"{where}.cuped.{arm}", ("pre_sum", "pre_sum_squares", "sum_product")
    )
    pre_stat = _base_statistic(
        covariate_type,
        post.n,
        _number(pre["pre_sum"], f"{where}.cuped.{arm}.pre_sum"),
        _number(pre["pre_sum_squares"], f"{where}.cuped.{arm}.pre_sum_squares", minimum=0),
        f"{where}.cuped.{arm}",
    )
    # theta=0 is a placeholder: BaseABTest.__init__ sets the pooled theta (compute_theta).
    return RegressionAdjustedStatistic(
        n=post.n,
        post_statistic=post,
        pre_statistic=pre_stat,
        post_pre_sum_of_products=_number(pre["sum_product"], f"{where}.cuped.{arm}.sum_product"),
        theta=0,
    )


def _clean(value: Any) -> Any:
    """numpy scalars to Python numbers, non-finite floats to None, recursively."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _diagnostics(test: TwoSidedTTest | EffectBayesianABTest, error: str | None) -> dict[str, Any]:
    """gbstats' intermediate quantities, so a difference can be traced to its term."""
    out: dict[str, Any] = {
        "control_mean": test.stat_a.mean,
        "control_unadjusted_mean": test.stat_a.unadjusted_mean,
        "control_variance": test.stat_a.variance,
        "treatment_mean": test.stat_b.mean,
        "treatment_unadjusted_mean": test.stat_b.unadjusted_mean,
        "treatment_variance": test.stat_b.variance,
    }
    if isinstance(test.stat_a, RegressionAdjustedStatistic):
        out["theta"] = test.stat_a.theta
    if isinstance(test, TwoSidedTTest) and error is None:
        out["variance_of_estimate"] = test.variance
        if not isinstance(test, SequentialTwoSidedTTest):
            out["welch_dof"] = test.dof
        else:
            out["rho"] = test.rho
    return out


def _frequentist(test: TwoSidedTTest) -> dict[str, Any]:
    result: FrequentistTestResult = test.compute_result()
    return {
        "expected": result.expected,
        "ci": list(result.ci),
        "p_value": result.p_value,
        "uplift_stddev": result.uplift.stddev,
        "error_message": result.error_message,
        "internals": _diagnostics(test, result.error_message),
    }


def _bayesian(test: EffectBayesianABTest) -> dict[str, Any]:
    result: BayesianTestResult = test.compute_result()
    risk_control, risk_treatment = (float(r) for r in result.risk)
    return {
        "chance_to_win": result.chance_to_win,
        "expected": result.expected,
        "ci": list(result.ci),
        "uplift_stddev": result.uplift.stddev,
        # gbstats' list order is [risk of choosing control, risk of choosing treatment]
        # (EffectBayesianABTest.get_risk; flipped only for inverse metrics, never here).
        "risk": [risk_control, risk_treatment],
        "risk_control": risk_control,
        "risk_treatment": risk_treatment,
        "risk_type": result.risk_type,
        "error_message": result.error_message,
        "internals": _diagnostics(test, result.error_message),
    }


def _prior(case: dict[str, Any], where: str) -> dict[str, Any] | None:
    """Optional ``prior`` {"mean", "stddev"} on the relative lift: a proper Gaussian prior."""
    prior = case.get("prior")
    if prior is None:
        return None
    prior = _mapping(prior, f"{where}.prior", ("mean", "stddev"))
    return {
        "mean": _number(prior["mean"], f"{where}.prior.mean"),
        "stddev": _number(prior["stddev"], f"{where}.prior.stddev", minimum=1e-12),
        "proper": True,
    }


def _analyses(
    make: Any, difference_type: str, alpha: float, sequential: dict[str, Any] | None,
    prior: dict[str, Any] | None, suffix: str,
) -> dict[str, Any]:
    """Run each gbstats test on freshly built statistics (gbstats mutates theta in place)."""

    def bayes(p: dict[str, Any]) -> dict[str, Any]:
        config = EffectBayesianConfig(
            difference_type=difference_type,
            alpha=alpha,
            prior_type="relative",
            prior_effect=GaussianPrior(mean=p["mean"], variance=p["stddev"] ** 2, proper=p["proper"]),
        )
        return _bayesian(EffectBayesianABTest(*make(), config))

    out: dict[str, Any] = {
        f"frequentist{suffix}": _frequentist(
            TwoSidedTTest(*make(), FrequentistConfig(difference_type=difference_type, alpha=alpha))
        ),
        f"bayesian{suffix}": bayes(DEFAULT_PRIOR),
    }
    if prior is not None:
        out[f"bayesian_proper_prior{suffix}"] = bayes(prior)
    if sequential is not None:
        config = SequentialConfig(
            difference_type=difference_type,
            alpha=alpha,
            sequential_tuning_parameter=sequential["tuning_parameter"],
        )
        out[f"frequentist_sequential{suffix}"] = _frequentist(SequentialTwoSidedTTest(*make(), config))
    return out


def run_case(case: Any, index: int) -> dict[str, Any]:
    where = f"cases[{index}]"
    case = _mapping(case, where, ("id", "metric_type", "control", "treatment", "alpha"))
    where = f"cases[{index}] (id {case['id']!r})"
    if case["metric_type"] not in METRIC_TYPES:
        raise InputError(
            f"{where}.metric_type: expected one of {list(METRIC_TYPES)}, got {case['metric_type']!r}"
        )
    alpha = _number(case["alpha"], f"{where}.alpha")
    if not 0 < alpha < 1:
        raise InputError(f"{where}.alpha: expected 0 < alpha < 1, got {alpha!r}")
    sequential = case.get("sequential")
    if sequential is not None:
        sequential = _mapping(sequential, f"{where}.sequential", ("tuning_parameter",))
        _number(sequential["tuning_parameter"], f"{where}.sequential.tuning_parameter", minimum=1e-12)
    prior = _prior(case, where)

    def plain() -> tuple[BaseStatistic, BaseStatistic]:
        return _arm_statistic(case, "control", where), _arm_statistic(case, "treatment", where)

    plain()  # validate before running anything
    cuped = case.get("cuped")
    covariate_type = None
    if cuped is not None:
        _mapping(cuped, f"{where}.cuped", ("control", "treatment"))
        # GrowthBook's CUPED covariate is the same metric before exposure, so of the same type.
        covariate_type = cuped.get("covariate_type", case["metric_type"])
        if covariate_type not in METRIC_TYPES:
            raise InputError(
                f"{where}.cuped.covariate_type: expected one of {list(METRIC_TYPES)}, got {covariate_type!r}"
            )

    def adjusted() -> tuple[RegressionAdjustedStatistic, RegressionAdjustedStatistic]:
        return (
            _cuped_statistic(case, "control", covariate_type, where),
            _cuped_statistic(case, "treatment", covariate_type, where),
        )

    theta = None if cuped is None else compute_theta(*adjusted())  # also validates the cuped input
    results: dict[str, Any] = {}
    for difference_type in DIFFERENCE_TYPES:
        block = _analyses(plain, difference_type, alpha, sequential, prior, "")
        if cuped is not None:
            block.update(_analyses(adjusted, difference_type, alpha, sequential, prior, "_cuped"))
        results[difference_type] = block
    return {
        "id": case["id"],
        "metric_type": case["metric_type"],
        "covariate_type": covariate_type,
        # pooled theta (compute_theta); 0 means gbstats fell back to the unadjusted statistics
        "cuped_theta": theta,
        "alpha": alpha,
        "results": results,
    }


def run_srm(entry: Any, index: int) -> dict[str, Any]:
    where = f"srm[{index}]"
    entry = _mapping(entry, where, ("id", "counts", "weights"))
    counts, weights = entry["counts"], entry["weights"]
    shapes_ok = isinstance(counts, list) and isinstance(weights, list) and len(counts) == len(weights)
    if not shapes_ok or len(counts) < 2:
        raise InputError(f"{where}: counts and weights must be lists of the same length >= 2")
    counts = [_number(c, f"{where}.counts[{i}]", integer=True, minimum=0) for i, c in enumerate(counts)]
    weights = [_number(w, f"{where}.weights[{i}]", minimum=0) for i, w in enumerate(weights)]
    if sum(weights) <= 0:
        raise InputError(f"{where}.weights: at least one weight must be > 0")
    return {"id": entry["id"], "p_value": float(check_srm(counts, weights)), "df": len(counts) - 1}


def run_power(entry: Any, index: int) -> dict[str, Any]:
    entry = _mapping(entry, f"power[{index}]", ("id",))
    return {
        "id": entry["id"],
        "available": False,
        "reason": (
            f"gbstats {importlib.metadata.version('gbstats')} has no power or sample-size "
            "module (no gbstats.power; nothing in gbstats computes power, MDE or sample size)"
        ),
    }


def run(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InputError("IN.json: expected an object with keys 'cases', 'srm', 'power'")
    for key in ("cases", "srm", "power"):
        if not isinstance(data.get(key, []), list):
            raise InputError(f"IN.json.{key}: expected a list, got {data[key]!r}")
    if importlib.util.find_spec("gbstats.power") is not None:
        raise RuntimeError("this gbstats has a gbstats.power module: wire it into run_power first")
    return _clean(
        {
            "engine": "gbstats",
            "versions": {
                "gbstats": importlib.metadata.version("gbstats"),
                "numpy": np.__version__,
                "pandas": pd.__version__,
                "scipy": importlib.metadata.version("scipy"),
                "python": platform.python_version(),
            },
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "bayesian_default_prior": DEFAULT_PRIOR,
            "notes": [
                "bayesian*: the credible interval uses the case's alpha; GrowthBook's own pipeline "
                "(gbstats.gbstats.get_configured_test) passes no alpha to EffectBayesianConfig, so "
                "the app always shows a 95% interval",
                "risk = [risk_control, risk_treatment]: expected loss of shipping control, of shipping "
                "treatment (EffectBayesianABTest.get_risk)",
                "*_cuped: theta pooled over both arms (compute_theta); cuped_theta 0 means gbstats fell "
                "back to the unadjusted statistics",
            ],
            "cases": [run_case(c, i) for i, c in enumerate(data.get("cases", []))],
            "srm": [run_srm(e, i) for i, e in enumerate(data.get("srm", []))],
            "power": [run_power(e, i) for i, e in enumerate(data.get("power", []))],
        }
    )


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} IN.json OUT.json", file=sys.stderr)
        return 2
    try:
        data = json.loads(Path(argv[1]).read_text())
        out = run(data)
    except (OSError, json.JSONDecodeError, InputError) as exc:
        print(f"gbstats_side: {exc}", file=sys.stderr)
        return 2
    Path(argv[2]).write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    print(f"gbstats_side: {len(out['cases'])} case(s), {len(out['srm'])} srm, "
          f"{len(out['power'])} power -> {argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
