"""``--model auto``: the recommender chosen on the validation fold, the tie-break toward the simpler
model, the time budget, and the comparison table in MLflow."""

from __future__ import annotations

from datetime import datetime, timedelta

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from features.tables import Tables
from sendwise.project import RunSettings
from training.protocols import time_split
from training.recommenders.evaluation import evaluate
from training.recommenders.models import CatalogTooLargeError, make_recommender
from training.recommenders.selection import (
    AUTO,
    CHOSEN,
    Candidate,
    CandidateResult,
    candidates,
    choose_model,
    log_choice,
    winner,
)
from training.tracking import configure_tracking

AS_OF = datetime(2024, 1, 1)
CLUSTERS, PRODUCTS_PER_CLUSTER, CUSTOMERS = 3, 12, 90


@pytest.fixture(scope="module")
def clustered() -> Tables:
    """Customer i belongs to cluster i % 3 and buys 8 of its cluster's 12 products, one every 50
    days from 400 days before AS_OF, in a random order: every product is as popular as any other, so
    popularity ranks at random while item neighbours find the customer's cluster."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(CUSTOMERS):
        own = rng.permutation(PRODUCTS_PER_CLUSTER)[:8] + (i % CLUSTERS) * PRODUCTS_PER_CLUSTER
        for step, j in enumerate(own):
            day = AS_OF - timedelta(days=400 - 50 * step - i / CUSTOMERS)
            lines.append((f"o{i}-{j}", f"c{i:02d}", f"p{j:02d}", day))
    orders = pd.DataFrame(lines, columns=["order_id", "customer_id", "product_id", "ordered_at"])
    return Tables.from_frames(orders.assign(quantity=1.0, unit_price=1.0))


@pytest.fixture(scope="module")
def fold(clustered: Tables):
    return time_split(clustered, AS_OF - timedelta(days=100))


def scored(name: str, ndcg: list[float]) -> CandidateResult:
    values = pd.Series(ndcg, index=[f"c{i}" for i in range(len(ndcg))])
    return CandidateResult(Candidate(name, name), "", float(values.mean()), per_customer=values)


def test_a_clearly_better_candidate_wins(clustered: Tables, fold) -> None:
    pool = (Candidate("popular", "popular"), Candidate("itemknn-cosine", "itemknn", {"similarity": "cosine"}))
    choice = choose_model(clustered, fold, pool=pool)
    assert choice.chosen.name == "itemknn-cosine", choice.render()
    popular, knn = choice.results
    assert knn.ndcg > popular.ndcg + 0.2 and knn.status == CHOSEN and "against itemknn-cosine" in popular.status
    assert "significantly above every simpler candidate" in choice.reason


def test_a_tie_goes_to_the_simpler_candidate() -> None:
    """The best is 0.02 above the simpler on average, with per-customer noise of 0.3 over 200
    customers (standard error about 0.03): not significant, so the simpler wins; 0.2 above is."""
    rng = np.random.default_rng(1)
    simple = rng.uniform(0, 0.6, 200)
    tie = [scored("simple", list(simple)), scored("complex", list(np.clip(simple + rng.normal(0.02, 0.3, 200), 0, 1)))]
    chosen, reason = winner(tie)
    assert chosen.candidate.name == "simple" and "not significantly above the simpler simple" in reason
    clear = [scored("simple", list(simple)), scored("complex", list(simple + 0.2))]
    assert winner(clear)[0].candidate.name == "complex"


def test_the_time_budget_skips_candidates_with_the_reason(clustered: Tables, fold) -> None:
    choice = choose_model(clustered, fold, budget_s=0.0)
    assert choice.chosen.name == "popular"
    skipped = [r for r in choice.results if r.candidate.name != "popular"]
    assert [r.candidate.name for r in skipped] == [c.name for c in candidates()][1:]
    assert all(r.status.startswith("skipped: estimated") and "of the 0 s budget" in r.status for r in skipped)
    assert choice.table()["ndcg_at_10"].isna().sum() == len(skipped)


def test_a_catalog_over_the_ease_cap_is_skipped_with_the_reason(clustered: Tables, fold) -> None:
    with pytest.raises(CatalogTooLargeError, match="36 products with customers.*max_products=10"):
        make_recommender("ease", max_products=10).fit_tables(clustered, AS_OF)
    pool = (Candidate("popular", "popular"), Candidate("ease", "ease", {"max_products": 10}))
    ease = choose_model(clustered, fold, pool=pool).results[1]
    assert ease.status.startswith("skipped: EASE keeps a dense products x products matrix")


def test_auto_is_the_default_and_its_table_reaches_mlflow(clustered: Tables, fold, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert RunSettings().recommender == AUTO
    choice = choose_model(clustered, fold, budget_s=0.0, protocol_reason="hand-made")
    configure_tracking(tmp_path / "mlruns")
    mlflow.set_experiment("model-choice")  # not the experiment an earlier test left active in another store
    with mlflow.start_run() as run:
        log_choice(choice)
    logged = MlflowClient().get_run(run.info.run_id)
    assert logged.data.params["auto_chosen"] == "popular" and logged.data.params["auto_protocol"] == "time split"
    table = mlflow.load_table("model_choice.json", run_ids=[run.info.run_id])
    assert list(table["candidate"]) == [c.name for c in candidates()]
    assert list(table["status"]) == list(choice.table()["status"])
    assert "model_choice.txt" in {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}


def test_evaluate_names_a_model_over_its_catalog_cap(clustered: Tables) -> None:
    models = {"popular": make_recommender("popular"), "ease": make_recommender("ease", max_products=10)}
    table = evaluate(clustered, AS_OF - timedelta(days=100), models)
    skipped = table[table["model"].str.startswith("ease (skipped: EASE keeps a dense")]
    assert len(skipped) == 2 and skipped["ndcg"].isna().all()
    assert table.loc[table["model"] == "popular", "ndcg"].notna().all()


def test_on_a_sample_auto_compares_only_the_models_that_serve_customers_outside_it(
        clustered: Tables, tmp_path, monkeypatch) -> None:
    from training.recommenders.train import train_recommender

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    as_of = AS_OF - timedelta(days=100)
    result = train_recommender(clustered, as_of, AUTO, budget_s=0.0, mlruns=tmp_path / "mlruns", sampled=True)
    compared = [r.candidate.name for r in result.choice.results]
    assert compared == [c.name for c in candidates() if c.kind not in ("bpr", "reranker")]
    whole = train_recommender(clustered, as_of, AUTO, budget_s=0.0, mlruns=tmp_path / "mlruns")
    assert [r.candidate.name for r in whole.choice.results] == [c.name for c in candidates()]
