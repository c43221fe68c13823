"""Churn and propensity training, the registry, promotion and batch scoring on generated data."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from features.build import build_features
from features.demo import DemoShop, generate_demo
from features.io import load_data_dir
from features.tables import Tables
from features.training_set import Target
from features.validate import ContractError
from training.holdout_scores import load_holdout_scores, log_holdout_scores
from training.model import ModelBundle
from training.promotion import promote
from training.registry import (
    CHALLENGER,
    CHAMPION,
    MissingModelError,
    alias_version,
    load_bundle,
    load_version,
    log_and_register,
)
from training.scoring import score_customers, score_features
from training.tracking import configure_tracking
from training.train import NotEnoughDataError, TrainResult, train_classifier
from training.tuning import BASE_PARAMS

AS_OF = "2025-10-01"
REPO = Path(__file__).resolve().parents[1]


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
    """Churn with the default parameters; propensity tuned with two Optuna trials (``--trials 2``)."""
    return {t.value: train_classifier(demo_tables, t, AS_OF, mlruns=mlruns, trials=2 if t is Target.PURCHASED else 0)
            for t in Target}


def test_first_version_is_champion_and_challenger_with_everything_logged(trained: dict, mlruns: Path) -> None:
    churn = trained["churned"]
    assert (churn.name, churn.version) == ("churn", "1")
    assert alias_version("churn", CHAMPION) == alias_version("churn", CHALLENGER) == "1"
    run = MlflowClient().get_run(churn.run_id)
    for metric in ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_at_10", "capture_at_20"):
        assert f"holdout_{metric}" in run.data.metrics
    assert "baseline_recency_rule_roc_auc" in run.data.metrics
    assert "baseline_logistic_log_rfm_roc_auc" in run.data.metrics
    if (REPO / ".git").exists():  # this checkout: the real commit, never the fallback "unknown"
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", run.data.tags["git_commit"]), run.data.tags["git_commit"]
    assert re.fullmatch(r"[0-9a-f]{16}", run.data.tags["data_fingerprint"])
    # computed again by the propensity run on the same data and as_of: promotion compares these
    other = MlflowClient().get_run(trained["purchased"].run_id).data.tags["data_fingerprint"]
    assert other == run.data.tags["data_fingerprint"]
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


def with_activity(tables: Tables, at: datetime) -> Tables:
    """``tables`` plus, at ``at`` and 20 days later, activity that moves churn and propensity
    scores: a large order and email clicks for 60 known customers, and a new customer."""
    t = pd.Timestamp
    frames = {name: tables.frame(name) for name in ("orders", "customers", "events", "products", "customer_changes")}
    who = sorted(frames["orders"]["customer_id"].unique())[:60]
    product = frames["products"]["product_id"].iloc[0]
    when = [t(at), t(at) + timedelta(days=20)]
    orders = pd.DataFrame([(f"X{i}-{c}", c, product, 5.0, 80.0, w) for c in who + ["newcomer"]
                           for i, w in enumerate(when)],
                          columns=["order_id", "customer_id", "product_id", "quantity", "unit_price", "ordered_at"])
    events = pd.DataFrame([(c, kind, None, w) for c in who for w in when
                           for kind in ("email_sent", "email_open", "email_click", "add_to_cart")],
                          columns=["customer_id", "event_type", "product_id", "occurred_at"])
    newcomer = pd.DataFrame({"customer_id": ["newcomer"], "signup_at": [t(at)], "email_consent": [True]})
    return Tables.from_frames(pd.concat([frames["orders"], orders], ignore_index=True),
                              pd.concat([frames["customers"], newcomer], ignore_index=True),
                              pd.concat([frames["events"], events], ignore_index=True), frames["products"],
                              frames["customer_changes"])


def test_scores_do_not_depend_on_rows_at_or_after_the_as_of(trained: dict, demo_tables: Tables, mlruns: Path) -> None:
    churn, propensity = load_bundle("churn"), load_bundle("propensity")
    as_of = datetime(2025, 10, 1)
    base, _ = score_customers(demo_tables, AS_OF, churn, propensity)
    future, _ = score_customers(with_activity(demo_tables, as_of), AS_OF, churn, propensity)
    pd.testing.assert_frame_equal(future, base)  # rows at the as_of itself and after it change nothing
    # the same rows one second earlier do move the scores: the check above could have failed
    past, _ = score_customers(with_activity(demo_tables, as_of - timedelta(seconds=1)), AS_OF, churn, propensity)
    assert "newcomer" in set(past["customer_id"]) and "newcomer" not in set(base["customer_id"])
    moved = past.set_index("customer_id").loc[base["customer_id"]]
    changed = (moved["churn_probability"] - base.set_index("customer_id")["churn_probability"]).abs() > 1e-6
    assert changed.sum() >= 30
    assert set(base["churn_risk"].dropna()) <= {"low", "medium", "high"}
    prospects = base["lifecycle_stage"] == "prospect"
    assert base.loc[prospects, "churn_probability"].isna().all()
    assert base.loc[~prospects, "churn_probability"].between(0, 1).all()
    assert base["reason_1"].notna().mean() > 0.9


def register_challenger(base: TrainResult, probability, demo_tables: Tables) -> tuple[str, float]:
    """A new ``churn`` version whose logged holdout scores are ``probability(champion scores)``,
    on the champion's holdout and data (so promotion compares the two row by row); returns its
    version and its holdout ROC-AUC gain over the champion."""
    from sklearn.metrics import roc_auc_score

    client = MlflowClient()
    tags = client.get_run(base.run_id).data.tags
    scores = load_holdout_scores(base.name, base.version)
    crafted = scores.assign(probability=probability(scores))
    examples = build_features(demo_tables.before(datetime(2025, 10, 1)), AS_OF).head(20)
    mlflow.set_experiment(experiment_id=client.get_run(base.run_id).info.experiment_id)
    with mlflow.start_run(run_name="crafted-challenger"):
        mlflow.set_tags({k: tags[k] for k in ("holdout_as_of", "data_fingerprint")})
        log_holdout_scores(crafted)
        version = log_and_register(base.bundle, base.name, examples, base.bundle.predict_proba(examples))
    gain = roc_auc_score(crafted["label"], crafted["probability"]) - roc_auc_score(scores["label"], scores["probability"])
    return version, gain


def test_promotion_moves_the_champion_only_by_the_margin_and_significantly(trained: dict, demo_tables: Tables,
                                                                          mlruns: Path) -> None:
    churn = trained["churned"]
    assert alias_version("churn", CHAMPION) == churn.version == "1"

    # a challenger that ranks every customer backwards: far worse, stays out
    worse, gain = register_challenger(churn, lambda f: 1 - f["probability"], demo_tables)
    assert worse == "2" and alias_version("churn", CHALLENGER) == "2" and gain < -0.3
    decision = promote("churn")
    assert not decision.promoted and alias_version("churn", CHAMPION) == "1"
    assert decision.comparison.difference == pytest.approx(gain) and "the challenger is worse" in decision.reason

    # the champion's scores with its worst-placed negative moved to the bottom: better, by too little to tell
    def one_fix(f: pd.DataFrame) -> pd.Series:
        p = f["probability"].copy()
        p[p[f["label"] == 0].idxmax()] = p.min() - 1e-3
        return p

    nudged, gain = register_challenger(churn, one_fix, demo_tables)
    assert 0 < gain < 0.05  # one negative of ~175 holdout customers: it never lowers AUC, often changes nothing
    decision = promote("churn", margin=gain / 2)
    assert not decision.promoted and alias_version("churn", CHAMPION) == "1"
    assert "does not lie above +0: the gain may be noise" in decision.reason

    # perfect ranking: promoted when it clears the margin, not when the margin is above its gain
    perfect, gain = register_challenger(churn, lambda f: 0.05 + 0.9 * f["label"], demo_tables)
    assert gain > 0.05  # the champion reaches about 0.90
    decision = promote("churn", margin=gain + 0.01)
    assert not decision.promoted and alias_version("churn", CHAMPION) == "1"
    assert decision.champion_value == pytest.approx(churn.metrics["roc_auc"])
    assert decision.challenger_value == pytest.approx(1.0)
    decision = promote("churn", margin=gain - 0.01)
    assert decision.promoted and not decision.forced and alias_version("churn", CHAMPION) == perfect

    # a negative margin accepts a challenger that is not worse by more than it
    MlflowClient().set_registered_model_alias("churn", CHAMPION, "1")
    MlflowClient().set_registered_model_alias("churn", CHALLENGER, nudged)
    assert promote("churn", margin=-0.01).promoted and alias_version("churn", CHAMPION) == nudged

    # force overrides a failing comparison
    MlflowClient().set_registered_model_alias("churn", CHAMPION, "1")
    MlflowClient().set_registered_model_alias("churn", CHALLENGER, worse)
    forced = promote("churn", force=True)
    assert forced.promoted and forced.forced and alias_version("churn", CHAMPION) == worse
    MlflowClient().set_registered_model_alias("churn", CHAMPION, "1")
    MlflowClient().set_registered_model_alias("churn", CHALLENGER, "1")


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


def test_scores_are_identical_after_save_load_and_through_the_registry(trained: dict, demo_tables: Tables,
                                                                     tmp_path: Path) -> None:
    churn, propensity = trained["churned"], trained["purchased"]
    features = build_features(demo_tables.before(datetime(2025, 10, 1)), AS_OF)
    expected = score_features(features, churn.bundle, propensity.bundle)
    churn.bundle.save(tmp_path / "churn")
    propensity.bundle.save(tmp_path / "propensity")
    again = ModelBundle.load(tmp_path / "churn"), ModelBundle.load(tmp_path / "propensity")
    assert again[0].columns == churn.bundle.columns and again[0].calibrator.method == churn.bundle.calibrator.method
    pd.testing.assert_frame_equal(score_features(features, *again), expected)
    registered = load_version("churn", churn.version), load_version("propensity", propensity.version)
    pd.testing.assert_frame_equal(score_features(features, *registered), expected)
    assert expected["reason_1"].notna().any() and expected["churn_probability"].notna().any()


def test_tuning_with_trials_logs_each_trial_and_fits_the_best(trained: dict) -> None:
    """``sendwise train propensity --trials 2``: two Optuna trials, each a nested run, and the model
    is fitted with the parameters of the one with the lowest validation log-loss."""
    client = MlflowClient()
    tuned_run, plain_run = client.get_run(trained["purchased"].run_id), client.get_run(trained["churned"].run_id)
    trials = client.search_runs([tuned_run.info.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{tuned_run.info.run_id}'")
    assert tuned_run.data.params["trials"] == "2" and len(trials) == 2
    assert {t.data.tags["state"] for t in trials} == {"complete"}
    best = min(trials, key=lambda t: t.data.metrics["valid_log_loss"])
    tuned = {"eta", "max_depth", "min_child_weight", "subsample", "colsample_bytree", "lambda", "alpha", "gamma"}
    assert set(best.data.params) == tuned
    assert {k: tuned_run.data.params[f"xgb_{k}"] for k in tuned} == best.data.params
    assert "xgb_alpha" not in plain_run.data.params  # untuned: the defaults, which set no alpha
    assert float(tuned_run.data.params["xgb_eta"]) != BASE_PARAMS["eta"]
    assert not client.search_runs([plain_run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{plain_run.info.run_id}'")
