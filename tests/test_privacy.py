"""Privacy end to end on a generated shop with one marked customer: export everything held about
them, forget them (no trace left in any store the project writes, the running service stops
answering with their data, a later import skips them), secrets and other personal data never
reach logs, models or exposures.

The tests share one shop, and hold in any order or alone: what they need from before the forget
(the service's answers, the export, the traces) is taken by the ``before`` fixture, and the forget
is done once, after it, by the ``forgotten`` fixture; nothing else changes the shop."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import SERVE_AS_OF, train_champions
from typer.testing import CliRunner

from features.errors import NotFoundError
from features.importers.uci_retail import import_online_retail
from features.io import load_data_dir, write_parquet
from features.snapshot import write_snapshot
from features.training_set import Target, build_training_set
from sendwise.cli import app
from sendwise.privacy.export import export_customer
from sendwise.privacy.forget import forget_customers
from serving.config import ServeConfig
from serving.exposures import read_exposures
from serving.forgotten import FORGOTTEN

VICTIM = "A-forget-me-4471"  # sorts first: it would be in any input example MLflow kept
SECRET = "sk-sendwise-test-9f8e7d6c5b4a"
runner = CliRunner()


@dataclass
class Shop:
    root: Path
    data: Path
    mlruns: Path
    snapshot: Path
    training_set: Path
    exposures: Path
    emails: list[str]
    logs: str  # everything printed or logged while training
    victim_orders: int  # VICTIM's order lines in the data (the bad one included)


@pytest.fixture(scope="module")
def shop(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Shop:
    """The demo shop with one consenting buyer renamed VICTIM, an email and a first name per
    customer (extra columns), and a bad order line of VICTIM's (a reject); champions trained with
    SENDWISE_API_KEY set; a snapshot and a training set written."""
    root = tmp_path_factory.mktemp("privacy")
    data = root / "data"
    data.mkdir()
    frames = {t: pd.read_parquet(demo_dir / f"{t}.parquet") for t in ("orders", "customers", "events", "products")}
    customers, orders, events = frames["customers"], frames["orders"], frames["events"]
    unsubscribed = set(events.loc[events["event_type"] == "unsubscribe", "customer_id"])
    buyers = orders.loc[orders["ordered_at"] < pd.Timestamp(SERVE_AS_OF)].groupby("customer_id").size()
    chosen = min(c for c in customers.loc[customers["email_consent"], "customer_id"]
                 if c not in unsubscribed and buyers.get(c, 0) >= 3)
    for name in ("orders", "customers", "events"):
        frames[name]["customer_id"] = frames[name]["customer_id"].replace(chosen, VICTIM)
    customers["email"] = customers["customer_id"].str.lower() + "@mail.example"
    customers["first_name"] = "Firstname" + customers["customer_id"]
    bad = frames["orders"].iloc[[0]].assign(customer_id=VICTIM, quantity=0.0, order_id="bad-line")
    frames["orders"] = pd.concat([frames["orders"], bad], ignore_index=True)
    for name, frame in frames.items():
        frame.to_parquet(data / f"{name}.parquet", index=False)

    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("SENDWISE_API_KEY", SECRET)  # present in the environment of everything below
    logs, handler = io.StringIO(), logging.StreamHandler()
    handler.stream = logs
    root_logger, level = logging.getLogger(), logging.getLogger().level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG)
    try:
        with contextlib.redirect_stdout(logs), contextlib.redirect_stderr(logs):
            tables, _ = load_data_dir(data)
            train_champions(tables, root / "mlruns")
            write_snapshot(tables, root / "snapshot.parquet")
            training = build_training_set(tables, ["2025-06-01", "2025-07-01"], Target.CHURNED, 90)
            write_parquet(training.frame, root / "churn_set.parquet")
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(level)
        mp.undo()
    return Shop(root, data, root / "mlruns", root / "snapshot.parquet", root / "churn_set.parquet",
                root / "exposures.jsonl", list(customers["email"]), logs.getvalue(),
                int((frames["orders"]["customer_id"] == VICTIM).sum()))


@pytest.fixture(scope="module")
def service(shop: Shop):
    """The service, in-process, started before anything is forgotten."""
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key, value in {"SENDWISE_DATA": shop.data, "SENDWISE_MLRUNS": shop.mlruns, "SENDWISE_SNAPSHOT": shop.snapshot,
                       "SENDWISE_EXPOSURE_LOG": shop.exposures}.items():
        mp.setenv(key, str(value))
    from serving.service import Sendwise

    yield Sendwise.inner()
    mp.undo()


def ask(service, customer_id: str) -> dict:
    """One of each answer about ``customer_id``, as plain dicts."""
    from serving.schemas import NextBestActionRequest, ProductBlockRequest, RecommendRequest, ScoreRequest

    return {"score": service.score(ScoreRequest(customer_id=customer_id)).model_dump(),
            "recommend": service.recommend(RecommendRequest(customer_id=customer_id, k=5)).model_dump(),
            "ruled": service.recommend(RecommendRequest(customer_id=customer_id, k=5,
                                                        rules={"max_price": 1000})).model_dump(),
            "block": service.product_block(ProductBlockRequest(customer_id=customer_id, k=3)).model_dump(),
            "action": service.next_best_action(NextBestActionRequest(customer_id=customer_id)).model_dump()}


def traces(root: Path, needle: str) -> set[str]:
    """Files below ``root`` holding ``needle``: raw bytes in UTF-8/16/32 for every file, plus the
    decoded values of parquet, numpy and gzip files (compressed on disk)."""
    encodings = [needle.encode(e) for e in ("utf-8", "utf-16-le", "utf-32-le")]
    found = set()
    for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        hit = any(e in raw for e in encodings)
        if path.name.endswith(".parquet"):
            table = pq.read_table(path)
            frame = table.to_pandas()
            hit |= any(frame[c].astype(str).str.contains(needle, regex=False).any() for c in frame.columns)
            hit |= needle.encode() in b"".join(v for v in (table.schema.metadata or {}).values())
        elif path.name.endswith(".npz"):
            with np.load(path) as arrays:
                hit |= any(arrays[k].dtype.kind in "US" and needle in "\n".join(map(str, arrays[k].ravel()))
                           for k in arrays.files)
        elif path.name.endswith(".gz"):
            hit |= any(e in gzip.decompress(raw) for e in encodings)
        if hit:
            found.add(str(path.relative_to(root.parent if root.is_file() else root)))
    return found


def all_traces(shop: Shop, needle: str) -> set[str]:
    return traces(shop.root, needle)


@dataclass
class Before:
    """The shop before the forget."""

    answers: dict  # the service's answers about VICTIM
    other: dict  # and about C1
    export: dict  # the export document of VICTIM
    exposures: list[dict]  # VICTIM's exposure records
    others_exposures: list[dict]  # C1's
    traces: set[str]  # files holding VICTIM
    data_emails: dict[str, set[str]]  # files of the data holding each of three emails


@pytest.fixture(scope="module")
def before(shop: Shop, service, tmp_path_factory: pytest.TempPathFactory) -> Before:
    """The service asked about VICTIM and C1, VICTIM exported, the traces taken: all before forgetting."""
    answers, other = ask(service, VICTIM), ask(service, "C1")
    out = tmp_path_factory.mktemp("exports") / "export.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = runner.invoke(app, ["privacy", "export", VICTIM, "--data", str(shop.data), "--mlruns",
                                     str(shop.mlruns), "--exposure-log", str(shop.exposures), "--file",
                                     str(shop.snapshot), "--file", str(shop.training_set), "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = read_exposures(shop.exposures)
    emails = {e: traces(shop.data, e) for e in (shop.emails[0], shop.emails[-1], VICTIM.lower() + "@mail.example")}
    return Before(answers, other, json.loads(out.read_text()), [r for r in records if r["customer_id"] == VICTIM],
                  [r for r in records if r["customer_id"] == "C1"], all_traces(shop, VICTIM), emails)


@pytest.fixture(scope="module")
def forgotten(shop: Shop, before: Before):
    """VICTIM forgotten everywhere (once, after ``before``); the command's result."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return runner.invoke(app, ["privacy", "forget", VICTIM, "--data", str(shop.data), "--mlruns",
                                   str(shop.mlruns), "--exposure-log", str(shop.exposures), "--file",
                                   str(shop.snapshot), "--file", str(shop.training_set)])


def test_export_holds_everything_about_the_customer(shop: Shop, before: Before) -> None:
    assert before.answers["score"]["known"] and before.answers["recommend"]["known"]
    assert before.answers["action"]["action"] != "suppress"
    doc = before.export
    rows = {Path(p).name: r for p, r in doc["input_rows"].items()}
    assert len(rows["orders.parquet"]) == shop.victim_orders
    assert rows["customers.parquet"][0]["email"] == VICTIM.lower() + "@mail.example"
    assert len(rows["events.parquet"]) > 0 and len(rows["snapshot.parquet"]) == 1 and len(rows["churn_set.parquet"]) == 2
    for rejects in (shop.data / "_rejects", shop.root / "state" / "rejects"):  # the loader's, the service's
        assert [r["reason"] for r in doc["input_rows"][str(rejects / "orders.csv")]] == ["zero quantity"]
    assert doc["features"]["customer_id"] == VICTIM and doc["features"]["orders_count"] >= 3
    assert 0 <= doc["scores"]["churn_probability"] <= 1 and doc["scores"]["model_versions"] == {"churn": "1",
                                                                                                  "propensity": "1"}
    assert len(doc["recommendations"]) == 10 and {r["source"] for r in doc["recommendations"]} == {"model"}
    saved = {p: r for p, r in doc["model_rows"].items() if not p.endswith("holdout/scores.parquet")}
    (factors,) = saved.values()
    assert len(factors["user_factors"]) == 100  # ALS default factors
    holdout = [r for p, rows in doc["model_rows"].items() if p.endswith("holdout/scores.parquet") for r in rows]
    assert holdout and all(r["customer_id"] == VICTIM for r in holdout)  # the models' holdout scores of the customer
    assert len(before.exposures) == 4 and doc["exposures"] == before.exposures  # the four answers that log one
    assert doc["forgotten"] is False and doc["notes"] == []


def test_export_scores_with_the_projects_models_only(shop: Shop, before: Before,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The shop's models are registered without a project: a project's export uses none of them."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    doc = export_customer(VICTIM, shop.data, shop.mlruns, project="other-shop")
    assert doc["scores"] is None and doc["recommendations"] == []
    assert [n.split(":")[0] for n in doc["notes"]] == ["no scores", "no recommendations"]
    assert "no 'other-shop.churn' model has the alias 'champion'" in doc["notes"][0]
    assert "no 'other-shop.recommender' model has the alias 'champion'" in doc["notes"][1]
    assert doc["model_rows"] == before.export["model_rows"]  # what the store holds about them, whoever's


def test_customer_ids_are_the_only_identifier_in_models_and_exposures(shop: Shop, before: Before) -> None:
    records = read_exposures(shop.exposures)
    assert before.others_exposures and all(
        set(r) == {"request_id", "time", "customer_id", "action", "products", "experiment", "variant", "probability",
                   "model_versions"} for r in records)
    for email, found in before.data_emails.items():
        assert found, email  # the data held them (the check can find them)...
        for store in (shop.mlruns, shop.exposures, shop.snapshot, shop.training_set):
            assert not traces(store, email), (email, store)  # ...nothing derived from it does
    assert not traces(shop.mlruns, "FirstnameC1")


def test_secrets_never_land_in_logs_or_mlflow(shop: Shop) -> None:
    assert "recommender" in shop.logs and traces(shop.mlruns, "sendwise-recommender")  # logs and store were read
    assert SECRET not in shop.logs
    assert not traces(shop.mlruns, SECRET) and not traces(shop.exposures, SECRET)
    config = ServeConfig(data=shop.data, api_key=SECRET)
    assert SECRET not in repr(config) and SECRET not in str(config.model_dump())
    assert config.to_env()["SENDWISE_API_KEY"] == SECRET  # still handed to the server process


def test_forget_leaves_no_trace_and_the_running_service_stops_answering(shop: Shop, service, before: Before,
                                                                        forgotten) -> None:
    expected = {"data/orders.parquet", "data/customers.parquet", "data/events.parquet", "data/_rejects/orders.csv",
                "state/rejects/orders.csv", "snapshot.parquet", "churn_set.parquet", "exposures.jsonl"}
    assert expected <= before.traces and any(p.endswith("recommender.npz") for p in before.traces), before.traces
    # in the MLflow store only the recommenders' saved ids and the holdout score files: no input example,
    # parameter or other model
    assert any(p.endswith("holdout/scores.parquet") for p in before.traces), before.traces
    assert all(p.endswith(("recommender.npz", "holdout/scores.parquet"))
               for p in before.traces if p.startswith("mlruns/")), before.traces

    assert forgotten.exit_code == 0, forgotten.output
    assert all_traces(shop, VICTIM) == set()
    pseudonyms = {r["customer_id"] for r in read_exposures(shop.exposures) if r["customer_id"].startswith("forgotten-")}
    assert len(pseudonyms) == 1  # one pseudonym per customer: exposure counts per unit stay right
    assert [r for r in read_exposures(shop.exposures) if r["customer_id"] == "C1"][:len(before.others_exposures)] == (
        before.others_exposures)

    after = ask(service, VICTIM)  # the service still holds the victim in memory
    assert not after["score"]["known"] and after["score"]["churn_probability"] is None
    assert not after["recommend"]["known"] and {i["source"] for i in after["recommend"]["items"]} == {"popular"}
    assert {i["source"] for i in after["ruled"]["items"]} == {"popular"}
    assert after["block"]["heading"] == "Popular right now"
    assert after["action"]["action"] == "suppress" and after["action"]["score_reasons"] == []
    logged = read_exposures(shop.exposures)  # appended after the rewrite, to the new file
    assert [r["customer_id"] for r in logged[-4:]] == [FORGOTTEN] * 4 and all_traces(shop, VICTIM) == set()
    again = ask(service, "C1")  # others are answered as before
    assert again["score"] == before.other["score"] and again["recommend"] == before.other["recommend"]

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        export = runner.invoke(app, ["privacy", "export", VICTIM, "--data", str(shop.data), "--mlruns",
                                     str(shop.mlruns), "--exposure-log", str(shop.exposures)])
    doc = json.loads(export.output)
    assert doc["forgotten"] and not doc["input_rows"] and doc["features"] is None and not doc["model_rows"]


def test_a_later_import_or_load_skips_the_forgotten_customer(shop: Shop, forgotten, tmp_path: Path) -> None:
    assert forgotten.exit_code == 0, forgotten.output
    data = tmp_path / "data"  # a copy of the shop's data, tombstone included: the shop stays as it is
    shutil.copytree(shop.data, data)
    src = tmp_path / "retail.csv"
    src.write_text("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
                   f"1,85123A,HEART,6,2011-12-01 08:26:00,2.55,{VICTIM},United Kingdom\n"
                   f"1,POST,POSTAGE,1,2011-12-01 08:26:00,18,{VICTIM},United Kingdom\n"
                   "2,85123A,HEART,2,2011-12-01 09:00:00,2.55,17850,United Kingdom\n")
    report = import_online_retail(src, data)
    assert report.forgotten == 2 and report.loaded == 1 and report.read == 3
    assert traces(data, VICTIM) == set()

    fresh = tmp_path / "fresh"
    (fresh / "_privacy").mkdir(parents=True)
    (fresh / "_privacy" / "tombstones.json").write_bytes((shop.data / "_privacy" / "tombstones.json").read_bytes())
    pd.DataFrame({"order_id": ["o1", "o2", "o3"], "customer_id": [f" {VICTIM} ", "c2", VICTIM],
                  "product_id": ["p1"] * 3, "quantity": [1.0, 1.0, 0.0], "unit_price": [2.0] * 3,
                  "ordered_at": pd.to_datetime(["2024-01-01"] * 3)}).to_parquet(fresh / "orders.parquet")
    tables, validation = load_data_dir(fresh)  # parquet is read in place (a view): the other path
    assert [r[0] for r in tables.con.sql("SELECT customer_id FROM orders").fetchall()] == ["c2"]
    assert validation.forgotten == {"orders": 2} and "2 row(s) of forgotten customers skipped" in validation.warnings[-1]
    assert not (fresh / "_rejects").exists()  # the victim's bad line was not written as a reject
    assert not traces(fresh, VICTIM) - {"orders.parquet"}


def test_forget_checks_every_path_before_writing_and_trims_ids(demo_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    customer = pd.read_parquet(data / "customers.parquet")["customer_id"].iloc[0]
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    with pytest.raises(NotFoundError, match="no-such-snapshot.parquet does not exist"):
        forget_customers([customer], data, files=[tmp_path / "no-such-snapshot.parquet"])
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before  # no tombstone, nothing removed
    report = forget_customers([f" {customer} "], data)
    assert report.customer_ids == [customer] and report.file_rows
    assert customer not in set(pd.read_parquet(data / "customers.parquet")["customer_id"])
