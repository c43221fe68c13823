"""What one fresh answer costs, in-process (no HTTP): the work a customer's event makes necessary.

    python benchmarks/bench_fresh_answer.py            # 10,000 customers, 1,000 drawn: fresh_answer.json
    python benchmarks/bench_fresh_answer.py --quick    # 2,000 customers, 300 drawn: fresh_answer_quick.json

(JSON under benchmarks/results/.)

The service (``Sendwise.inner()``, as the tests build it; the same settings as bench_live.py) on the
generated shop and models of bench_service.py. Drawn customers get events (bench_live.py's mix, 5 per
drawn customer on average) through the service's ingestion; then, per touched customer, one after
another in this thread, each part timed right after a new event of theirs (so that no cache of theirs
holds anything, as for the service's first answer after an event):

- **online features**: the customer's features at the clock's now from the online store;
- **scores of one row**: ``score_row`` on those features (both models on one thread, three reasons,
  lifetime value and next order date), as the service calls it;
- **fresh view**: the whole recomputation the service makes for a touched customer (features, scores,
  signals, the cached record), after another event;
- **cached view**: the same view asked again (a cache hit: what an answer reads until the next event).

Then ``score_features`` on their features in chunks of 100 customers (the customers of one of
bench_live.py's feed batches), XGBoost on one thread: scores per customer as a rescoring ahead of the
answers could compute them. Medians over the customers, median of ``--repeats`` passes. The table ends
with what rescoring every touched customer ahead would take at 1,000 events/s, each event a different
customer (bench_live.py's busy windows): 1,000 x (fresh view - scores of one row + batched scores per
customer) core-seconds per second, the one-row scores replaced by the batched ones.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import pandas as pd
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_live import Events, machine, shop_ids
from bench_service import prepare
from threadpoolctl import threadpool_limits

from features.event_log import parse_events
from features.schema import CUSTOMER_ID
from training.scoring import score_features, score_row

RESULTS = ROOT / "benchmarks" / "results"
EVENTS_PER_S = 1_000  # bench_live.py's busy windows
FEED_BATCH = 100  # events (here: customers) per batch of bench_live.py's feed
console = Console()


def service(data: Path, mlruns: Path, work: Path) -> Any:
    """The service in this process on ``data``, with bench_live.py's settings."""
    os.environ.update({"SENDWISE_DATA": str(data), "SENDWISE_MLRUNS": str(mlruns),
                       "SENDWISE_EXPOSURE_LOG": str(work / "exposures.jsonl"), "SENDWISE_RELOAD_SECONDS": "0",
                       "SENDWISE_CLOCK": "auto", "SENDWISE_EVENT_LOG": str(work / "events.jsonl")})
    from serving.service import Sendwise

    return Sendwise.inner()


def timed(call: Callable[[], object]) -> float:
    """Microseconds ``call()`` took."""
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e6


def one_pass(svc: Any, customers: list[str], events: Events) -> dict[str, float]:
    """Per-customer microseconds of each part (medians over ``customers``) and the batched scores."""
    state, profiles = svc.live.current.state, svc.profiles
    table, churn, propensity = state.customers, state.churn, state.propensity

    def event_of(customer: str) -> None:
        now = profiles.clock.now()
        svc._ingest(parse_events({"events": [events.one(now) | {"customer_id": customer}]}, now=now))

    parts: dict[str, list[float]] = {"online features": [], "scores of one row": [], "fresh view": [],
                                     "cached view": []}
    rows = []
    for customer in customers:
        event_of(customer)
        now = profiles.clock.now()
        parts["online features"].append(timed(lambda c=customer, t=now: profiles.features(c, t)))
        values = profiles.features(customer, now)
        parts["scores of one row"].append(timed(lambda v=values, t=now: score_row(v, churn, propensity, t)))
        event_of(customer)
        parts["fresh view"].append(timed(lambda c=customer: profiles.fresh_view(table, c)))
        parts["cached view"].append(timed(lambda c=customer: profiles.fresh_view(table, c)))
        rows.append({CUSTOMER_ID: customer, **values})
    frame = pd.DataFrame(rows)
    with threadpool_limits(limits=1, user_api="openmp"):
        batched = sum(timed(lambda f=frame.iloc[i:i + FEED_BATCH]: score_features(f, churn, propensity))
                      for i in range(0, len(frame), FEED_BATCH)) / len(frame)
    return {name: statistics.median(values) for name, values in parts.items()} | {
        f"batched scores ({FEED_BATCH} customers a call, one thread), per customer": batched}


def run(quick: bool, repeats: int) -> dict:
    """Every pass on one service over the generated shop; the JSON's contents."""
    customers_n, drawn_n, per_customer = (2_000, 300, 5) if quick else (10_000, 1_000, 5)
    data, mlruns = prepare(customers_n)
    work = Path(tempfile.mkdtemp(prefix="sendwise-bench-fresh-"))
    svc = service(data, mlruns, work)
    ids, products = shop_ids(data)
    random.Random(0).shuffle(ids)
    feeder = Events("fresh", ids[:drawn_n], products, seed=3)
    now = svc.profiles.clock.now()
    for body in feeder.bodies(drawn_n * per_customer // FEED_BATCH, FEED_BATCH, now):
        svc._ingest(parse_events(json.loads(body), now=now))
    touched = [c for c in ids[:drawn_n] if svc.profiles.version(c) is not None]
    passes = [one_pass(svc, touched, feeder) for _ in range(repeats)]
    parts = {name: round(statistics.median(p[name] for p in passes), 1) for name in passes[0]}
    batched_us = next(v for k, v in parts.items() if k.startswith("batched"))
    ahead = EVENTS_PER_S * (parts["fresh view"] - parts["scores of one row"] + batched_us) / 1e6
    return {"machine": machine(), "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "python benchmarks/bench_fresh_answer.py" + (" --quick" if quick else ""),
            "customers": customers_n, "touched_customers": len(touched),
            "events_per_drawn_customer_on_average": per_customer, "repeats": repeats,
            "per_customer_us": parts, "passes": passes,
            "rescore_ahead_at_1000_events_per_s_core_seconds_per_s": round(ahead, 2)}


def show(results: dict) -> None:
    """The table of the per-customer medians and the estimate."""
    table = Table(title=f"One fresh answer in-process, {results['customers']:,} customers, "
                        f"{results['touched_customers']:,} touched, {results['machine']['cpus']} cores",
                  title_justify="left")
    table.add_column("part, per customer")
    table.add_column("median", justify="right")
    for name, us in results["per_customer_us"].items():
        table.add_row(name, f"{us / 1000:.3f} ms")
    table.add_row(f"rescoring every touched customer ahead, at {EVENTS_PER_S:,} events/s",
                  f"{results['rescore_ahead_at_1000_events_per_s_core_seconds_per_s']:.2f} core-s/s")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = run(args.quick, args.repeats)
    show(results)
    out = RESULTS / ("fresh_answer_quick.json" if args.quick else "fresh_answer.json")
    out.write_text(json.dumps(results, indent=1) + "\n")
    console.print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
