"""An experiment end to end: defined in YAML, served by /next_best_action (variant models, policy,
subject line, content block), logged, attributed and analysed with a planted effect."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from conftest import SERVE_AS_OF
from typer.testing import CliRunner

from experiments.attribution import experiment_exposures, recipients
from experiments.simulate import BaseRates, PlantedEffect, simulate_responses
from features.io import write_parquet
from features.schema import CUSTOMER_ID, OCCURRED_AT, ORDERED_AT, Table
from features.tables import Tables
from sendwise.cli import app
from serving.assignment import assign_many
from serving.experiment_config import load_experiments
from serving.exposures import read_exposures
from serving.policy import DEFAULT_POLICY
from serving.schemas import NextBestActionBatchRequest
from training.recommenders.train import train_recommender
from training.tracking import configure_tracking


@pytest.fixture(scope="module")
def experiment_env(served_env: dict, demo_tables: Tables, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The served champions plus an item-kNN recommender as challenger, and a running experiment
    whose treatment serves the challenger with its own policy, subject line and content block."""
    root = tmp_path_factory.mktemp("ab")
    shutil.copytree(served_env["SENDWISE_MLRUNS"], root / "mlruns")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure_tracking(root / "mlruns")
    train_recommender(demo_tables, SERVE_AS_OF, "itemknn", mlruns=root / "mlruns")  # version 2: challenger
    policy = DEFAULT_POLICY.read_text().replace("value: 0.6}]\n    offer: discount_15", "value: 0.3}]\n    offer: discount_20")
    assert "discount_20" in policy
    (root / "treatment_policy.yaml").write_text(policy)
    now = datetime.now(UTC)
    (root / "experiments.yaml").write_text(f"""
experiments:
  - name: winback_test
    start: {(now - timedelta(days=1)).isoformat()}
    end: {(now + timedelta(days=20)).isoformat()}
    attribution_window_days: 7
    variants:
      - {{name: control, weight: 0.5}}
      - {{name: treatment, weight: 0.5, model_aliases: {{recommender: challenger}}, policy: treatment_policy.yaml,
          subject_line: "A little something for you", content_block: hero_v2}}
""")
    yield served_env | {"SENDWISE_MLRUNS": str(root / "mlruns"), "SENDWISE_EXPERIMENTS": str(root / "experiments.yaml"),
                        "SENDWISE_EXPOSURE_LOG": str(root / "exposures.jsonl"), "root": str(root)}
    mp.undo()


def test_experiment_is_served_logged_attributed_and_analysed(experiment_env: dict, demo_tables: Tables,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in experiment_env.items():
        monkeypatch.setenv(key, value)
    from serving.service import Sendwise

    service = Sendwise.inner()
    known = sorted(demo_tables.frame(Table.CUSTOMERS)[CUSTOMER_ID])
    ids = known + [f"new-{i}" for i in range(100)]
    results = service.next_best_action_batch(NextBestActionBatchRequest(customer_ids=ids)).results

    experiment = load_experiments(experiment_env["SENDWISE_EXPERIMENTS"]).get("winback_test")
    expected = assign_many(experiment, ids)
    assert [r.variant for r in results] == expected and {r.experiment for r in results} == {"winback_test"}
    treated = [r for r in results if r.variant == "treatment"]
    control = [r for r in results if r.variant == "control"]
    assert 0.4 < len(treated) / len(results) < 0.6
    assert {r.model_versions["recommender"] for r in treated} == {"2"}
    assert {r.model_versions["recommender"] for r in control} == {"1"}
    for r in treated:
        if r.action == "suppress":  # consent is never overridden by the experiment
            assert r.subject_line is None and r.content_blocks == []
        else:
            assert r.subject_line == "A little something for you" and r.content_blocks[0] == "hero_v2"
    assert all(r.subject_line is None and "hero_v2" not in r.content_blocks for r in control)
    assert any(r.offer == "discount_20" for r in treated) and not any(r.offer == "discount_20" for r in control)
    no_consent = [r for r in results if r.known and r.action == "suppress"]
    assert no_consent and {r.variant for r in no_consent} == {"control", "treatment"}

    logged = read_exposures(experiment_env["SENDWISE_EXPOSURE_LOG"])
    assert [(e["customer_id"], e["experiment"], e["variant"]) for e in logged] == [
        (c, "winback_test", v) for c, v in zip(ids, expected, strict=True)]

    # outcomes with a planted effect on the treatment, appended to the shop's data
    who = recipients(experiment_exposures(logged, experiment), experiment)
    assert len(who.frame) == len(ids) - sum(r.action == "suppress" for r in results)
    orders, events = simulate_responses(who.frame, experiment, {"treatment": PlantedEffect(conversion_rate=1.5)},
                                        BaseRates(conversion_rate=0.15), seed=2)
    shop = tmp_path / "shop"
    shop.mkdir()
    for table, extra in ((Table.ORDERS, orders), (Table.EVENTS, events), (Table.CUSTOMERS, None), (Table.PRODUCTS, None)):
        frame = demo_tables.frame(table)
        write_parquet(frame if extra is None else pd.concat([frame, extra[frame.columns]], ignore_index=True),
                      shop / f"{table.value}.parquet")
    monkeypatch.chdir(tmp_path)
    # the analysis runs after the outcomes it reads: they are dated after the exposures, which are now
    latest = max(orders[ORDERED_AT].max(), events[OCCURRED_AT].max())
    monkeypatch.setattr("features.validate.now_utc", lambda: pd.Timestamp(latest).to_pydatetime() + timedelta(days=1))
    result = CliRunner().invoke(app, ["experiments", "analyze", "winback_test", "--data", str(shop), "--exposures",
                                      experiment_env["SENDWISE_EXPOSURE_LOG"], "--config",
                                      experiment_env["SENDWISE_EXPERIMENTS"], "--no-mlflow"])
    assert result.exit_code == 0, result.output
    assert "treatment: wins" in result.output and "no mismatch" in result.output
