"""A recommender fitted on a sample of customers, the rest folded in, against a fit on every customer.

    python benchmarks/bench_recommender_sample.py                       # Online Retail + a 100k generated shop
    python benchmarks/bench_recommender_sample.py --customers 20000 --seeds 1   # a quick look

What ``sendwise train recommender --engine spark`` does on a shop too big for one node: ALS (default
parameters) is fitted on a seeded sample of customers, and ``recommend`` folds every other customer in
from their interactions (``ALSRecommender.fold_in``: implicit's ``recalculate_user`` against the fitted
item factors). The engine does not change the lists (``tests/test_spark_scoring.py`` holds Spark equal
to the local batch for a sample-fitted ALS), so this runs locally.

Protocol: the evaluation's time split (fitted before the as_of; truth: products a customer bought from
then to the end of the data that they had not bought before; NDCG@10, binary relevance). Every row is
scored on the same test customers: all of them, then those inside and outside the sample. A fit on a
fraction f draws each customer with probability f (numpy, seeded); medians over ``--seeds`` draws.
Popular is the baseline. Writes benchmarks/results/recommender_sample.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from features.demo import DemoShop, generate_demo
from features.importers.uci_retail import import_online_retail
from features.interactions import build_interactions
from features.io import load_data_dir
from features.schema import CUSTOMER_ID
from training.protocols import time_split
from training.recommenders.evaluation import NEW_ITEMS, per_customer_metrics
from training.recommenders.models import make_recommender

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work"
ONLINE_RETAIL = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"
K = 10
console = Console()


def prepared(name: str, make) -> Path:
    path = WORK / name
    if not (path / "orders.parquet").exists():
        make(path)
    return path


def ndcg(per_customer: pd.DataFrame, customers: pd.Index) -> float:
    return float(per_customer["ndcg"].reindex(customers).mean())


def measure(name: str, data: Path, as_of: str, fractions: list[float], seeds: int) -> list[dict]:
    tables, _ = load_data_dir(data, None)
    date = datetime.fromisoformat(as_of)
    test = time_split(tables, date)
    interactions = build_interactions(tables, date)  # what fit_tables fits on
    tested = pd.Index(sorted(set(test.truth[NEW_ITEMS][CUSTOMER_ID])))
    rows = []

    def row(model: str, per_customer: pd.DataFrame, sampled: pd.Index | None, fraction: float, seed: int | None,
            fit_s: float) -> dict:
        inside = tested.intersection(sampled) if sampled is not None else tested
        outside = tested.difference(inside)
        return {"dataset": name, "as_of": as_of, "model": model, "fraction": fraction, "seed": seed,
                "customers_fitted": len(sampled) if sampled is not None else len(interactions.customer_ids),
                "test_customers": len(tested), "ndcg": ndcg(per_customer, tested),
                "ndcg_inside": ndcg(per_customer, inside) if len(inside) else None,
                "ndcg_outside": ndcg(per_customer, outside) if len(outside) else None,
                "test_inside": len(inside), "fit_s": round(fit_s, 2)}

    popular = make_recommender("popular").fit_tables(tables, date)
    rows.append(row("popular", per_customer_metrics(popular, tables, test, K), None, 1.0, None, 0.0))
    start = time.perf_counter()
    full = make_recommender("als").fit(interactions)
    fit_s = time.perf_counter() - start
    full_scores = per_customer_metrics(full, tables, test, K)
    rows.append(row("als, every customer", full_scores, None, 1.0, None, fit_s))
    for fraction in fractions:
        for seed in range(seeds):
            keep = np.random.default_rng(seed).random(len(interactions.customer_ids)) < fraction
            sample = replace(interactions, matrix=interactions.matrix[keep],
                             customer_ids=interactions.customer_ids[keep])
            start = time.perf_counter()
            model = make_recommender("als").fit(sample)
            fit_s = time.perf_counter() - start
            scores = per_customer_metrics(model, tables, test, K)
            rows.append(row(f"als on {fraction:.0%}, rest folded in", scores, sample.customer_ids, fraction, seed,
                            fit_s))
            # the same customers' figure from the fit on everyone, to compare like with like
            rows[-1]["full_fit_ndcg_outside"] = ndcg(full_scores, tested.difference(sample.customer_ids))
    console.print(f"{name}: {len(interactions.customer_ids):,} customers with interactions before {as_of}, "
                  f"{len(tested):,} test customers")
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Medians over seeds per dataset and model."""
    out = []
    for (dataset, model), group in pd.DataFrame(rows).groupby(["dataset", "model"], sort=False):
        med = {c: statistics.median(group[c].dropna()) if group[c].notna().any() else None
               for c in ("ndcg", "ndcg_inside", "ndcg_outside", "full_fit_ndcg_outside", "fit_s",
                         "customers_fitted")
               if c in group}
        out.append({"dataset": dataset, "model": model, "seeds": int(group["seed"].notna().sum()) or 1,
                    "test_customers": int(group["test_customers"].iloc[0]), **med})
    return out


def render(summaries: list[dict]) -> Table:
    table = Table(title=f"NDCG@{K}, new items: ALS fitted on a sample of customers, the rest folded in "
                        "(medians over seeds)", title_justify="left")
    for col in ("dataset", "model", "fitted on", "all test customers", "outside the sample",
                "same customers, full fit", "fit s"):
        table.add_column(col, justify="left" if col in ("dataset", "model") else "right")
    for r in summaries:
        cells = ["-" if r.get(key) is None or pd.isna(r[key]) else f"{r[key]:.4f}"
                 for key in ("ndcg", "ndcg_outside", "full_fit_ndcg_outside")]
        table.add_row(r["dataset"], r["model"], f"{int(r['customers_fitted']):,}", *cells, f"{r['fit_s']:.1f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000, help="customers of the generated shop")
    parser.add_argument("--fractions", default="0.25,0.5", help="comma-separated sample fractions")
    parser.add_argument("--seeds", type=int, default=3, help="sample draws per fraction")
    args = parser.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    if not all(0 < f < 1 for f in fractions) or args.seeds < 1:
        raise SystemExit(f"--fractions takes numbers in (0, 1), --seeds a positive count; got {args.fractions!r}, "
                         f"{args.seeds}")
    rows = []
    if ONLINE_RETAIL.exists():
        data = prepared("online_retail", lambda out: import_online_retail(ONLINE_RETAIL, out))
        rows += measure("Online Retail", data, "2011-09-09", fractions, args.seeds)
    else:
        console.print(f"{ONLINE_RETAIL} is absent: Online Retail skipped")
    shop = DemoShop(customers=args.customers, seed=0)
    data = prepared(f"recsample_demo_{args.customers}", lambda out: generate_demo(shop, out))
    rows += measure(f"generated, {args.customers:,} customers", data, "2025-10-01", fractions, args.seeds)
    summaries = summary(rows)
    console.print(render(summaries))
    out = ROOT / "benchmarks" / "results" / "recommender_sample.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "ALS fitted on a sample of customers, the rest folded in, against a fit on every customer",
        "command": "python benchmarks/bench_recommender_sample.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
        "summary": summaries, "runs": rows}, indent=1, default=str) + "\n")
    console.print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
