"""The end-to-end demo: generate a shop, validate it, build features, a training set and a snapshot."""

from __future__ import annotations

from pathlib import Path

from features.cli import generate, snapshot, training_set, validate
from features.training_set import Target
from sendwise.console import console


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
    console.print(f"[green]done[/]: outputs in {workdir}")
