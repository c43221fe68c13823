"""``--model auto`` measured through the CLI with default options, next to every candidate.

    python benchmarks/bench_model_choice.py                      # Online Retail, MovieLens, demo shop
    python benchmarks/bench_model_choice.py --only movielens     # one data set

Per data set: ``sendwise train recommender --data DIR --as-of DATE`` (default options: ``--model
auto``) in a fresh MLflow store; its model-choice table gives each candidate's validation NDCG@10,
its holdout metrics auto's figure. Then every candidate (default parameters) is fitted on the same
holdout's input (:func:`training.recommenders.train.protocol_folds`) and scored on its truth (new
items), and auto's per-customer NDCG@10 is compared with the best single candidate's (paired
bootstrap, 95%).

* Online Retail (``import_online_retail``): as_of 2011-09-09, the time split (the issue's protocol).
* MovieLens latest-small (ratings of 4+ as purchases): as_of 2018-09-24 (the data's last day), the
  protocol the data gets: leave-latest-out.
* the demo shop (``generate_demo``, defaults: 10,000 customers): as_of 2025-10-01.

Writes benchmarks/results/model_choice.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table

from features.build import to_timestamp
from features.demo import DemoShop, generate_demo
from features.importers.movielens import import_movielens
from features.importers.uci_retail import import_online_retail
from features.io import load_data_dir
from training.bootstrap import paired_mean
from training.protocols import NEW_ITEMS
from training.recommenders.evaluation import fit_for_test, per_customer_metrics
from training.recommenders.models import make_recommender
from training.recommenders.selection import candidates
from training.recommenders.train import DEFAULT_WINDOW_DAYS, protocol_folds

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "model_choice"
SHARED = ROOT.parent / "shared" / "data"
ONLINE_RETAIL = SHARED / "online-retail" / "online_retail.csv.gz"
MOVIELENS = SHARED / "movielens-latest-small" / "ml-latest-small_ratings.csv.gz"
SENDWISE = Path(sys.executable).with_name("sendwise")
K = 10
console = Console()


def prepare(name: str) -> tuple[Path, str]:
    """The data set's contract directory (imported or generated once under benchmarks/.work) and as_of."""
    out = WORK / name
    if name == "online-retail":
        if not (out / "orders.parquet").exists():
            import_online_retail(ONLINE_RETAIL, out)
        return out, "2011-09-09"
    if name == "movielens":
        if not (out / "orders.parquet").exists():
            import_movielens(MOVIELENS, out)
        return out, "2018-09-24"
    if not (out / "orders.parquet").exists():
        generate_demo(DemoShop(), out)
    return out, "2025-10-01"


def through_cli(data: Path, as_of: str, store: Path) -> tuple[dict, pd.DataFrame, float, str]:
    """Run ``sendwise train recommender`` with default options; (run's params and metrics, the choice
    table, seconds, output)."""
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "COLUMNS": "160"}
    start = time.perf_counter()
    done = subprocess.run([str(SENDWISE), "train", "recommender", "--data", str(data), "--as-of", as_of],
                          cwd=store, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"sendwise failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    run = client.search_runs([e.experiment_id for e in client.search_experiments()],
                             "params.auto_chosen != ''", order_by=["attributes.start_time DESC"])[0]
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "model_choice.json", str(store))).read_text())
    table = pd.DataFrame(logged["data"], columns=logged["columns"])
    return {**run.data.params, **run.data.metrics}, table, seconds, done.stdout


def measure(name: str) -> dict:
    data, as_of = prepare(name)
    with tempfile.TemporaryDirectory() as tmp:
        logged, choice, cli_seconds, output = through_cli(data, as_of, Path(tmp))
    console.print(output)
    tables, _ = load_data_dir(data, WORK / f"{name}-rejects")
    folds = protocol_folds(tables, to_timestamp(as_of), DEFAULT_WINDOW_DAYS)
    validation = choice.set_index("candidate")
    rows, per_customer = [], {}
    for candidate in candidates(DEFAULT_WINDOW_DAYS):
        status = str(validation.loc[candidate.name, "status"])
        start = time.perf_counter()
        try:
            model = fit_for_test(make_recommender(candidate.kind, **candidate.params), folds.cut, folds.test)
            scores = per_customer_metrics(model, folds.scored_on, folds.test, K)
            per_customer[candidate.name] = scores["ndcg"]
            holdout = float(scores["ndcg"].mean())
        except Exception as exc:  # noqa: BLE001 - recorded in the table, as auto records it
            holdout, status = float("nan"), f"{status}; holdout: {type(exc).__name__}: {exc}"
        rows.append({"candidate": candidate.name, "validation_ndcg_at_10": float(validation.loc[candidate.name,
                                                                                              f"ndcg_at_{K}"]),
                     "holdout_ndcg_at_10": holdout, "holdout_fit_and_score_s": round(time.perf_counter() - start, 1),
                     "validation_fit_s": float(validation.loc[candidate.name, "fit_seconds"]), "status": status})
    chosen = logged["auto_chosen"]
    best = max((r for r in rows if r["holdout_ndcg_at_10"] == r["holdout_ndcg_at_10"]),
               key=lambda r: r["holdout_ndcg_at_10"])["candidate"]
    joined = pd.concat({"best": per_customer[best], "auto": per_customer[chosen]}, axis=1).fillna(0.0)
    diff = paired_mean(joined["best"].to_numpy(), joined["auto"].to_numpy(), "ndcg")
    return {"data": name, "as_of": as_of, "protocol": logged["protocol"], "protocol_reason": logged["protocol_reason"],
            "holdout_customers": int(folds.test.truth[NEW_ITEMS]["customer_id"].nunique()),
            "validation_customers": int(logged["auto_validation_customers"]),
            "command": f"sendwise train recommender --data {data.relative_to(ROOT)} --as-of {as_of}",
            "cli_seconds": round(cli_seconds, 1), "auto_chosen": chosen, "auto_reason": logged["auto_reason"],
            "auto_holdout_ndcg_at_10": logged[f"holdout_ndcg_at_{K}"], "best_single": best,
            "best_single_holdout_ndcg_at_10": float(joined["best"].mean()),
            "auto_minus_best": diff.difference, "auto_minus_best_interval": list(diff.interval), "candidates": rows}


def show(result: dict) -> None:
    table = Table(title=f"{result['data']} ({result['protocol']}; {result['holdout_customers']:,} holdout customers)")
    for column in ("candidate", "validation NDCG@10", "holdout NDCG@10", "validation fit s", "auto's verdict"):
        table.add_column(column)
    for r in result["candidates"]:
        table.add_row(r["candidate"], f"{r['validation_ndcg_at_10']:.4f}", f"{r['holdout_ndcg_at_10']:.4f}",
                      f"{r['validation_fit_s']:.1f}", r["status"])
    console.print(table)
    low, high = result["auto_minus_best_interval"]
    console.print(f"auto chose {result['auto_chosen']}: holdout NDCG@10 {result['auto_holdout_ndcg_at_10']:.4f}; best "
                  f"single {result['best_single']} {result['best_single_holdout_ndcg_at_10']:.4f}; auto - best "
                  f"{result['auto_minus_best']:+.4f} [{low:+.4f}, {high:+.4f}]; CLI {result['cli_seconds']:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("online-retail", "movielens", "demo"), action="append")
    args = parser.parse_args()
    names = args.only or ["online-retail", "movielens", "demo"]
    out = ROOT / "benchmarks" / "results" / "model_choice.json"
    results = json.loads(out.read_text())["results"] if out.exists() else {}
    for name in names:
        results[name] = measure(name)
        show(results[name])
        out.write_text(json.dumps({"measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                                   "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                                   "results": results}, indent=1, default=float))
    console.print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
