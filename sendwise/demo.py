"""The end-to-end demo: generate a shop, validate it, build features and a snapshot, train the churn,
propensity and recommender models, score and recommend, and ask the send-time service (in process)
for next-best-actions with their product blocks."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from datetime import datetime
from pathlib import Path

import pandas as pd

from features.dates import parse_iso_date
from features.demo import DemoShop
from features.training_set import Target
from sendwise import pipeline
from sendwise.console import console

AS_OF = datetime(2025, 10, 1)  # the demo's last 90 days are the holdout's label window
ASKED = 1_000  # customers asked of the service
MODEL_ACTIONS = ("winback", "cross_sell", "upsell", "loyalty_reward")  # the example shown: one the models drove


def run_demo(workdir: Path, customers: int, seed: int) -> None:
    data = workdir / "data"
    console.rule("1. generate a demo shop")
    shop = DemoShop()
    pipeline.generate(out=data, customers=customers, seed=seed, start=parse_iso_date(shop.start),
                      end=parse_iso_date(shop.end))
    console.rule("2. validate it against the data contract")
    pipeline.validate(data)
    console.rule("3. churn training set (monthly as_of dates, 90-day label window)")
    pipeline.training_set(data=data, out=workdir / "churn_training.parquet", target=Target.CHURNED)
    console.rule("4. serving snapshot (latest features per customer)")
    pipeline.snapshot(data=data, out=workdir / "snapshot.parquet")
    console.rule(f"5. churn model, trained before {AS_OF}, evaluated at it")
    pipeline.train_churn(data=data, as_of=AS_OF)
    console.rule(f"6. purchase-propensity model (30 days), trained before {AS_OF}")
    pipeline.train_propensity(data=data, as_of=AS_OF)
    console.rule(f"7. recommender (implicit ALS), trained before {AS_OF}, evaluated against popularity")
    pipeline.train_recommender(data=data, as_of=AS_OF)
    pipeline.list_models()
    console.rule("8. score every customer with the champions")
    pipeline.score(data=data, as_of=AS_OF, out=workdir / "scores.csv")
    console.print(pd.read_csv(workdir / "scores.csv").head(5).to_string(index=False))
    console.rule("9. recommend 10 products to every customer")
    pipeline.recommend(data=data, as_of=AS_OF, out=workdir / "recommendations.csv")
    console.rule(f"10. next-best-actions from the send-time service (in process) for {ASKED:,} customers")
    ask_the_service(data, workdir)
    console.print(f"[green]done[/]: outputs in {workdir}. Serve them over HTTP with "
                  f"`sendwise serve --data {data} --snapshot {workdir / 'snapshot.parquet'}`.")


def ask_the_service(data: Path, workdir: Path) -> None:
    """Start the BentoML service in this process on the demo's champions and snapshot and ask it for
    a batch of next-best-actions; prints the actions chosen and one answer in full."""
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.update({"SENDWISE_DATA": str(data), "SENDWISE_SNAPSHOT": str(workdir / "snapshot.parquet"),
                       "SENDWISE_EXPOSURE_LOG": str(workdir / "exposures.jsonl")})
    with warnings.catch_warnings():  # starlette's note about httpx concerns its own test client, not us
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from starlette.testclient import TestClient

    from serving.service import Sendwise

    ids = pd.read_csv(workdir / "scores.csv", dtype={"customer_id": str})["customer_id"].head(ASKED).tolist()
    with TestClient(Sendwise.to_asgi()) as client:
        response = client.post("/next_best_action_batch", json={"customer_ids": ids})
        response.raise_for_status()
    answers = response.json()["results"]
    console.print("actions: " + ", ".join(f"{action} {n:,}" for action, n in Counter(
        a["action"] for a in answers).most_common()))
    example = next((a for a in answers if a["action"] in MODEL_ACTIONS and a["product_block"]), answers[0])
    console.print(f"customer {example['customer_id']}: [bold]{example['action']}[/] ({example['offer']}); "
                  f"because {'; '.join(example['reasons'])}; scores: {'; '.join(example['score_reasons']) or '-'}")
    if example["product_block"]:
        block = example["product_block"]
        console.print(f"product block '{block['heading']}': " + ", ".join(
            f"{item['name']} {item['price']} ({item['reason']})" for item in block["items"]))
    console.print(f"every decision is in the exposure log {workdir / 'exposures.jsonl'}")
