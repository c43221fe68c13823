"""CLV on a time holdout: BG/NBD + Gamma-Gamma (training/clv.py) against the historic spend rate.

Two fits of the same models: ``served``, what ``sendwise run`` fits and every output predicts with
(``fit_clv_features``: on the customers' features at the as_of, orders and mean order values), and
``order_days``, on the library's summary (``fit_clv``: order days, repeat-order values).

Protocol (``training.protocols.clv_holdout``): fit on the orders before the as_of; the holdout is the next 180
days. The as_of is chosen by one rule for every data set, not by the figures: the latest midnight
whose 180-day holdout ends by the start of the data's last day (the last day may be partial). 180
days because neither data set has room for a 365-day holdout after a year of history (Online Retail
spans 374 days; the demo shop 548). Every calibration customer (an order before the as_of) is scored.

Baselines (``training.clv.historic_rate``), both times 180 days: ``historic_rate``, a customer's spend
(and order days) per day since their own first order; ``past_spend_rate``, per day of the shop's whole
history before the as_of (the same divisor for everyone: it ranks customers by past spend).

Data: UCI Online Retail (imported to benchmarks/.work/online_retail when absent; skipped when the
file is not there) and the demo shop (``generate_demo``, 10,000 customers, seed 0).

``total_ratio`` is ``orders_ratio`` (expected over actual orders) times ``spend_per_order_ratio``. The
served model counts orders (the features' ``orders_count``) and is compared with the orders placed in the
holdout; the others count order days and are compared with those. The
served model's figures are also broken down by the customers' repeat orders before the as_of, to show
where a gap in the total comes from.

Also timed: both fits (scipy's maximum likelihood: no compile) and predicting.

    python benchmarks/bench_clv.py

Writes benchmarks/results/clv.json and benchmarks/results/clv_calibration.png; prints a table.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from rich.console import Console
from rich.table import Table as RichTable

from features.build import build_features
from features.demo import DemoShop, generate_demo
from features.importers.uci_retail import import_online_retail
from features.io import load_data_dir
from features.tables import Tables
from training.clv import (
    clv_summary,
    evaluate_clv,
    features_summary,
    fit_clv,
    fit_clv_features,
    historic_rate,
)
from training.protocols import clv_holdout

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work"
RESULTS = ROOT / "benchmarks" / "results"
ONLINE_RETAIL = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"
HOLDOUT_DAYS = 180
DEMO = DemoShop(customers=10_000, seed=0)
METRICS = ("mae", "spearman", "top_decile_share", "total_ratio", "orders_ratio", "spend_per_order_ratio", "orders_mae")
FREQUENCY_BINS = (-1, 0, 1, 3, 7, 15, 10_000)  # repeat orders before the as_of: 0, 1, 2-3, 4-7, 8-15, 16+


def data_sets() -> dict[str, Tables]:
    found = {}
    if ONLINE_RETAIL.exists():
        retail = WORK / "online_retail"
        if not (retail / "orders.parquet").exists():
            import_online_retail(ONLINE_RETAIL, retail)
        found["online_retail"], _ = load_data_dir(retail)
    demo = WORK / f"clv_demo_{DEMO.customers}"
    if not (demo / "orders.parquet").exists():
        generate_demo(DEMO, demo)
    found[f"demo_{DEMO.customers}"], _ = load_data_dir(demo, demo / "_rejects")
    return found


def holdout_as_of(tables: Tables, days: int) -> pd.Timestamp:
    """The latest midnight whose ``days``-day holdout ends by the start of the data's last day."""
    _, last = tables.time_range()
    return pd.Timestamp(last).normalize() - pd.Timedelta(days=days)


def timed(fn, *args) -> tuple[object, float]:
    started = time.perf_counter()
    out = fn(*args)
    return out, round(time.perf_counter() - started, 2)


def by_frequency(holdout: pd.DataFrame, summary: pd.DataFrame, predicted: pd.DataFrame) -> list[dict]:
    """Predicted and actual orders (placed) and spend per group of repeat orders before the as_of: where
    the total's gap comes from."""
    joined = holdout.merge(predicted, on="customer_id").merge(summary[["customer_id", "frequency"]], on="customer_id")
    groups = pd.cut(joined["frequency"], FREQUENCY_BINS, labels=["0", "1", "2-3", "4-7", "8-15", "16+"])
    out = joined.groupby(groups, observed=True).agg(
        customers=("customer_id", "size"), expected_orders=("expected_orders", "sum"),
        actual_orders=("actual_orders_placed", "sum"), predicted_spend=("predicted_clv", "sum"),
        actual_spend=("actual_spend", "sum"))
    out["spend_ratio"] = out["predicted_spend"] / out["actual_spend"]
    return out.rename_axis("repeat_orders").reset_index().round(3).to_dict("records")


def measure(name: str, tables: Tables) -> dict:
    as_of = holdout_as_of(tables, HOLDOUT_DAYS)
    model, first_s = timed(fit_clv, tables, as_of, HOLDOUT_DAYS)
    features = build_features(tables.before(as_of), as_of)
    served, served_s = timed(fit_clv_features, features, as_of, HOLDOUT_DAYS)
    timings = {"fit_s": first_s, "served_fit_s": served_s}
    summary = clv_summary(tables, as_of)
    predicted, predict_s = timed(model.predict, summary, HOLDOUT_DAYS)
    timings["predict_s"] = predict_s
    holdout = clv_holdout(tables, as_of, HOLDOUT_DAYS)
    history_days = model.report["history_days"]
    served_summary = features_summary(features)
    served_predicted = served.predict(served_summary, HOLDOUT_DAYS)
    results = evaluate_clv(holdout, {"served": served_predicted}, orders="actual_orders_placed")
    results |= evaluate_clv(holdout, {
                                     "order_days": predicted,
                                     "historic_rate": historic_rate(summary, HOLDOUT_DAYS),
                                     "past_spend_rate": historic_rate(summary, HOLDOUT_DAYS, history_days)})
    return {
        "as_of": f"{as_of:%Y-%m-%d}", "holdout_days": HOLDOUT_DAYS, "customers": model.customers,
        "repeat_buyers": model.repeat_buyers, "holdout_spend": float(holdout["actual_spend"].sum()),
        "horizon_note": model.report["horizon"], "parameters": {k: getattr(model, k) for k in
                                                                  ("r", "alpha", "a", "b", "p", "q", "v")},
        "mean_spend_per_order": model.mean_spend, "p_alive_mean": float(predicted["p_alive"].mean()),
        "next_order_dated_share": float(predicted["next_order_date"].notna().mean()),
        "timings": timings, "results": results,
        "served_by_repeat_orders": by_frequency(holdout, served_summary, served_predicted),
    }


def plot(report: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, len(report), figsize=(5.5 * len(report), 4.5), squeeze=False)
    for ax, (name, entry) in zip(axes[0], report.items(), strict=True):
        top = 0.0
        for model, style in (("served", "o-"), ("historic_rate", "s--"), ("past_spend_rate", "^:")):
            cal = pd.DataFrame(entry["results"][model]["calibration"])
            ax.plot(cal["expected_orders"], cal["actual_orders"], style, label=model)
            top = max(top, cal["expected_orders"].max(), cal["actual_orders"].max())
        ax.plot([0, top], [0, top], color="grey", lw=0.8, label="perfect")
        ax.set(title=f"{name}, as_of {entry['as_of']}, {entry['holdout_days']} days",
               xlabel="mean expected orders (decile of expected)", ylabel="mean actual orders")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    report = {name: measure(name, tables) for name, tables in data_sets().items()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(report, RESULTS / "clv_calibration.png")
    out = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
           "command": "python benchmarks/bench_clv.py", "data_sets": report}
    (RESULTS / "clv.json").write_text(json.dumps(out, indent=2) + "\n")

    console = Console(width=170)
    table = RichTable(title=f"CLV over a {HOLDOUT_DAYS}-day holdout (spend in the shop's currency)")
    for col in ("data", "as_of", "customers", "model", *METRICS):
        table.add_column(col)
    for name, entry in report.items():
        for model, res in entry["results"].items():
            table.add_row(name, entry["as_of"], str(entry["customers"]), model,
                          *(f"{res[m]:,.3f}" for m in METRICS))
    console.print(table)
    for name, entry in report.items():
        console.print(f"{name}: {entry['horizon_note']}; timings {entry['timings']}; "
                      f"mean P(alive) {entry['p_alive_mean']:.3f}; dated next orders {entry['next_order_dated_share']:.1%}")
        console.print("  served, by repeat orders before the as_of (customers, expected vs actual orders, "
                      "predicted vs actual spend, ratio):")
        console.print("   " + "; ".join(f"{g['repeat_orders']}: {g['customers']}, {g['expected_orders']:,.0f} vs "
                                        f"{g['actual_orders']:,.0f}, {g['predicted_spend']:,.0f} vs "
                                        f"{g['actual_spend']:,.0f}, {g['spend_ratio']:.2f}"
                                        for g in entry["served_by_repeat_orders"]))
        for model, res in entry["results"].items():
            cal = pd.DataFrame(res["calibration"]).round(3)
            console.print(f"  {model} calibration (decile, customers, mean expected, mean actual orders):")
            console.print("   " + "; ".join(f"{r.decile}: {r.expected_orders} vs {r.actual_orders}"
                                            for r in cal.itertuples()))


if __name__ == "__main__":
    main()
