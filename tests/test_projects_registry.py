"""A shop is a project: its registered models carry its name, every version records where its data
came from and how far it goes, nothing registered for another project is served or scored
silently, and ``promote --force`` promotes when no comparison is possible."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from features.errors import InputError
from features.tables import Tables
from features.training_set import Target
from sendwise import pipeline
from sendwise.cli import app
from serving.config import ServeConfig
from serving.state import NotReadyError, catalog_coverage, load_champions
from training.promotion import promote
from training.recommenders.models import make_recommender
from training.recommenders.store import load_registered
from training.recommenders.train import train_recommender
from training.registry import (
    CHALLENGER,
    CHAMPION,
    DATA_TAG,
    FINGERPRINT_TAG,
    PROJECT_TAG,
    TRAINED_THROUGH_TAG,
    ForeignModelError,
    MissingModelError,
    ModelProvenance,
    alias_version,
    check_project_name,
    load_bundle,
    log_and_register,
    registered_name,
)
from training.tracking import configure_tracking
from training.train import train_classifier

AS_OF = "2025-10-01"
MODELS = ("churn", "propensity", "recommender")


def test_names_are_todays_without_a_project_and_prefixed_with_one() -> None:
    assert [registered_name(m, None) for m in MODELS] == ["churn", "propensity", "recommender"]
    assert registered_name("churn", "shop-a") == "shop-a.churn"
    assert registered_name("recommender", "A_1") == "A_1.recommender"
    assert check_project_name("x" * 64) == "x" * 64


@pytest.mark.parametrize("bad", ["", "-shop", "_shop", "shop.a", "shop a", "x" * 65, "café", "a/b", "shop\n"])
def test_a_project_name_outside_the_rule_is_refused_naming_value_and_rule(bad: str, demo_dir: Path) -> None:
    rule = re.escape("^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    with pytest.raises(InputError, match=rf"project name {re.escape(repr(bad))} .*{rule}"):
        registered_name("churn", bad)
    if bad:  # an empty setting is refused as empty
        with pytest.raises(InputError, match=rf"--project: .*{rule}"):
            ServeConfig.from_env(data=demo_dir, project=bad)


def test_the_project_setting_round_trips_through_the_environment(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    given = ServeConfig(data=tmp_path, mlruns=tmp_path / "mlruns", exposure_log=tmp_path / "log.jsonl",
                        project="shop-a", allow_foreign_models=True)
    assert given.to_env()["SENDWISE_PROJECT"] == "shop-a"
    assert given.to_env()["SENDWISE_ALLOW_FOREIGN_MODELS"] == "true"
    for name, value in given.to_env().items():
        monkeypatch.setenv(name, value)
    assert ServeConfig.from_env() == given
    assert "SENDWISE_PROJECT" not in ServeConfig(data=tmp_path).to_env()


def test_a_recommender_that_knows_under_half_the_catalog_is_named(tiny_frames: dict) -> None:
    model = make_recommender("popular").fit_tables(Tables.from_frames(**tiny_frames), pd.Timestamp("2024-02-01"))
    assert catalog_coverage(model, Tables.from_frames(**tiny_frames)) is None  # knows p1 and p2 of 2
    products = tiny_frames["products"]
    more = pd.concat([products, products.assign(product_id=lambda f: f["product_id"] + "x"),
                      products.assign(product_id=lambda f: f["product_id"] + "y")], ignore_index=True)
    warning = catalog_coverage(model, Tables.from_frames(**(tiny_frames | {"products": more})))
    assert warning.startswith("the recommender knows 2 of the catalog's 6 product ids (33%): trained on other data?")


def test_provenance_of_a_version_without_tags_is_no_project() -> None:
    """Versions registered before the tags existed belong to no project."""
    assert ModelProvenance.from_tags({}) == ModelProvenance(None, None, None, None)
    assert ModelProvenance.from_tags({PROJECT_TAG: ""}).project is None
    tags = {PROJECT_TAG: "shop", FINGERPRINT_TAG: "abc", TRAINED_THROUGH_TAG: "2025-09-30T12:00:00", DATA_TAG: "/d"}
    provenance = ModelProvenance.from_tags(tags)
    assert provenance == ModelProvenance("shop", "abc", "2025-09-30T12:00:00", "/d")
    assert provenance.tags() == tags
    assert ModelProvenance(None, "abc", None, None).tags() == {PROJECT_TAG: "", FINGERPRINT_TAG: "abc"}


@pytest.fixture(scope="module")
def shop(demo_tables: Tables, demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Churn, propensity and an item-kNN recommender trained for project ``shop-a`` before AS_OF;
    the working directory holds the MLflow store (``mlruns``), as the commands expect."""
    root = tmp_path_factory.mktemp("projects")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.chdir(root)
    mlruns = root / "mlruns"
    configure_tracking(mlruns)
    source = str(demo_dir.resolve())
    for target in Target:
        train_classifier(demo_tables, target, AS_OF, mlruns=mlruns, project="shop-a", data_source=source)
    train_recommender(demo_tables, AS_OF, "itemknn", mlruns=mlruns, project="shop-a", data_source=source)
    yield mlruns
    mp.undo()


def latest_row_before(tables: Tables, cutoff: str) -> pd.Timestamp:
    """The latest timestamp of any row before ``cutoff``: orders, events, signups, attribute changes."""
    times = [tables.frame(t)[c] for t, c in (("orders", "ordered_at"), ("events", "occurred_at"),
                                             ("customers", "signup_at"), ("customer_changes", "changed_at"))]
    return max(s[s < pd.Timestamp(cutoff)].max() for s in times if s.notna().any())


def test_every_version_records_project_data_fingerprint_and_how_far_its_data_goes(
        shop: Path, demo_tables: Tables, demo_dir: Path) -> None:
    cut = demo_tables.before(datetime(2025, 10, 1))
    latest = latest_row_before(demo_tables, AS_OF)
    assert pd.Timestamp("2025-09-29") < latest < pd.Timestamp(AS_OF)  # the demo shop is busy every day
    expected = {PROJECT_TAG: "shop-a", FINGERPRINT_TAG: cut.fingerprint(), TRAINED_THROUGH_TAG: latest.isoformat(),
                DATA_TAG: str(demo_dir.resolve())}
    client = MlflowClient()
    for model in MODELS:
        assert client.get_model_version(f"shop-a.{model}", "1").tags == expected
        assert alias_version(model, CHAMPION, project="shop-a") == "1"
    assert not {m.name for m in client.search_registered_models()} & set(MODELS)  # no global name was touched
    bundle = load_bundle("churn", project="shop-a")
    assert {k: bundle.meta[k] for k in ("version", "project", "data_fingerprint", "trained_through")} == {
        "version": "1", "project": "shop-a", "data_fingerprint": cut.fingerprint(),
        "trained_through": latest.isoformat()}
    loaded = load_registered(project="shop-a")
    assert loaded.version == "1" and loaded.model.kind == "itemknn"
    assert loaded.provenance == ModelProvenance("shop-a", cut.fingerprint(), latest.isoformat(),
                                                str(demo_dir.resolve()))
    with pytest.raises(MissingModelError, match="no 'shop-b.churn' model has the alias 'champion'"):
        load_bundle("churn", project="shop-b")


def test_log_and_register_takes_provenance_from_the_caller(shop: Path) -> None:
    """A later refit (``sendwise run``) says itself how far its data goes; the project is the name's."""
    base = load_bundle("churn", project="shop-a")
    examples = pd.DataFrame(columns=base.columns, data=[[0.0] * len(base.columns)])
    with mlflow.start_run(run_name="refit"):
        version = log_and_register(base, "shop-z.churn", examples, base.predict_proba(examples),
                                   provenance={TRAINED_THROUGH_TAG: "2025-12-31T23:59:00", FINGERPRINT_TAG: "f"})
        with pytest.raises(InputError, match="'shop-z.churn'.*project 'other'"):
            log_and_register(base, "shop-z.churn", examples, base.predict_proba(examples),
                             provenance={PROJECT_TAG: "other"})
    assert MlflowClient().get_model_version("shop-z.churn", version).tags == {
        PROJECT_TAG: "shop-z", TRAINED_THROUGH_TAG: "2025-12-31T23:59:00", FINGERPRINT_TAG: "f"}


def copy_version(source: str, target: str, tags: dict[str, str], alias: str = CHAMPION) -> str:
    """Register ``source``'s champion again as ``target`` with ``tags`` (and ``alias``)."""
    client = MlflowClient()
    mv = client.get_model_version_by_alias(source, CHAMPION)
    try:
        client.create_registered_model(target)
    except MlflowException:
        pass
    version = client.create_model_version(target, mv.source, mv.run_id, tags=tags).version
    client.set_registered_model_alias(target, alias, version)
    return str(version)


def test_serving_another_projects_models_is_refused_unless_allowed(shop: Path, demo_dir: Path) -> None:
    tags = MlflowClient().get_model_version("shop-a.churn", "1").tags
    for model in MODELS:
        copy_version(f"shop-a.{model}", f"shop-b.{model}", tags)  # shop-a's models under shop-b's names
    config = ServeConfig(data=demo_dir, mlruns=shop, project="shop-b")
    with pytest.raises(NotReadyError, match=r"'shop-b.churn' version 1 was registered for project 'shop-a', not for "
                                            r"project 'shop-b'.*SENDWISE_ALLOW_FOREIGN_MODELS=true"):
        load_champions(config)
    allowed = load_champions(config.model_copy(update={"allow_foreign_models": True}))
    assert allowed.recommender.kind == "itemknn" and allowed.churn.meta["project"] == "shop-a"
    assert len(allowed.warnings) == 3 and "registered for project 'shop-a'" in allowed.warnings[0]
    assert allowed.provenance["recommender"].project == "shop-a"
    # a version registered before the tags belongs to no project: refused for a named project
    MlflowClient().set_registered_model_alias("shop-b.churn", CHAMPION, copy_version("shop-a.churn", "shop-b.churn", {}))
    with pytest.raises(NotReadyError, match=r"'shop-b.churn' version 2 was registered for no project, not for "
                                            r"project 'shop-b'"):
        load_champions(config)
    assert load_champions(ServeConfig(data=demo_dir, mlruns=shop, project="shop-a")).warnings == []


def test_without_a_project_models_of_other_data_are_served_with_a_warning(shop: Path, demo_dir: Path,
                                                                           tmp_path: Path, capsys) -> None:
    tags = {PROJECT_TAG: "", DATA_TAG: "/elsewhere/demo-shop", FINGERPRINT_TAG: "0" * 16}
    for model in MODELS:
        copy_version(f"shop-a.{model}", model, tags)
    champions = load_champions(ServeConfig(data=demo_dir, mlruns=shop))
    assert len(champions.warnings) == 3
    assert "/elsewhere/demo-shop" in champions.warnings[0] and str(demo_dir.resolve()) in champions.warnings[0]
    pipeline.score(demo_dir, datetime(2025, 10, 1), tmp_path / "scores.csv")
    out = " ".join(capsys.readouterr().out.split())
    assert "trained on data in /elsewhere/demo-shop" in out and str(demo_dir.resolve()) in out
    assert (tmp_path / "scores.csv").exists()
    # a model of a project, scored without one: refused unless allowed
    with pytest.raises(ForeignModelError, match=r"'shop-b.churn' version 2 was registered for no project, not for "
                                                r"project 'shop-b'.*allow_foreign_models"):
        pipeline.score(demo_dir, datetime(2025, 10, 1), tmp_path / "b.csv", project="shop-b")
    pipeline.recommend(demo_dir, datetime(2025, 10, 1), tmp_path / "recs.csv", project="shop-a")
    with pytest.raises(ForeignModelError, match=r"'shop-b.recommender' version 1 was registered for project 'shop-a'"):
        pipeline.recommend(demo_dir, datetime(2025, 10, 1), tmp_path / "recs.csv", project="shop-b")
    pipeline.recommend(demo_dir, datetime(2025, 10, 1), tmp_path / "recs.csv", project="shop-b",
                       allow_foreign_models=True)


def test_serve_preflight_warns_of_models_of_other_data_and_refuses_foreign_ones(
        shop: Path, demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(after the test above registered the global names with another data directory)"""
    started = []
    monkeypatch.setattr("sendwise.commands.serve.os.execve", lambda *args: started.append(args))
    monkeypatch.setattr("sendwise.commands.serve.os.chdir", lambda _: None)
    serve = ["serve", "--data", str(demo_dir), "--mlruns", str(shop), "--port", "1"]
    result = CliRunner().invoke(app, serve)
    out = " ".join(result.output.split())
    assert result.exit_code == 0 and len(started) == 1, result.output
    assert out.count("warning: '") == 3 and "trained on data in /elsewhere/demo-shop" in out
    assert "product ids" not in out  # the recommender knows the catalog
    monkeypatch.setenv("SENDWISE_PROJECT", "shop-b")
    result = CliRunner().invoke(app, serve)
    assert result.exit_code == 2 and "registered for no project, not for project 'shop-b'" in result.output
    assert "SENDWISE_ALLOW_FOREIGN_MODELS=true" in " ".join(result.output.split()) and len(started) == 1
    monkeypatch.setenv("SENDWISE_ALLOW_FOREIGN_MODELS", "true")
    result = CliRunner().invoke(app, serve)
    assert result.exit_code == 0 and "used anyway (foreign models allowed)" in result.output and len(started) == 2
    assert started[-1][2]["SENDWISE_PROJECT"] == "shop-b"  # the server reads the same settings


def test_models_list_shows_project_fingerprint_and_trained_through(shop: Path, demo_tables: Tables, capsys,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline.console, "width", 300)
    pipeline.list_models(project="shop-a")
    out = capsys.readouterr().out
    fingerprint = demo_tables.before(datetime(2025, 10, 1)).fingerprint()
    assert "Registered models of project shop-a (shop-a.churn, shop-a.propensity, shop-a.recommender)" in out
    rows = [line for line in out.splitlines() if line.startswith("│") and " shop-a " in line]
    assert [next(m for m in MODELS if f" {m} " in r) for r in rows] == list(MODELS)
    assert "baseline: logistic_log_rfm for churn, propensity; popular for recommender" in out
    for row in rows:
        assert fingerprint[:12] in row and fingerprint[:13] not in row
        assert latest_row_before(demo_tables, AS_OF).isoformat()[:19] in row  # to the second
    assert "shop-b." not in out


def test_force_promotes_without_a_comparison_and_says_so(shop: Path, demo_tables: Tables) -> None:
    """Recommender champion and challenger on different as_of dates; a churn challenger that logged
    no holdout scores: no comparison is possible, an error without --force, a promotion with it."""
    train_recommender(demo_tables, "2025-09-01", "itemknn", mlruns=shop, project="shop-a")
    assert (alias_version("recommender", CHAMPION, "shop-a"), alias_version("recommender", CHALLENGER, "shop-a")) \
        == ("1", "2")
    with pytest.raises(MissingModelError, match="evaluated on different holdouts"):
        promote("recommender", project="shop-a")
    decision = promote("recommender", force=True, project="shop-a")
    assert decision.promoted and decision.forced and decision.comparison is None
    assert decision.champion_value is None and decision.challenger_value is None
    assert decision.reason.startswith("forced without a comparison: champion v1 and challenger v2 were evaluated on "
                                      "different holdouts")
    assert alias_version("recommender", CHAMPION, "shop-a") == "2"
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("sendwise-promotions").experiment_id],
                              filter_string="params.model = 'shop-a.recommender'")
    assert len(runs) == 1 and runs[0].data.params["forced"] == "True"
    assert runs[0].data.metrics == {"promoted": 1.0} and runs[0].data.tags["reason"] == decision.reason

    mv = client.get_model_version("shop-a.churn", "1")
    with mlflow.start_run(experiment_id=client.get_run(mv.run_id).info.experiment_id):  # same holdout, no scores
        mlflow.set_tags({k: v for k, v in client.get_run(mv.run_id).data.tags.items()
                         if k in ("holdout_as_of", "data_fingerprint")})
        bare = client.create_model_version("shop-a.churn", mv.source, mlflow.active_run().info.run_id).version
    client.set_registered_model_alias("shop-a.churn", CHALLENGER, bare)
    with pytest.raises(MissingModelError, match="logged no per-customer holdout scores"):
        promote("churn", project="shop-a")
    forced = promote("churn", force=True, project="shop-a")
    assert forced.promoted and forced.comparison is None and "logged no per-customer holdout scores" in forced.reason
    assert alias_version("churn", CHAMPION, "shop-a") == str(bare)
    assert promote("propensity", project="shop-a").reason == "the challenger is already the champion"
