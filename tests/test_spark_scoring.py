"""Scores and recommendations on Spark are the local ones, and a registered classifier answers with its
calibrated probability through MLflow's pyfunc and ``spark_udf`` (issue 18 item 4).

The tests marked ``spark`` share conftest's local[2] session and skip where pyspark or Java is absent.
Churn and propensity are trained once on the demo shop (a module MLflow store); the churn bundle gets a
CLV model, so the lifetime-value columns (next_order_date too) are compared as well.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import mlflow
import mlflow.xgboost
import numpy as np
import pandas as pd
import pytest
from conftest import SERVE_AS_OF

from features.build import build_features
from features.errors import InputError
from features.interactions import build_interactions
from features.schema import CUSTOMER_ID, PRODUCT_ID
from features.tables import Tables
from features.training_set import Target
from training.clv import fit_clv_features
from training.model import XGBOOST, ModelBundle
from training.recommenders import batch
from training.recommenders.batch import RecommendationContext, fallback_length, recommend_all
from training.recommenders.metrics import RANK, SCORE, SOURCE
from training.recommenders.models import Recommender, make_recommender
from training.recommenders.rules import BusinessRules, blocked_products
from training.registry import PIP_REQUIREMENTS, load_bundle, load_version, register
from training.scoring import CLV_KEY, score_customers, score_features
from training.tracking import configure_tracking
from training.train import train_classifier

AS_OF = datetime.fromisoformat(SERVE_AS_OF)
RECOMMENDERS = {  # small fits: the comparison, not the model, is under test
    "als": {"factors": 16, "iterations": 5},
    "itemknn": {},  # scores from the customers' current interactions: the Spark interaction rows are used
}


@pytest.fixture(scope="module")
def models(demo_tables: Tables, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelBundle, ModelBundle]:
    """Champion churn and propensity trained before AS_OF, loaded from the registry; churn carries a CLV
    model fitted at AS_OF (as ``sendwise run`` gives it one)."""
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path_factory.mktemp("mlruns")
    configure_tracking(root)
    for target in Target:
        train_classifier(demo_tables, target, AS_OF, mlruns=root)
    churn, propensity = load_bundle("churn"), load_bundle("propensity")
    churn.meta[CLV_KEY] = fit_clv_features(build_features(demo_tables, AS_OF), AS_OF).to_dict()
    yield churn, propensity
    mp.undo()


@pytest.fixture(scope="module")
def features(demo_tables: Tables) -> pd.DataFrame:
    return build_features(demo_tables, AS_OF)


@pytest.fixture(scope="module")
def spark_demo(spark: object, demo_tables: Tables) -> object:
    from features.spark import SparkTables

    return SparkTables.from_tables(spark, demo_tables)


def by(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    return frame.sort_values(list(columns), ignore_index=True, kind="stable")


def in_spark_units(scores: pd.DataFrame) -> pd.DataFrame:
    """``scores`` with next_order_date in microseconds, as Spark keeps timestamps."""
    return scores.astype({"next_order_date": "datetime64[us]"})


# -- scores ----------------------------------------------------------------------------------------------
@pytest.mark.spark
def test_scores_on_spark_are_score_customers_row_for_row(spark_demo: object, demo_tables: Tables,
                                                         models: tuple[ModelBundle, ModelBundle]) -> None:
    from features.spark import to_pandas
    from training.spark_scoring import score_customers_spark

    churn, propensity = models
    local, when = score_customers(demo_tables, AS_OF, churn, propensity)
    remote, remote_when = score_customers_spark(spark_demo, AS_OF, churn, propensity)
    assert remote_when == when
    want, got = by(in_spark_units(local), CUSTOMER_ID), by(to_pandas(remote), CUSTOMER_ID)
    # what is compared: buyers and prospects, lifetime value, reasons
    assert want["churn_probability"].notna().sum() > 100 and want["churn_probability"].isna().sum() > 20
    assert want["next_order_date"].notna().sum() > 50 and want["reason_3"].notna().all()
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9, atol=0)


@pytest.mark.spark
def test_a_spark_feature_frame_scores_as_its_pandas_copy(spark: object, features: pd.DataFrame,
                                                         models: tuple[ModelBundle, ModelBundle]) -> None:
    """score_spark on any Spark frame of features (here DuckDB's, handed over with its nullable types),
    with another lifetime-value horizon."""
    from features.spark import to_pandas
    from training.spark_scoring import score_spark

    churn, propensity = models
    local = score_features(features, churn, propensity, clv_horizon_days=90)
    remote = to_pandas(score_spark(spark.createDataFrame(features), churn, propensity, clv_horizon_days=90))
    assert not np.allclose(local["expected_orders"].dropna(),
                           score_features(features, churn, propensity)["expected_orders"].dropna())
    pd.testing.assert_frame_equal(by(remote, CUSTOMER_ID), by(in_spark_units(local), CUSTOMER_ID),
                                  check_exact=False, rtol=1e-9, atol=0)


@pytest.mark.spark
def test_features_without_the_models_inputs_are_refused_on_the_driver(
        spark: object, models: tuple[ModelBundle, ModelBundle]) -> None:
    from training.spark_scoring import score_spark

    frame = spark.createDataFrame([("a", 1)], f"{CUSTOMER_ID} string, orders_count bigint")
    with pytest.raises(InputError, match="the features lack rfm_segment, lifecycle_stage"):
        score_spark(frame, *models)


# -- recommendations --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recommenders(demo_tables: Tables) -> dict[str, Recommender]:
    """The models of RECOMMENDERS, and ALS fitted on every other customer (the rest are folded in)."""
    models = {kind: make_recommender(kind, **params).fit_tables(demo_tables, AS_OF)
              for kind, params in RECOMMENDERS.items()}
    interactions = build_interactions(demo_tables, AS_OF)
    even = np.arange(len(interactions.customer_ids)) % 2 == 0
    models["als-sample"] = make_recommender("als", **RECOMMENDERS["als"]).fit(
        replace(interactions, matrix=interactions.matrix[even], customer_ids=interactions.customer_ids[even]))
    return models


@pytest.fixture
def country_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-country fallback lists from 10 recent buyers (the demo shop's 400 customers have fewer than the
    default's 30 in most countries): four countries get their own list."""
    from training.recommenders import spark_batch

    for module in (batch, spark_batch):
        monkeypatch.setattr(module, "MIN_COUNTRY_BUYERS", 10)


@pytest.mark.spark
@pytest.mark.usefixtures("country_lists")
@pytest.mark.parametrize(("kind", "rules"), [
    ("als", BusinessRules()),
    ("itemknn", BusinessRules(repurchase_after_days=60, require_image=True, max_per_category=2)),
    ("als-sample", BusinessRules()),
], ids=["als-default-rules", "itemknn-repurchase-image-diversity", "als-fitted-on-half-the-rest-folded-in"])
def test_recommendations_on_spark_are_recommend_all(spark_demo: object, demo_tables: Tables,
                                                     recommenders: dict[str, Recommender], kind: str,
                                                     rules: BusinessRules) -> None:
    from features.spark import to_pandas
    from training.recommenders.spark_batch import recommend_all_spark

    model = recommenders[kind]
    context = RecommendationContext(demo_tables, AS_OF, model)
    lists = context.fallback_lists(blocked_products(context.products, rules), fallback_length(6))
    assert len(lists) == 5  # all countries' list and four countries' own
    want = by(recommend_all(demo_tables, AS_OF, model, 6, rules), CUSTOMER_ID, RANK)
    got = by(to_pandas(recommend_all_spark(spark_demo, AS_OF, model, 6, rules)), CUSTOMER_ID, RANK)
    assert set(want[SOURCE]) == {model.source, "popular"} and want[CUSTOMER_ID].nunique() > 300
    assert list(got.columns) == list(want.columns)
    for column in (CUSTOMER_ID, RANK, PRODUCT_ID, SOURCE):
        assert got[column].tolist() == want[column].tolist(), column
    np.testing.assert_allclose(got[SCORE].to_numpy(), want[SCORE].to_numpy(), rtol=1e-6)
    assert got[SCORE].dtype == want[SCORE].dtype == np.float32


# -- registered classifiers: pyfunc models with the calibrator ----------------------------------------------
@pytest.mark.spark
def test_spark_udf_on_the_registered_churn_model_gives_the_calibrated_probability(
        spark: object, features: pd.DataFrame, models: tuple[ModelBundle, ModelBundle]) -> None:
    from pyspark.sql import functions as F

    churn = load_bundle("churn")
    x = pd.DataFrame(churn.matrix(features), columns=churn.columns)
    udf = mlflow.pyfunc.spark_udf(spark, "models:/churn@champion", result_type="double", env_manager="local")
    got = spark.createDataFrame(x).select(udf(F.struct(*(F.col(f"`{c}`") for c in churn.columns))).alias("p"))
    want = churn.predict_proba(features)
    assert np.abs(want - churn.raw_proba(features)).max() > 0.01  # calibration moves them: the test can tell
    np.testing.assert_allclose(got.toPandas()["p"].to_numpy(), want, rtol=1e-9)


def test_an_xgboost_version_is_a_pyfunc_with_its_calibrator_and_old_versions_still_load(
        features: pd.DataFrame, models: tuple[ModelBundle, ModelBundle]) -> None:
    churn = load_bundle("churn")
    assert churn.kind == XGBOOST
    uri = "models:/churn@champion"
    assert "xgboost" not in mlflow.models.Model.load(uri).flavors
    x = pd.DataFrame(churn.matrix(features), columns=churn.columns)
    served = mlflow.pyfunc.load_model(uri).predict(x)
    np.testing.assert_allclose(np.asarray(served), churn.predict_proba(features), rtol=1e-12)
    # a version logged as before (the xgboost flavour, the descriptor an extra file) loads as it did
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run():
        descriptor = churn.save(Path(tmp))
        info = mlflow.xgboost.log_model(churn.booster, name="model", extra_files=[str(descriptor)],
                                        pip_requirements=PIP_REQUIREMENTS)
    old = load_version("churn", register(info.model_uri, "churn", {}, aliases=False))
    assert old.kind == XGBOOST and old.columns == churn.columns
    np.testing.assert_array_equal(old.predict_proba(features), churn.predict_proba(features))
