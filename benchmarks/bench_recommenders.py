"""Recommender benchmarks: quality on real data, training overhead over bare implicit, batch speed.

    python benchmarks/bench_recommenders.py                 # everything (about 40 minutes on 2 cores)
    python benchmarks/bench_recommenders.py --only quality  # Online Retail + MovieLens tables
    python benchmarks/bench_recommenders.py --only speed    # ALS fit overhead + 1M-customer batch
    python benchmarks/bench_recommenders.py --only batch --batch-model reranker --customers 100000
                                                            # another model's batch (about 12 minutes)

Quality protocols (NDCG@10 and the rest with binary relevance, new items, purchased excluded):
* Online Retail: fitted before 2011-09-09; truth = products a customer bought from then to the end of
  the data that they had not bought before (the issue's protocol).
* MovieLens latest-small (ratings >= 4 as interactions): fitted before 2017-01-01; truth = movies a
  user rated >= 4 from then to the end of the data that they had not rated before.
Default rows fit every model of the factory with its default parameters; tuned rows come from
``train_recommender`` (Optuna on the window just before the as_of; the reranker's training windows
are as long as that window).

Writes benchmarks/results/recommenders.json and prints tables.
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
from threadpoolctl import threadpool_limits  # noqa: E402

from features.demo import DemoShop, generate_demo  # noqa: E402
from features.importers.movielens import import_movielens  # noqa: E402
from features.importers.uci_retail import import_online_retail  # noqa: E402
from features.interactions import build_interactions  # noqa: E402
from features.io import load_data_dir  # noqa: E402
from training.recommenders.batch import recommend_all  # noqa: E402
from training.recommenders.evaluation import NEW_ITEMS, evaluate  # noqa: E402
from training.recommenders.models import MODELS, make_recommender  # noqa: E402
from training.recommenders.train import train_recommender  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work"
SHARED = ROOT.parent / "shared" / "data"
ONLINE_RETAIL = SHARED / "online-retail" / "online_retail.csv.gz"
MOVIELENS = SHARED / "movielens-latest-small" / "ml-latest-small_ratings.csv.gz"
BATCH_TARGET_S = 60.0
console = Console()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepared(name: str, make) -> Path:
    path = WORK / name
    if not (path / "orders.parquet").exists():
        make(path)
    return path


def quality(name: str, data: Path, as_of: str, trials: int, window_days: int, mlruns: Path) -> list[dict]:
    tables, _ = load_data_dir(data, None)
    date = datetime.fromisoformat(as_of)
    table = evaluate(tables, date, {kind: make_recommender(kind) for kind in MODELS})
    table["model"] = table["model"].map(lambda m: m if m in ("popular", "trending") else f"{m} (defaults)")
    rows = table.to_dict("records")
    for kind in ("als", "itemknn", "reranker"):
        start = time.perf_counter()
        result = train_recommender(tables, as_of, kind, trials=trials, window_days=window_days, mlruns=mlruns)
        tuned = result.table[result.table["model"] == kind].to_dict("records")
        for row in tuned:
            row.update(model=f"{kind} (tuned, {trials} trials)", params=result.params,
                       seconds=round(time.perf_counter() - start, 1))
        rows += tuned
    for row in rows:
        row["dataset"], row["as_of"] = name, as_of
    return rows


def print_quality(rows: list[dict]) -> None:
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        table = Table(title=f"{dataset}: new items, k=10", title_justify="left")
        for col in ("model", "customers", "ndcg@10", "precision@10", "recall@10", "map@10", "hit rate", "coverage"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for r in sorted((r for r in rows if r["dataset"] == dataset and r["variant"] == NEW_ITEMS),
                        key=lambda r: -r["ndcg"]):
            table.add_row(r["model"], f"{r['customers']:,}", *(f"{r[m]:.4f}" for m in
                          ("ndcg", "precision", "recall", "map", "hit_rate")), f"{r['coverage']:.3f}")
        console.print(table)


def fit_overhead(data: Path, as_of: str, repeats: int) -> dict:
    """Our ALS fit vs implicit's on the same matrix and parameters (medians of ``repeats``)."""
    from implicit.cpu.als import AlternatingLeastSquares

    tables, _ = load_data_dir(data, None)
    matrix = build_interactions(tables, datetime.fromisoformat(as_of)).matrix
    ours, bare = [], []
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits both alike
        start = time.perf_counter()
        with threadpool_limits(1, "blas"):
            AlternatingLeastSquares(random_state=0).fit(matrix, show_progress=False)
        bare.append(time.perf_counter() - start)
        model = make_recommender("als")
        start = time.perf_counter()
        model._fit(matrix)  # the model's own fit, matrix already built (that is timed in the batch row)
        ours.append(time.perf_counter() - start)
    b, o = statistics.median(bare), statistics.median(ours)
    return {"matrix": list(matrix.shape), "nnz": int(matrix.nnz), "bare_implicit_s": round(b, 3),
            "sendwise_s": round(o, 3), "overhead_pct": round(100 * (o - b) / b, 1),
            "bare_runs": [round(x, 3) for x in bare], "sendwise_runs": [round(x, 3) for x in ours]}


def batch(customers: int, products: int, kind: str = "als") -> dict:
    name = "demo_1m_10k_products" if (customers, products) == (1_000_000, 10_000) else f"demo_{customers}_{products}"
    data = prepared(name, lambda out: generate_demo(DemoShop(customers=customers, seed=0, products=products), out))
    tables, _ = load_data_dir(data, None)
    as_of = datetime(2026, 1, 1)
    start = time.perf_counter()
    model = make_recommender(kind, **({"factors": 64} if kind == "als" else {})).fit_tables(tables, as_of)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    recs = recommend_all(tables, as_of, model, k=10)
    batch_s = time.perf_counter() - start
    return {"model": kind, "customers": int(recs["customer_id"].nunique()), "products": len(model.product_ids_),
            "rows": len(recs), "fit_s": round(fit_s, 1), "recommend_s": round(batch_s, 1),
            "target_s": BATCH_TARGET_S, "peak_rss_mb": round(peak_rss_mb()),
            "sources": recs["source"].value_counts().to_dict()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["quality", "speed", "batch"],
                        help="batch: only the batch recommendation of --batch-model for --customers")
    parser.add_argument("--batch-model", default="als", choices=["als", "reranker"])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--customers", type=int, default=1_000_000)
    args = parser.parse_args()
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                     "when": datetime.now(UTC).isoformat(timespec="seconds")}
    if args.only in (None, "quality"):
        rows = []
        mlruns = Path(tempfile.mkdtemp(prefix="sendwise-bench-mlruns-"))  # one store for the whole run
        if ONLINE_RETAIL.exists():
            data = prepared("online_retail", lambda out: import_online_retail(ONLINE_RETAIL, out))
            rows += quality("Online Retail", data, "2011-09-09", args.trials, 90, mlruns)
        if MOVIELENS.exists():
            data = prepared("movielens", lambda out: import_movielens(MOVIELENS, out))
            rows += quality("MovieLens latest-small", data, "2017-01-01", args.trials, 365, mlruns)
        print_quality(rows)
        results["quality"] = rows
    if args.only in (None, "speed"):
        if ONLINE_RETAIL.exists():
            data = prepared("online_retail", lambda out: import_online_retail(ONLINE_RETAIL, out))
            results["als_fit_online_retail"] = fit_overhead(data, "2011-09-09", repeats=5)
        big = prepared("demo_100k", lambda out: generate_demo(DemoShop(customers=100_000, seed=0), out))
        results["als_fit_demo_100k"] = fit_overhead(big, "2026-01-01", repeats=5)
        results["batch"] = batch(args.customers, 10_000)
        table = Table(title="Speed (2 cores; medians)", title_justify="left")
        for col in ("case", "sendwise", "baseline", "note"):
            table.add_column(col)
        for key in ("als_fit_online_retail", "als_fit_demo_100k"):
            if key in results:
                r = results[key]
                table.add_row(f"ALS fit {key[8:]} {r['matrix'][0]:,}x{r['matrix'][1]:,}", f"{r['sendwise_s']} s",
                              f"{r['bare_implicit_s']} s bare implicit", f"overhead {r['overhead_pct']}%")
        b = results["batch"]
        table.add_row(f"recommend {b['customers']:,} customers x {b['products']:,} products", f"{b['recommend_s']} s",
                      f"target {BATCH_TARGET_S:.0f} s", f"peak RSS {b['peak_rss_mb']:,} MB; fit {b['fit_s']} s")
        console.print(table)
    if args.only == "batch":
        results["batch"] = b = batch(args.customers, 10_000, args.batch_model)
        console.print(f"{b['model']}: recommend {b['customers']:,} customers x {b['products']:,} products "
                      f"{b['recommend_s']} s (target {BATCH_TARGET_S:.0f} s for 1M), fit {b['fit_s']} s, "
                      f"peak RSS {b['peak_rss_mb']:,} MB")
    name = {None: "recommenders", "batch": f"recommenders_batch_{args.batch_model}_{args.customers}"}.get(
        args.only, f"recommenders_{args.only}")
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    console.print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
