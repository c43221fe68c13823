"""Churn and propensity training, the registry, promotion and batch scoring on generated data."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from features.build import build_features
from features.demo import DemoShop, generate_demo
from features.io import load_data_dir
from features.tables import Tables
from features.training_set import Target
from features.validate import ContractError
from training.model import ModelBundle
from training.promotion import promote
from training.registry import CHALLENGER, CHAMPION, MissingModelError, alias_version, load_bundle
from training.scoring import score_customers
from training.tracking import configure_tracking
from training.train import NotEnoughDataError, TrainResult, train_classifier

AS_OF = "2025-10-01"


@pytest.fixture(scope="module")
def mlruns(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mlruns")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure_tracking(root)
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def trained(demo_tables: Tables, mlruns: Path) -> dict[str, TrainResult]:
    return {t.value: train_classifier(demo_tables, t, AS_OF, mlruns=mlruns) for t in Target}


def test_first_version_is_champion_and_challenger_with_everything_logged(trained: dict, mlruns: Path) -> None:
    churn = trained["churned"]
    assert (churn.name, churn.version) == ("churn", "1")
    assert alias_version("churn", CHAMPION) == alias_version("churn", CHALLENGER) == "1"
    run = MlflowClient().get_run(churn.run_id)
    for metric in ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_at_10", "capture_at_20"):
        assert f"holdout_{metric}" in run.data.metrics
    assert "baseline_recency_rule_roc_auc" in run.data.metrics
    assert "baseline_logistic_log_rfm_roc_auc" in run.data.metrics
    assert len(run.data.tags["git_commit"]) >= 7 and len(run.data.tags["data_fingerprint"]) == 16
    plots = {a.path for a in MlflowClient().list_artifacts(churn.run_id, "plots")}
    assert plots == {f"plots/{n}.png" for n in ("roc", "precision_recall", "calibration", "cumulative_gains",
                                                "feature_importance")}
    assert "customer_id" not in mlflow.artifacts.load_text(f"runs:/{churn.run_id}/features.json")


def test_training_rows_come_from_windows_closed_before_the_as_of(trained: dict) -> None:
    for result in trained.values():
        run = MlflowClient().get_run(result.run_id)
        horizon = int(run.data.params["horizon_days"])
        fit_dates = [pd.Timestamp(d) for d in run.data.params["fit_as_of_dates"].split(",")]
        assert len(fit_dates) >= 3
        assert all(d + pd.Timedelta(days=horizon) <= pd.Timestamp(AS_OF) for d in fit_dates)
        assert result.holdout_as_of == datetime(2025, 10, 1)
        holdout = pd.read_parquet(mlflow.artifacts.download_artifacts(f"runs:/{result.run_id}/holdout/scores.parquet"))
        assert result.positive_rates["holdout"] == pytest.approx(holdout["label"].mean())
        assert run.data.metrics["positive_rate_calibration"] == pytest.approx(result.positive_rates["calibration"])


def test_model_beats_the_recency_rule_on_the_holdout(trained: dict) -> None:
    for result in trained.values():
        assert result.metrics["roc_auc"] > result.baselines["recency_rule"]["roc_auc"]
        assert 0.0 < result.metrics["ece"] < 0.15  # calibrated on a later fold


def test_scores_do_not_depend_on_rows_at_or_after_the_as_of(trained: dict, demo_tables: Tables, mlruns: Path) -> None:
    churn, propensity = load_bundle("churn"), load_bundle("propensity")
    full, _ = score_customers(demo_tables, AS_OF, churn, propensity)
    cut, _ = score_customers(demo_tables.before(datetime(2025, 10, 1)), AS_OF, churn, propensity)
    pd.testing.assert_frame_equal(full, cut)
    assert set(full["churn_risk"].dropna()) <= {"low", "medium", "high"}
    prospects = full["lifecycle_stage"] == "prospect"
    assert full.loc[prospects, "churn_probability"].isna().all()
    assert full.loc[~prospects, "churn_probability"].between(0, 1).all()
    assert full["reason_1"].notna().mean() > 0.9


def test_promotion_needs_the_margin_and_force_overrides(trained: dict, demo_tables: Tables, mlruns: Path) -> None:
    second = train_classifier(demo_tables, Target.CHURNED, AS_OF, mlruns=mlruns, random_state=1)
    assert second.version == "2" and alias_version("churn", CHAMPION) == "1"
    assert alias_version("churn", CHALLENGER) == "2"
    decision = promote("churn", margin=1.0)  # nothing gains a full point of AUC
    assert not decision.promoted and alias_version("churn", CHAMPION) == "1"
    assert decision.champion_value == pytest.approx(trained["churned"].metrics["roc_auc"])
    assert decision.challenger_value == pytest.approx(second.metrics["roc_auc"])
    small = promote("churn", margin=1e-6)
    gain = second.metrics["roc_auc"] - trained["churned"].metrics["roc_auc"]
    assert small.comparison.difference == pytest.approx(gain)
    assert small.promoted == (gain >= 1e-6 and small.comparison.interval[0] > 0)  # by the margin, and significant
    loose = promote("churn", margin=-1.0)  # accept anything within a full point
    assert loose.promoted and alias_version("churn", CHAMPION) == "2"
    MlflowClient().set_registered_model_alias("churn", CHAMPION, "1")
    forced = promote("churn", margin=1.0, force=True)
    assert forced.promoted and forced.forced and alias_version("churn", CHAMPION) == "2"


def test_promotion_on_a_fresh_holdout(trained: dict, demo_tables: Tables) -> None:
    decision = promote("propensity", margin=0.0, tables=demo_tables, as_of=AS_OF)
    assert "fresh holdout" in decision.holdout
    assert decision.champion_value == pytest.approx(trained["purchased"].metrics["roc_auc"])


def test_clear_errors(demo_tables: Tables, mlruns: Path, tiny_tables: Tables) -> None:
    with pytest.raises(ContractError, match=r"--as-of 2030-01-01 00:00:00 is outside the data, which runs from 2024-07-0\d .* to 2025-12-31"):
        train_classifier(demo_tables, Target.CHURNED, "2030-01-01", mlruns=mlruns)
    with pytest.raises(NotEnoughDataError, match=r"the data before 2024-01-31 00:00:00 is too short for a 1-day label window"):
        train_classifier(tiny_tables, Target.PURCHASED, "2024-01-31", horizon_days=1, mlruns=mlruns)
    with pytest.raises(MissingModelError, match="no 'nosuchmodel' model has the alias 'champion'. Train"):
        load_bundle("nosuchmodel", hint="Train one first")


def test_not_enough_rows_names_the_counts(tmp_path: Path, mlruns: Path) -> None:
    generate_demo(DemoShop(customers=40, seed=1, products=20), tmp_path)
    tables, _ = load_data_dir(tmp_path)
    with pytest.raises(NotEnoughDataError, match=r"not enough data in the \w+ fold: \d+ rows with \d+ positive and "
                                                 r"\d+ negative 'churned' labels; at least \d+ of each are needed"):
        train_classifier(tables, Target.CHURNED, AS_OF, mlruns=mlruns)


def test_bundle_round_trip(trained: dict, demo_tables: Tables, tmp_path: Path) -> None:
    bundle = trained["churned"].bundle
    bundle.save(tmp_path)
    again = ModelBundle.load(tmp_path)
    features = build_features(demo_tables, AS_OF).head(50)
    assert again.columns == bundle.columns and again.calibrator.method == bundle.calibrator.method
    np.testing.assert_array_equal(again.predict_proba(features), bundle.predict_proba(features))
