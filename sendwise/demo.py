"""The end-to-end demo: a project for a generated shop, its retraining job (``sendwise run``: validate,
backtest, refit and promote the churn, propensity and recommender models, serving snapshot, report),
scores and recommendations for every customer, and next-best-actions with their product blocks from
the send-time service (in process). Run again, it retrains the same project: the champions are
refreshed with the data they have not seen."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import pandas as pd

from features.errors import SendwiseError
from features.io import load_data_dir
from features.snapshot import snapshot_as_of
from sendwise import pipeline
from sendwise.console import console
from sendwise.project import PROJECT_FILE, Project, create_project, load_project, serve_settings
from sendwise.run import run_project
from serving.config import ServeConfig

ASKED = 1_000  # customers asked of the service
MODEL_ACTIONS = ("winback", "cross_sell", "upsell", "loyalty_reward")  # the example shown: one the models drove


def demo_project(workdir: Path, customers: int, seed: int) -> Project:
    """The demo's project in ``workdir``: created (with a generated shop) the first time, reused after."""
    if (workdir / PROJECT_FILE).exists():
        console.print(f"the demo project in {workdir} exists: retraining it on its data")
        return load_project(workdir)
    return create_project(workdir, demo=True, customers=customers, seed=seed, name="demo")


def run_demo(workdir: Path, customers: int, seed: int) -> None:
    console.rule("1. a project for a generated shop (sendwise init --demo)")
    project = demo_project(workdir, customers, seed)
    console.rule("2. the retraining job (sendwise run)")
    result = run_project(project)
    if result.failures:
        raise SendwiseError("the demo's run failed: " + "; ".join(f"{f.model}: {f.error}" for f in result.failures))
    pipeline.list_models(project=project.name, mlruns=project.mlruns)
    tables, _ = load_data_dir(project.data, project.rejects)
    as_of = snapshot_as_of(tables)
    tables.con.close()
    console.rule(f"3. score every customer with the champions, at the data's end ({as_of:%Y-%m-%dT%H:%M:%S})")
    pipeline.score(data=project.data, as_of=as_of, out=workdir / "scores.csv", project=project.name,
                   timezone=project.settings.timezone, mlruns=project.mlruns, consent=project.settings.consent)
    console.print(pd.read_csv(workdir / "scores.csv").head(5).to_string(index=False))
    console.rule("4. recommend 10 products to every customer")
    pipeline.recommend(data=project.data, as_of=as_of, out=workdir / "recommendations.csv",
                       project=project.name, timezone=project.settings.timezone, mlruns=project.mlruns)
    console.rule(f"5. next-best-actions from the send-time service (in process) for {ASKED:,} customers")
    ask_the_service(project, workdir)
    console.print(f"[green]done[/]: the run took {result.seconds:.0f} s; outputs in {workdir}, the run's report "
                  f"{result.report}. Serve over HTTP with `sendwise serve --project {workdir}`.")


def ask_the_service(project: Project, workdir: Path) -> None:
    """Start the BentoML service in this process on the project's champions and snapshot and ask it
    for a batch of next-best-actions; prints the actions chosen and one answer in full."""
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.update(ServeConfig(**serve_settings(project)).to_env())
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
    console.print(f"every decision is in the exposure log {project.exposure_log}")
