"""How precise is an NDCG@10 on Online Retail's holdout? Per-customer bootstrap intervals.

    python benchmarks/recommender_ci.py      # about 30 seconds on 2 cores

The issue's protocol (fitted before 2011-09-09, truth = new products bought from then to the end of
the data, purchased excluded), models with their default parameters. For each model: NDCG@10, its
standard error over customers and a 95 % bootstrap interval; for the reranker against ALS and
item-kNN, the paired bootstrap interval of the difference (``training.bootstrap.paired_mean``).
Writes benchmarks/results/recommender_ci.json and prints a table.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402
from bench_recommenders import ONLINE_RETAIL, prepared  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from features.importers.uci_retail import import_online_retail  # noqa: E402
from features.io import load_data_dir  # noqa: E402
from training.bootstrap import paired_mean  # noqa: E402
from training.recommenders.evaluation import holdout, per_customer_metrics  # noqa: E402
from training.recommenders.models import make_recommender  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AS_OF = datetime(2011, 9, 9)
MODELS = ("popular", "als", "itemknn", "reranker")
RESAMPLES = 2000


def main() -> None:
    if not ONLINE_RETAIL.exists():
        raise SystemExit(f"{ONLINE_RETAIL} is missing: this benchmark needs the UCI Online Retail file.")
    tables, _ = load_data_dir(prepared("online_retail", lambda out: import_online_retail(ONLINE_RETAIL, out)), None)
    test = holdout(tables, AS_OF)
    ndcg = {}
    for kind in MODELS:
        model = make_recommender(kind).fit_tables(tables, AS_OF)
        ndcg[kind] = per_customer_metrics(model, tables, test, 10)["ndcg"]
    customers = ndcg["reranker"].index
    rng = np.random.default_rng(0)
    rows = []
    for kind, values in ndcg.items():
        x = values.reindex(customers).to_numpy()
        boot = x[rng.integers(0, len(x), (RESAMPLES, len(x)))].mean(axis=1)
        low, high = np.quantile(boot, [0.025, 0.975])
        rows.append({"model": kind, "customers": len(x), "ndcg_at_10": float(x.mean()),
                     "standard_error": float(x.std(ddof=1) / np.sqrt(len(x))), "interval_95": [float(low), float(high)]})
    pairs = []
    for base in ("als", "itemknn"):
        diff = paired_mean(ndcg[base].reindex(customers).to_numpy(), ndcg["reranker"].to_numpy(),
                           "ndcg_at_10", RESAMPLES)
        pairs.append({"reranker_minus": base, "difference": diff.difference, "interval_95": list(diff.interval)})

    table = Table(title="Online Retail, as_of 2011-09-09, new items, defaults", title_justify="left")
    for col in ("model", "customers", "NDCG@10", "SE", "95 % interval"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(r["model"], f"{r['customers']:,}", f"{r['ndcg_at_10']:.4f}", f"{r['standard_error']:.4f}",
                      "[{:.4f}, {:.4f}]".format(*r["interval_95"]))
    Console().print(table)
    for p in pairs:
        Console().print(f"reranker - {p['reranker_minus']}: {p['difference']:+.4f} "
                        "[{:+.4f}, {:+.4f}]".format(*p["interval_95"]))
    out = ROOT / "benchmarks" / "results" / "recommender_ci.json"
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                               "when": datetime.now(UTC).isoformat(timespec="seconds"), "as_of": AS_OF.date().isoformat(),
                               "resamples": RESAMPLES, "models": rows, "paired": pairs}, indent=1))
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
