"""The end-to-end demo: generate a shop, validate it, build features and a snapshot, train, score."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from features.cli import generate, snapshot, training_set, validate
from features.training_set import Target
from sendwise.console import console
from training.cli import list_models, score, train_churn, train_propensity


def run_demo(workdir: Path, customers: int, seed: int) -> None:
    data = workdir / "data"
    console.rule("1. generate a demo shop")
    generate(out=data, customers=customers, seed=seed)
    console.rule("2. validate it against the data contract")
    validate(data)
    console.rule("3. churn training set (monthly as_of dates, 90-day label window)")
    training_set(data=data, out=workdir / "churn_training.parquet", target=Target.CHURNED)
    console.rule("4. serving snapshot (latest features per customer)")
    snapshot(data=data, out=workdir / "snapshot.parquet")
    as_of = "2025-10-01"  # the demo's last 90 days are the holdout's label window
    console.rule(f"5. churn model, trained before {as_of}, evaluated at it")
    train_churn(data=data, as_of=as_of)
    console.rule(f"6. purchase-propensity model (30 days), trained before {as_of}")
    train_propensity(data=data, as_of=as_of)
    list_models()
    console.rule("7. score every customer with the champions")
    score(data=data, as_of=as_of, out=workdir / "scores.csv")
    console.print(pd.read_csv(workdir / "scores.csv").head(5).to_string(index=False))
    console.print(f"[green]done[/]: outputs in {workdir}")
