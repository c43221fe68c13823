"""Shared fixtures: tiny literal tables, a small generated shop, the real public data when present."""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
# The services the tests start in-process do not poll the MLflow store from a thread: a check sets the
# process-wide tracking URI (serving/reload.py), and one landing in another test's training run made
# its next call look for the run in the wrong store. The tests of reloading set their own interval.
os.environ.setdefault("SENDWISE_RELOAD_SECONDS", "0")
# pytest-xdist starts its workers with COLUMNS=80; the commands' output is checked as a pipe receives it
# (sendwise/console.py: 160 columns without a terminal or COLUMNS), so a worker runs them the same way
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)

from redis_server import free_port, start_redis, stop_redis

from features.demo import DemoShop, generate_demo
from features.io import load_data_dir
from features.tables import Tables
from features.training_set import Target
from training.recommenders.train import train_recommender
from training.tracking import configure_tracking
from training.train import train_classifier

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ONLINE_RETAIL = SHARED_DATA / "online-retail" / "online_retail.csv.gz"
MOVIELENS = SHARED_DATA / "movielens-latest-small" / "ml-latest-small_ratings.csv.gz"
SERVE_AS_OF = "2025-10-01"


def ts(value: str) -> pd.Timestamp:
    return pd.Timestamp(value)


@pytest.fixture
def tiny_frames() -> dict[str, pd.DataFrame]:
    """Three customers over January 2024; expected features are worked out by hand in the tests.

    a: order o1 (2 x p1 @10 + 1 x p2 @5 = 25) on Jan 1, o2 (1 x p1 @10) on Jan 11, returns one p1
       on Jan 15; gets an email on Jan 25, opens it on Jan 26.
    b: order o3 (3 x p2 @5 = 15) on Jan 20; adds p2 to cart on Jan 29 and does not buy.
    c: never orders; signed up Jan 30, views p1 and adds it to cart on Jan 31 12:00.
    d: signs up Feb 10, after the as_of used in the tests (Feb 1).

    customers holds today's attributes; customer_changes their history:
    a: United Kingdom and consent on Dec 1; moves to France at Feb 1 00:00 (the as_of itself: not seen).
    b: consent "yes" on Jan 20, withdrawn ("no") on Jan 25, granted again on Feb 5 (after the as_of);
       Germany since Jan 20.
    c: no history: today's France and consent are not known at Feb 1.
    """
    orders = pd.DataFrame({
        "order_id": ["o1", "o1", "o2", "o3", "r1"],
        "customer_id": ["a", "a", "a", "b", "a"],
        "product_id": ["p1", "p2", "p1", "p2", "p1"],
        "quantity": [2.0, 1.0, 1.0, 3.0, -1.0],
        "unit_price": [10.0, 5.0, 10.0, 5.0, 10.0],
        "ordered_at": [ts("2024-01-01"), ts("2024-01-01"), ts("2024-01-11"), ts("2024-01-20"), ts("2024-01-15")],
    })
    customers = pd.DataFrame({
        "customer_id": ["a", "b", "c", "d"],
        "signup_at": [ts("2023-12-01"), pd.NaT, ts("2024-01-30"), ts("2024-02-10")],
        "country": ["France", "Germany", "France", "France"],
        "email_consent": [True, True, True, True],
    })
    events = pd.DataFrame({
        "customer_id": ["a", "a", "b", "c", "c"],
        "event_type": ["email_sent", "email_open", "add_to_cart", "product_view", "add_to_cart"],
        "product_id": [None, None, "p2", "p1", "p1"],
        "occurred_at": [ts("2024-01-25"), ts("2024-01-26"), ts("2024-01-29"), ts("2024-01-31 11:00"),
                        ts("2024-01-31 12:00")],
    })
    products = pd.DataFrame({
        "product_id": ["p1", "p2"], "name": ["Mug", "Bag"], "category": ["kitchen", "bags"],
        "price": [10.0, 5.0], "image_url": ["https://x/1.png", None], "url": ["https://x/p1", "https://x/p2"],
        "in_stock": [True, True],
    })
    customer_changes = pd.DataFrame({
        "customer_id": ["a", "a", "a", "b", "b", "b", "b"],
        "changed_at": [ts("2023-12-01"), ts("2023-12-01"), ts("2024-02-01"), ts("2024-01-20"), ts("2024-01-20"),
                       ts("2024-01-25"), ts("2024-02-05")],
        "attribute": ["country", "email_consent", "country", "email_consent", "country", "email_consent",
                      "email_consent"],
        "value": ["United Kingdom", "true", "France", "yes", "Germany", "no", "true"],
    })
    return {"orders": orders, "customers": customers, "events": events, "products": products,
            "customer_changes": customer_changes}


@pytest.fixture
def tiny_tables(tiny_frames: dict[str, pd.DataFrame]) -> Tables:
    return Tables.from_frames(**tiny_frames)


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One local[2] Spark session for the whole run, one per xdist worker (tests marked ``spark``);
    skipped, saying why, where pyspark or Java is absent (``.ci/run`` installs both)."""
    from features.errors import InputError
    from features.spark import spark_session

    try:
        # small data: compiling generated code and re-planning between stages cost more than they save
        # (measured on the hand-made fixture: 22-30 s a feature query with Spark's defaults, 15-16 s so)
        session = spark_session("local[2]", {
            "spark.sql.shuffle.partitions": "2", "spark.driver.memory": "2g", "spark.sql.adaptive.enabled": "false",
            "spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN"})
    except InputError as exc:
        pytest.skip(str(exc))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated shop of 400 customers (seed 7)."""
    out = tmp_path_factory.mktemp("demo")
    generate_demo(DemoShop(customers=400, seed=7, products=60), out)
    return out


@pytest.fixture(scope="session")
def demo_tables(demo_dir: Path) -> Tables:
    tables, _ = load_data_dir(demo_dir, demo_dir / "_rejects")
    return tables


@pytest.fixture(scope="session")
def online_retail_path() -> Path:
    if not ONLINE_RETAIL.exists():
        pytest.skip(f"real Online Retail file not present at {ONLINE_RETAIL}")
    return ONLINE_RETAIL


@pytest.fixture(scope="session")
def movielens_path() -> Path:
    if not MOVIELENS.exists():
        pytest.skip(f"MovieLens file not present at {MOVIELENS}")
    return MOVIELENS


def train_champions(tables: Tables, mlruns: Path) -> None:
    """Churn, propensity and an ALS recommender trained before SERVE_AS_OF, each the champion."""
    configure_tracking(mlruns)
    for target in Target:
        train_classifier(tables, target, SERVE_AS_OF, mlruns=mlruns)
    train_recommender(tables, SERVE_AS_OF, "als", mlruns=mlruns)


@pytest.fixture(scope="session")
def served_env(demo_dir: Path, demo_tables: Tables, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Champion churn, propensity and recommender trained on the demo shop; the service's settings."""
    root = tmp_path_factory.mktemp("serve")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    train_champions(demo_tables, root / "mlruns")
    env = {"SENDWISE_DATA": str(demo_dir), "SENDWISE_MLRUNS": str(root / "mlruns"),
           "SENDWISE_EXPOSURE_LOG": str(root / "exposures.jsonl")}
    yield env
    mp.undo()


def wait_until_ready(server, base: str, log: Path, seconds: float = 180) -> None:
    """Wait for a server started as a subprocess to answer ``/readyz``; fail with its log's tail if it
    exits or is not ready within ``seconds``."""
    deadline = time.time() + seconds
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert server.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)


def stop_server(server) -> None:
    """Terminate a server started as a subprocess; kill it if it has not exited within a minute."""
    server.terminate()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()


def same_feature_value(online: object, batch: object) -> bool:
    """An online feature value equals the batch build's: both missing (None, NaN, NA), numbers within
    1e-9 (relative and absolute), anything else equal."""
    if batch is None or batch is pd.NA or (isinstance(batch, float) and math.isnan(batch)):
        return online is None or (isinstance(online, float) and math.isnan(online))
    if isinstance(batch, int | float) and not isinstance(batch, bool):
        return online is not None and math.isclose(float(online), float(batch), rel_tol=1e-9, abs_tol=1e-9)
    return online == batch


@pytest.fixture(scope="session")
def online_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a real redis-server as the online store asks for one (an AOF fsync'd on every write),
    shared by the tests of the Redis path; skipped where redis-server is not installed."""
    port = free_port()
    server = start_redis(port, tmp_path_factory.mktemp("online-store"))
    yield f"redis://127.0.0.1:{port}/0"
    stop_redis(server)
