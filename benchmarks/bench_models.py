"""Churn / propensity benchmarks: training time with and without Optuna on Online Retail, and batch
scoring of 1M generated customers with precomputed features, next to bare XGBoost prediction.

    python benchmarks/bench_models.py            # full: Online Retail + 1,000,000 customers
    python benchmarks/bench_models.py --quick    # 20,000 customers, 3 Optuna trials

Writes benchmarks/results/models.json (models_quick.json with --quick) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from features.build import build_features  # noqa: E402
from features.demo import DemoShop, generate_demo  # noqa: E402
from features.importers.uci_retail import import_online_retail  # noqa: E402
from features.io import load_data_dir  # noqa: E402
from training.scoring import score_features  # noqa: E402
from training.train import train_classifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work"
ONLINE_RETAIL = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"
SCORING_TARGET_S = 30.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeats: int = 1) -> tuple[float, list[float], object]:
    runs, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        runs.append(round(time.perf_counter() - start, 3))
    return statistics.median(runs), runs, result


def training_times(trials: int, mlruns: Path) -> dict:
    """Churn on Online Retail at 2011-09-10: default parameters vs an Optuna study."""
    data = WORK / "online_retail"
    if not (data / "orders.parquet").exists():
        import_online_retail(ONLINE_RETAIL, data)
    tables, _ = load_data_dir(data)
    out = {}
    for n in (0, trials):
        median, runs, result = timed(lambda n=n: train_classifier(tables, "churned", "2011-09-10", trials=n,
                                                                   mlruns=mlruns))
        out[f"trials_{n}"] = {"seconds": median, "runs": runs, "holdout_roc_auc": round(result.metrics["roc_auc"], 4)}
    return out


def scoring_time(customers: int, mlruns: Path) -> dict:
    """Score ``customers`` precomputed feature rows; baseline: each model's bare raw predictions (for
    XGBoost, booster.inplace_predict), whichever kind train_classifier chose."""
    small = WORK / "demo_10k"
    if not (small / "orders.parquet").exists():
        generate_demo(DemoShop(customers=10_000, seed=0), small)
    small_tables, _ = load_data_dir(small)
    churn = train_classifier(small_tables, "churned", "2025-10-01", mlruns=mlruns).bundle
    propensity = train_classifier(small_tables, "purchased", "2025-10-01", mlruns=mlruns).bundle

    big = WORK / ("demo_1m" if customers == 1_000_000 else f"demo_{customers}")
    if not (big / "orders.parquet").exists():
        generate_demo(DemoShop(customers=customers, seed=0), big)
    tables, _ = load_data_dir(big)
    features = build_features(tables, DemoShop.end)  # after the last row: every customer is known
    del tables
    bare, bare_runs, _ = timed(lambda: (churn.raw_proba(features), propensity.raw_proba(features)), repeats=3)
    ours, our_runs, scores = timed(lambda: score_features(features, churn, propensity), repeats=3)
    return {
        "customers_scored": len(scores),
        "sendwise_score_s": {"median": ours, "runs": our_runs},
        "bare_xgboost_predict_both_s": {"median": bare, "runs": bare_runs},
        "target_s": SCORING_TARGET_S, "met": ours < SCORING_TARGET_S,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "includes": "calibrated probabilities of both models, risk bands, top-3 reason codes (approximate "
                    "XGBoost contributions) in words",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    customers, trials = (20_000, 3) if args.quick else (1_000_000, 20)
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "benchmark": "churn / propensity models", "mode": "quick" if args.quick else "full",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "training_online_retail_churn": training_times(trials, Path(tmp) / "mlruns")
            if ONLINE_RETAIL.exists() else "skipped: Online Retail file absent",
            "batch_scoring": scoring_time(customers, Path(tmp) / "mlruns"),
        }
    out = ROOT / "benchmarks" / "results" / ("models_quick.json" if args.quick else "models.json")
    out.write_text(json.dumps(results, indent=1))
    table = Table(title="Model benchmarks (medians)")
    for col in ("what", "seconds", "baseline in the same run", "target", "met"):
        table.add_column(col)
    training = results["training_online_retail_churn"]
    if isinstance(training, dict):
        for key, value in training.items():
            table.add_row(f"train churn, Online Retail, {key.replace('_', ' ')}", f"{value['seconds']:.1f}",
                          f"holdout ROC-AUC {value['holdout_roc_auc']}", "-", "-")
    scoring = results["batch_scoring"]
    table.add_row(f"score {scoring['customers_scored']:,} customers", f"{scoring['sendwise_score_s']['median']:.1f}",
                  f"bare predict {scoring['bare_xgboost_predict_both_s']['median']:.2f} s",
                  f"< {SCORING_TARGET_S:.0f} s", str(scoring["met"]))
    Console().print(table)
    print(f"peak RSS {scoring['peak_rss_mb']} MB; written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
