"""Time-aware customer attributes (issue 14): history in, today's values only where a send decision is
made; a model's settings travel with it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from features.attributes import current_attributes, with_current_attributes
from features.build import build_features
from features.config import FeatureConfig, IntentWeights
from features.io import load_data_dir
from features.tables import Tables
from features.training_set import Target, build_training_set
from serving.state import NotReadyError, check_snapshot, serving_feature_config, signal_features
from training.design import design_matrix, feature_columns
from training.scoring import score_customers
from training.tracking import configure_tracking
from training.train import train_classifier

AS_OF = "2025-10-01"
OTHER = FeatureConfig(order_windows_days=(14, 60), email_windows_days=(10,), browse_windows_days=(2,),
                      abandoned_cart_days=(3,), intent_window_days=10,
                      intent_weights=IntentWeights(view=1, add_to_cart=2, purchase=4))


def test_bad_history_rows_go_to_rejects_with_their_reason(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_text("order_id,customer_id,product_id,quantity,unit_price,ordered_at\n"
                                         "o1,a,p1,1,10,2024-01-01\n")
    (tmp_path / "customer_changes.csv").write_text(
        "customer_id,changed_at,attribute,value\n"
        "a,2024-01-01,email_consent,yes\n"  # 1: fine
        "a,2024-01-02,country,\n"  # 2: fine: the country is no longer known
        "a,2024-01-03,vip,true\n"  # 3: unknown attribute
        "a,2024-01-04,email_consent,maybe\n"  # 4: not a boolean
        "a,2099-01-01,country,UK\n"  # 5: in the future
        "b,2024-01-05,country,UK\n"  # 6, 7: two values at one moment
        "b,2024-01-05,country,FR\n"
        ",2024-01-06,country,UK\n"  # 8: no customer
        "b,2024-01-07,country,UK\n")  # 9: fine
    tables, report = load_data_dir(tmp_path, tmp_path / "_rejects")
    changes = next(t for t in report.tables if t.table == "customer_changes")
    assert (changes.read, changes.loaded, changes.rejected) == (9, 3, 6)
    rejects = pd.read_csv(tmp_path / "_rejects" / "customer_changes.csv").set_index("source_row")["reason"]
    assert rejects[3] == "unknown attribute (expected one of country, email_consent)"
    assert rejects[4] == "email_consent value is not true/false (or 1/0, yes/no)"
    assert rejects[5].startswith("changed_at is in the future")
    assert rejects[6] == rejects[7] == "different values for one customer's attribute at the same changed_at"
    assert rejects[8] == "missing customer_id"
    features = build_features(tables, "2024-02-01").set_index("customer_id")
    assert bool(features.loc["a", "email_consent"]) and pd.isna(features.loc["a", "country"])


def test_tables_cut_at_a_date_cut_the_history_too(tiny_tables: Tables) -> None:
    cut = tiny_tables.before(datetime(2024, 1, 25))
    assert sorted(cut.frame("customer_changes")["changed_at"].dt.strftime("%m-%d")) == ["01-20", "01-20", "12-01",
                                                                                          "12-01"]


def test_a_shop_with_only_todays_values_gives_no_model_its_consent(tiny_frames: dict) -> None:
    """Training excludes current-only attributes: without a history the column is empty at every
    as_of, whatever today's customers table says."""
    today_only = Tables.from_frames(**{k: v for k, v in tiny_frames.items() if k != "customer_changes"})
    frame = build_training_set(today_only, ["2024-01-15", "2024-01-25"], Target.PURCHASED, 5).frame
    assert frame["email_consent"].isna().all()
    matrix = design_matrix(frame, feature_columns(frame))
    assert np.isnan(matrix["email_consent"]).all() and "country" not in matrix


def test_the_service_checks_todays_consent(tiny_tables: Tables) -> None:
    """Today: a moved to France, b granted consent again (Feb 5), c has only the customers table's
    values; the features at Feb 1 say UK, withdrawn, unknown."""
    features = build_features(tiny_tables, "2024-02-01")
    current = current_attributes(tiny_tables).set_index("customer_id")
    assert current.loc["a", "country"] == "France" and bool(current.loc["b", "email_consent"])
    signals = with_current_attributes(features[["customer_id", *signal_features()]], current.reset_index())
    signals = signals.set_index("customer_id")
    assert [signals.loc[c, "country"] for c in "abc"] == ["France", "Germany", "France"]
    assert [bool(signals.loc[c, "email_consent"]) for c in "abc"] == [True, True, True]
    # the customers table leaves a value empty: the latest change on record stands in
    frames = {t: tiny_tables.frame(t) for t in ("orders", "customers", "events", "products", "customer_changes")}
    frames["customers"]["email_consent"] = frames["customers"]["email_consent"].astype("boolean")
    frames["customers"].loc[frames["customers"]["customer_id"] == "b", "email_consent"] = pd.NA
    assert bool(current_attributes(Tables.from_frames(**frames)).set_index("customer_id").loc["b", "email_consent"])
    frames["customer_changes"] = frames["customer_changes"].iloc[:-1]  # b's last change: withdrawn (Jan 25)
    assert not current_attributes(Tables.from_frames(**frames)).set_index("customer_id").loc["b", "email_consent"]


# -- a model trained under other feature settings ---------------------------------------------------


@pytest.fixture(scope="module")
def other_model(demo_tables: Tables, tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlruns = tmp_path_factory.mktemp("mlruns")
    configure_tracking(mlruns)
    result = train_classifier(demo_tables, Target.PURCHASED, AS_OF, mlruns=mlruns, feature_config=OTHER)
    yield result.bundle
    mp.undo()


def test_a_model_records_its_settings_and_scoring_uses_them(other_model, demo_tables: Tables) -> None:
    assert FeatureConfig.from_dict(other_model.meta["feature_config"]) == OTHER
    assert {"orders_14d", "emails_sent_10d", "cart_abandoned_3d"} <= set(other_model.columns)
    assert not {"orders_30d", "emails_sent_7d"} & set(other_model.columns)
    scores, _ = score_customers(demo_tables, AS_OF, other_model, other_model)
    assert scores["purchase_probability"].between(0, 1).all() and scores["reason_1"].notna().mean() > 0.5


def test_todays_customers_table_changes_no_past_score(other_model, demo_tables: Tables) -> None:
    frames = {t: demo_tables.frame(t) for t in ("orders", "customers", "events", "products", "customer_changes")}
    flipped = frames | {"customers": frames["customers"].assign(email_consent=~frames["customers"]["email_consent"],
                                                                 country="Atlantis")}
    base, _ = score_customers(demo_tables, AS_OF, other_model, other_model)
    after, _ = score_customers(Tables.from_frames(**flipped), AS_OF, other_model, other_model)
    pd.testing.assert_frame_equal(base, after)
    # while the same flip in the history does reach the model's input: the check above could have failed
    moved = frames | {"customer_changes": frames["customer_changes"].assign(
        value=lambda f: f["value"].map({"true": "false", "false": "true"}).fillna(f["value"]))}
    x_base = other_model.matrix(build_features(demo_tables.before(datetime(2025, 10, 1)), AS_OF, OTHER))
    x_moved = other_model.matrix(build_features(Tables.from_frames(**moved).before(datetime(2025, 10, 1)), AS_OF,
                                                OTHER))
    consent = other_model.columns.index("email_consent")
    assert np.nanmean(x_base[:, consent]) > 0.7 and np.nanmean(x_moved[:, consent]) < 0.3


def test_the_service_refuses_models_trained_under_other_settings(other_model, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENDWISE_FEATURE_CONFIG", raising=False)
    with pytest.raises(NotReadyError, match="trained with other feature settings .* set SENDWISE_FEATURE_CONFIG"):
        serving_feature_config([other_model])
    settings = tmp_path / "features.yaml"
    settings.write_text("order_windows_days: [14, 60]\nemail_windows_days: [10]\nbrowse_windows_days: [2]\n"
                        "abandoned_cart_days: [3]\nintent_window_days: 10\n"
                        "intent_weights: {view: 1, add_to_cart: 2, purchase: 4}\n")
    monkeypatch.setenv("SENDWISE_FEATURE_CONFIG", str(settings))
    assert serving_feature_config([other_model]) == OTHER
    assert {"emails_sent_10d", "views_2d", "cart_abandoned_3d"} <= set(signal_features(OTHER))
    old = SimpleNamespace(meta={}, target="churned")  # a model from before settings were recorded: defaults
    with pytest.raises(NotReadyError, match="churned model"):
        serving_feature_config([old])


def test_a_snapshot_built_under_other_settings_is_refused(tiny_tables: Tables) -> None:
    snapshot = build_features(tiny_tables, "2024-02-01")  # default windows
    where = SimpleNamespace(snapshot=Path("snap.parquet"), data=Path("data"))
    check_snapshot(snapshot, FeatureConfig(), where)
    with pytest.raises(NotReadyError, match="lacks the columns emails_sent_10d, views_2d.*features snapshot"):
        check_snapshot(snapshot, OTHER, where)
