"""The demo generator: valid, deterministic, and with the behaviour it documents."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from features.build import build_features
from features.demo import DemoShop, generate_demo
from features.io import load_data_dir
from features.tables import Tables
from serving.exposures import read_exposures


def test_generated_data_passes_the_contract_untouched(demo_dir: Path) -> None:
    _, report = load_data_dir(demo_dir, demo_dir / "_rejects")
    assert report.rejected == 0 and report.warnings == []
    assert {t.table for t in report.tables} == {"orders", "customers", "events", "products", "customer_changes"}


def test_same_seed_same_data_other_seed_other_data(tmp_path: Path) -> None:
    generate_demo(DemoShop(customers=120, seed=3, products=30), tmp_path / "a")
    generate_demo(DemoShop(customers=120, seed=3, products=30), tmp_path / "b")
    generate_demo(DemoShop(customers=120, seed=4, products=30), tmp_path / "c")
    for table in ("orders", "customers", "events", "products", "customer_changes"):
        a, b = (pd.read_parquet(tmp_path / d / f"{table}.parquet") for d in "ab")
        pd.testing.assert_frame_equal(a, b)
    assert not pd.read_parquet(tmp_path / "a/events.parquet").equals(pd.read_parquet(tmp_path / "c/events.parquet"))


def test_chunking_does_not_change_the_first_chunk(tmp_path: Path) -> None:
    generate_demo(DemoShop(customers=100, seed=1, products=30, chunk_size=100), tmp_path / "one")
    generate_demo(DemoShop(customers=150, seed=1, products=30, chunk_size=100), tmp_path / "two")
    one, two = (pd.read_parquet(tmp_path / d / "customers.parquet") for d in ("one", "two"))
    pd.testing.assert_frame_equal(one, two.iloc[:100])


def test_planted_behaviour_is_visible(demo_tables: Tables) -> None:
    events = demo_tables.frame("events")
    kinds = events["event_type"].value_counts()
    assert kinds["product_view"] > kinds["add_to_cart"] > kinds["checkout_start"]
    assert kinds["email_sent"] > kinds["email_open"] > kinds["email_click"] > 0
    assert kinds["unsubscribe"] > 0
    orders = demo_tables.frame("orders")
    assert (orders["quantity"] < 0).any()  # returns
    customers = demo_tables.frame("customers")
    no_consent = set(customers.loc[~customers["email_consent"], "customer_id"])
    assert no_consent and not (set(events.loc[events["event_type"] == "email_sent", "customer_id"]) & no_consent)
    features = build_features(demo_tables, "2025-09-01")
    # people who open email buy more: opens in the last 90 days go with more orders in the last 90 days
    openers = features["email_opens_90d"] > 0
    assert features.loc[openers, "orders_90d"].mean() > features.loc[~openers, "orders_90d"].mean()
    # December peak: more orders in December than in the preceding September
    month = orders.loc[orders["quantity"] > 0, "ordered_at"].dt.to_period("M").value_counts()
    assert month[pd.Period("2024-12")] > month[pd.Period("2024-09")]


def test_bad_sizes_are_rejected_with_the_reason() -> None:
    with pytest.raises(ValueError, match="customers must be at least 1; got 0"):
        DemoShop(customers=0)


def test_the_demo_command_runs_end_to_end(tmp_path: Path) -> None:
    # in its own process: the in-process BentoML app registers Prometheus metrics process-wide
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI" and not k.startswith("SENDWISE_")}
    run = subprocess.run([sys.executable, "-m", "sendwise.cli", "demo", "--customers", "1500", "--workdir", "d"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    scores, recs = pd.read_csv(tmp_path / "d/scores.csv"), pd.read_csv(tmp_path / "d/recommendations.csv")
    assert len(scores) > 1000 and set(recs["customer_id"]) == set(scores["customer_id"])
    decisions = read_exposures(tmp_path / "d/state/exposures.jsonl")
    assert len(decisions) == 1000 and {d["action"] for d in decisions} > {"suppress"}
    assert "actions: " in run.stdout and "product block" in run.stdout and "emailable: " in run.stdout
    assert len(list((tmp_path / "d/reports").glob("run-*.html"))) == 1  # the demo is a project's run
