"""Full-data training on Spark (``training.spark_training``) fits what the local trainer fits.

One ``SparkXGBClassifier`` fit (conftest's local[2] session, 2 workers) on the demo shop's churn folds,
built by DuckDB and handed to Spark, so that the fit, not the feature query, is under test (the Spark
training set's rows are held to DuckDB's in tests/test_spark_features.py, and here by the slow
end-to-end test). The local trainer fits the same folds with the same parameters.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from conftest import SERVE_AS_OF

from features.schema import CUSTOMER_ID
from features.tables import Tables
from features.training_set import DEFAULT_HORIZON_DAYS, Target
from training.calibration import fit_calibrator
from training.design import feature_columns
from training.fitting import fit_bundle
from training.metrics import classification_metrics
from training.registry import latest_row_time
from training.train import Folds, make_folds
from training.tuning import BASE_PARAMS

pytestmark = pytest.mark.spark

AS_OF = datetime.fromisoformat(SERVE_AS_OF)
TARGET = Target.CHURNED
HORIZON = DEFAULT_HORIZON_DAYS[TARGET]
LABEL = TARGET.value


@pytest.fixture(scope="module")
def folds(demo_tables: Tables) -> Folds:
    """The local trainer's folds (12 monthly as_of dates; 583 / 125 / 136 / 175 rows)."""
    return make_folds(demo_tables, TARGET, AS_OF, HORIZON, periods=12)


@pytest.fixture(scope="module")
def dates(folds: Folds) -> object:
    from training.spark_training import FoldDates

    return FoldDates(tuple(folds.fit_dates[:-2]), folds.fit_dates[-2], folds.fit_dates[-1], folds.holdout_as_of)


@pytest.fixture(scope="module")
def stacked(spark: object, folds: Folds) -> object:
    """The four folds as one Spark training set, as spark_training_set stacks them."""
    frame = pd.concat([folds.train, folds.valid, folds.calibration, folds.holdout], ignore_index=True)
    return spark.createDataFrame(frame).persist()


@pytest.fixture(scope="module")
def spark_tables(spark: object, demo_tables: Tables) -> object:
    from features.spark import SparkTables

    return SparkTables.from_tables(spark, demo_tables)


@pytest.fixture(scope="module")
def columns(folds: Folds) -> list[str]:
    return feature_columns(folds.train)


@pytest.fixture(scope="module")
def fitted(stacked: object, dates: object, columns: list[str]) -> object:
    from training.spark_training import fit_bundle_spark

    return fit_bundle_spark(stacked, dates, columns, LABEL, HORIZON, {"trained_as_of": AS_OF.isoformat()})


def by_customer(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(CUSTOMER_ID, ignore_index=True, kind="stable")


def test_the_bundle_holds_an_ordinary_booster_stopped_at_its_best_round(fitted: object, columns: list[str]) -> None:
    bundle = fitted.bundle
    assert isinstance(bundle.booster, xgb.Booster)
    assert bundle.booster.feature_names == columns
    assert 1 < bundle.booster.num_boosted_rounds() < 3000  # early stopping cut it
    assert fitted.num_workers == 2  # local[2]'s default parallelism
    assert bundle.meta["xgb_params"] == BASE_PARAMS | {"seed": 0}  # the local trainer's defaults
    assert 0 < bundle.meta["valid_log_loss"] < 0.69
    assert bundle.meta["trained_as_of"] == AS_OF.isoformat()


def test_fold_rows_counted_in_spark_are_the_local_folds(stacked: object, dates: object, folds: Folds) -> None:
    from training.spark_training import count_folds

    rows, positives = count_folds(stacked, dates, LABEL)
    for name in ("train", "valid", "calibration", "holdout"):
        fold = getattr(folds, name)
        assert (rows[name], positives[name]) == (len(fold), int(fold[LABEL].sum())), name


def test_fold_dates_on_spark_tables_are_make_folds_dates(spark_tables: object, demo_tables: Tables,
                                                         folds: Folds) -> None:
    """At the serving as_of the data covers the holdout's label window; at December 1 it does not, and
    the holdout moves to the latest monthly as_of whose window closes by then."""
    from training.spark_training import fold_dates

    got = fold_dates(spark_tables, AS_OF, HORIZON, periods=12)
    assert (got.fit, got.holdout) == (folds.fit_dates, folds.holdout_as_of)
    december = datetime(2025, 12, 1)
    local = make_folds(demo_tables, TARGET, december, HORIZON, periods=12)
    got = fold_dates(spark_tables, december, HORIZON, periods=12)
    assert local.holdout_as_of < december and (got.fit, got.holdout) == (local.fit_dates, local.holdout_as_of)


def test_trained_through_is_the_latest_row_before_the_as_of(spark_tables: object, demo_tables: Tables) -> None:
    from training.spark_training import trained_through

    for moment in (AS_OF, datetime(2025, 3, 14, 12, 30)):
        assert trained_through(spark_tables, moment) == latest_row_time(demo_tables.before(moment)).isoformat()


def test_holdout_probabilities_per_partition_are_predict_proba(stacked: object, dates: object, fitted: object,
                                                               folds: Folds) -> None:
    from training.spark_training import holdout_scores

    scored, sample = holdout_scores(stacked, dates, fitted.bundle, len(folds.holdout))
    holdout = by_customer(folds.holdout)
    assert sample.fraction == 1.0 and scored[CUSTOMER_ID].tolist() == holdout[CUSTOMER_ID].tolist()
    want = fitted.bundle.predict_proba(holdout)
    assert np.abs(want - fitted.bundle.raw_proba(holdout)).max() > 0.01  # the calibrator moved them
    np.testing.assert_allclose(scored["probability"].to_numpy(), want, rtol=1e-12, atol=0)
    assert scored["label"].tolist() == holdout[LABEL].astype(int).tolist()


def test_holdout_roc_auc_is_the_local_trainers(stacked: object, dates: object, fitted: object, folds: Folds,
                                               columns: list[str]) -> None:
    """Same folds, same parameters; the fits differ (two workers' merged histograms, each worker's own
    row subsample), so the ranking differs a little: measured 0.902 against 0.904."""
    from training.spark_training import holdout_scores

    local, _ = fit_bundle(folds.train, folds.valid, folds.calibration, columns, LABEL, HORIZON,
                          BASE_PARAMS | {"seed": 0}, 0, {})
    holdout = by_customer(folds.holdout)
    y = holdout[LABEL].to_numpy(int)
    scored, _ = holdout_scores(stacked, dates, fitted.bundle, len(holdout))
    remote_auc = classification_metrics(y, scored["probability"].to_numpy())["roc_auc"]
    local_auc = classification_metrics(y, local.predict_proba(holdout))["roc_auc"]
    assert local_auc > 0.8  # the model learns something here: the comparison means something
    assert abs(remote_auc - local_auc) < 0.03


def test_the_calibrator_is_fitted_on_the_calibration_folds_raw_scores(fitted: object, folds: Folds) -> None:
    """The calibrator fit_calibrator gives on the calibration fold's raw scores, computed here on one
    node (rows in customer order, as the driver orders them)."""
    calibration = by_customer(folds.calibration)
    raw = fitted.bundle.raw_proba(calibration)
    want, losses = fit_calibrator(raw, calibration[LABEL].to_numpy(int), 0)
    assert fitted.bundle.calibrator.to_dict() == want.to_dict()
    assert fitted.calibration_losses == pytest.approx(losses)
    assert fitted.calibration_sample.fraction == 1.0


def test_a_fold_above_the_row_limit_reaches_the_driver_as_a_seeded_sample(stacked: object, dates: object,
                                                                          fitted: object, folds: Folds) -> None:
    from training.spark_training import holdout_scores

    first, sample = holdout_scores(stacked, dates, fitted.bundle, len(folds.holdout), max_driver_rows=60)
    again, _ = holdout_scores(stacked, dates, fitted.bundle, len(folds.holdout), max_driver_rows=60)
    assert sample.fraction == pytest.approx(60 / 175) and sample.params("holdout") == {
        "driver_fraction_holdout": sample.fraction, "driver_seed_holdout": 0}
    assert 30 < len(first) < 90 and first[CUSTOMER_ID].tolist() == again[CUSTOMER_ID].tolist()
    assert set(first[CUSTOMER_ID]) < set(folds.holdout[CUSTOMER_ID])


@pytest.mark.slow
def test_changing_the_holdout_labels_changes_no_part_of_the_bundle(stacked: object, dates: object,
                                                                   fitted: object, columns: list[str]) -> None:
    from pyspark.sql import functions as F

    from training.spark_training import FOLD, fit_bundle_spark

    flipped = (stacked.withColumn(FOLD, dates.column())
               .withColumn(LABEL, F.when(F.col(FOLD) == "holdout", ~F.col(LABEL)).otherwise(F.col(LABEL)))
               .drop(FOLD))
    again = fit_bundle_spark(flipped, dates, columns, LABEL, HORIZON, {"trained_as_of": AS_OF.isoformat()})
    assert again.positives["holdout"] == fitted.rows["holdout"] - fitted.positives["holdout"]
    assert again.bundle.calibrator.to_dict() == fitted.bundle.calibrator.to_dict()
    assert again.bundle.booster.num_boosted_rounds() == fitted.bundle.booster.num_boosted_rounds()


@pytest.mark.slow
def test_train_classifier_spark_logs_and_registers_a_full_data_run(spark_tables: object, demo_tables: Tables,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end on Spark tables (the Spark training set, 5 feature queries): purchase propensity, whose
    folds have enough rows with 4 monthly dates. The fold rows are DuckDB's."""
    from training.registry import load_version
    from training.spark_training import TRAINING, train_classifier_spark

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    target, horizon = Target.PURCHASED, DEFAULT_HORIZON_DAYS[Target.PURCHASED]
    local = make_folds(demo_tables, target, AS_OF, horizon, periods=4)
    result = train_classifier_spark(spark_tables, target, AS_OF, periods=4, mlruns=tmp_path, project="shop")
    params = mlflow.get_run(result.run_id).data.params
    assert params["training"] == TRAINING and params["num_workers"] == "2"
    for name in ("train", "valid", "calibration", "holdout"):
        assert params[f"rows_{name}"] == str(len(getattr(local, name))), name
    assert params["driver_fraction_holdout"] == "1.0" and result.holdout_rows == len(local.holdout)
    assert result.bundle.meta["trained_through"] == latest_row_time(demo_tables.before(AS_OF)).isoformat()
    assert result.name == "shop.propensity" and set(result.baselines) == {"recency_rule", "logistic_log_rfm"}
    loaded = load_version("propensity", result.version, "shop")
    np.testing.assert_array_equal(loaded.predict_proba(local.holdout), result.bundle.predict_proba(local.holdout))
