"""The churn classifier choice (training/classifier_choice.py) measured: every candidate kind's validation
ROC-AUC (what the choice reads) and holdout ROC-AUC, next to the run's baselines.

    python benchmarks/bench_churn_choice.py                       # Online Retail and the demo shop
    python benchmarks/bench_churn_choice.py --only online-retail  # one data set

Per data set, as ``sendwise run`` backtests churn (90 days, 12 monthly training dates, default XGBoost
parameters, seed 0): the folds of :func:`training.train.make_folds` at the latest labelled as_of (Online
Retail: 2011-09-10; the demo shop, ``generate_demo`` defaults, 10,000 customers: 2025-10-02); each kind of
``candidate_kinds("churned")`` fitted by ``fit_kind``; ``choose_classifier`` on the calibration fold (its
ROC-AUC of raw scores, the "validation" column); the holdout ROC-AUC of the calibrated probability (what
the shop gets) and of the raw score. Baselines as the run computes them: the recency rule and the logistic
model on log-RFM fitted on every fold before the holdout. One extra row, not a candidate: BG/NBD fitted at
the validation fold's as_of instead of the training fold's latest.

Writes benchmarks/results/churn_choice.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pandas as pd
from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score

from features.demo import DemoShop, generate_demo
from features.importers.uci_retail import import_online_retail
from features.io import load_data_dir
from features.snapshot import data_end
from features.tables import Tables
from features.training_set import Target
from training.baselines import recency_rule
from training.classifier_choice import candidate_kinds, choose_classifier, fit_kind
from training.design import feature_columns
from training.fitting import choose_params, fit_bgnbd_bundle
from training.linear import LogRFMModel
from training.model import BGNBD, XGBOOST
from training.retrain import RetrainSettings, latest_labelled_as_of
from training.train import make_folds

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "churn_choice"
ONLINE_RETAIL = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"
OUT = ROOT / "benchmarks" / "results" / "churn_choice.json"
HORIZON, LABEL, SEED = 90, Target.CHURNED.value, 0


def load(name: str) -> Tables:
    data = WORK.parent / "online_retail" if name == "online-retail" else WORK / name  # shared with churn_ceiling.py
    if not (data / "orders.parquet").exists():
        if name == "online-retail":
            import_online_retail(ONLINE_RETAIL, data)
        else:
            generate_demo(DemoShop(), data)
    return load_data_dir(data, data / "_rejects")[0]


def measure(tables: Tables) -> dict:
    """The choice and every candidate's and baseline's figures on one shop."""
    settings = RetrainSettings()
    as_of = latest_labelled_as_of(data_end(tables), HORIZON)
    started = time.perf_counter()
    folds = make_folds(tables, Target.CHURNED, as_of, HORIZON, settings.periods)
    columns = feature_columns(folds.train)
    params = choose_params(folds.train, folds.valid, columns, LABEL, 0, SEED)
    y_valid, y_hold = folds.calibration[LABEL].to_numpy(int), folds.holdout[LABEL].to_numpy(int)
    rows, bundles = {}, {}
    for kind in candidate_kinds(LABEL):
        tic = time.perf_counter()
        bundles[kind] = fit_kind(kind, folds.train, folds.valid, folds.calibration, columns, LABEL, HORIZON,
                                 params if kind == XGBOOST else {}, SEED, {})
        rows[kind] = {"fit_seconds": round(time.perf_counter() - tic, 2)}
    choice = choose_classifier(bundles, folds.calibration, LABEL)
    extra = fit_bgnbd_bundle(folds.valid, folds.calibration, LABEL, HORIZON, SEED, {})
    for name, bundle in {**bundles, "bgnbd fitted at the validation as_of": extra}.items():
        rows.setdefault(name, {}).update({
            "validation_roc_auc": round(float(roc_auc_score(y_valid, bundle.raw_proba(folds.calibration))), 4),
            "holdout_roc_auc": round(float(roc_auc_score(y_hold, bundle.predict_proba(folds.holdout))), 4),
            "holdout_roc_auc_raw": round(float(roc_auc_score(y_hold, bundle.raw_proba(folds.holdout))), 4)})
    fitted = pd.concat([folds.train, folds.valid, folds.calibration], ignore_index=True)
    baselines = {"recency rule": recency_rule(folds.holdout, churn=True),
                 "logistic log-RFM (run's baseline)": LogRFMModel.fit(fitted, fitted[LABEL].to_numpy(int)).predict_proba(
                     folds.holdout)}
    for name, scores in baselines.items():
        rows[name] = {"holdout_roc_auc": round(float(roc_auc_score(y_hold, scores)), 4)}
    model = bundles[BGNBD].formula
    return {
        "holdout_as_of": f"{as_of:%Y-%m-%d}", "fit_as_of_dates": [f"{d:%Y-%m-%d}" for d in folds.fit_dates],
        "rows": {fold: len(getattr(folds, fold)) for fold in ("train", "valid", "calibration", "holdout")},
        "churn_rate": {"validation": round(float(y_valid.mean()), 4), "holdout": round(float(y_hold.mean()), 4)},
        "chosen": choice.kind, "reason": choice.reason,
        "bgnbd_parameters": {k: round(v, 6) for k, v in model.to_dict().items() if k in ("r", "alpha", "a", "b")},
        "models": rows, "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("online-retail", "demo"))
    args = parser.parse_args()
    names = [args.only] if args.only else ["online-retail", "demo"]
    results = json.loads(OUT.read_text()) if OUT.exists() and args.only else {}
    results.update({"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
                    "protocol": f"churn within {HORIZON} days, sendwise run's backtest folds, ROC-AUC"})
    for name in names:
        results[name] = measure(load(name))
    OUT.write_text(json.dumps(results, indent=1))
    for name in names:
        entry = results[name]
        table = Table(title=f"{name}: churn, holdout as_of {entry['holdout_as_of']} (chosen: {entry['chosen']})")
        for col in ("model", "validation ROC-AUC", "holdout ROC-AUC", "holdout ROC-AUC (raw)"):
            table.add_column(col)
        for model, figures in entry["models"].items():
            table.add_row(model, *(f"{figures[k]:.4f}" if k in figures else "" for k in
                                   ("validation_roc_auc", "holdout_roc_auc", "holdout_roc_auc_raw")))
        Console().print(table)
        print(entry["reason"])
    print(f"written to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
