"""Projects and `sendwise run`: init writes a project, run backtests, refits through the data's end,
registers and promotes per project, writes the snapshot and the report; a lock and exit codes a
scheduler can act on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from features.io import load_data_dir
from features.training_set import data_end
from sendwise.cli import app
from sendwise.project import PROJECT_FILE, find_project, load_project
from sendwise.run import ExitCode, run_lock
from training.model import XGBOOST
from training.registry import CHAMPION

runner = CliRunner()


@pytest.fixture
def project_dir(demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project over the generated shop, with few monthly folds to keep the runs short."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = runner.invoke(app, ["init", str(tmp_path / "shop"), "--data", str(demo_dir), "--name", "shop-a"])
    assert result.exit_code == 0, result.output
    file = tmp_path / "shop" / PROJECT_FILE
    settings = yaml.safe_load(file.read_text())
    settings["run"]["periods"] = 4
    file.write_text(yaml.safe_dump(settings))
    return tmp_path / "shop"


def test_init_writes_a_commented_project_and_never_overwrites_it(demo_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", str(tmp_path / "p"), "--data", str(demo_dir)])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "p" / PROJECT_FILE).read_text()
    assert text.startswith("# sendwise project") and "consent: recorded" in text
    project = load_project(tmp_path / "p")
    assert project.name == "p" and project.data == demo_dir.resolve()
    again = runner.invoke(app, ["init", str(tmp_path / "p"), "--data", str(demo_dir)])
    assert again.exit_code == 2 and "already exists" in again.output
    assert (tmp_path / "p" / PROJECT_FILE).read_text() == text


@pytest.mark.parametrize(("content", "message"), [
    ("nmae: x\n", "nmae"),
    ("timezone: Mars/Olympus\n", "Mars/Olympus"),
    ("run: {recommender: magic}\n", "run.recommender"),
    ("links: {product_url: 'javascript:alert(1)'}\n", "links.product_url"),
])
def test_a_bad_setting_is_named(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / PROJECT_FILE).write_text(content)
    result = runner.invoke(app, ["run", "--project", str(tmp_path)])
    assert result.exit_code == ExitCode.USER_ERROR
    assert message in result.output and PROJECT_FILE in result.output


def test_init_needs_exactly_one_data_source(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", str(tmp_path / "p")])
    assert result.exit_code == 2 and "exactly one of --data" in result.output
    assert not (tmp_path / "p" / PROJECT_FILE).exists()


def test_run_refits_every_model_through_the_data_end_and_reports(project_dir: Path) -> None:
    first = runner.invoke(app, ["run", "--project", str(project_dir)])
    assert first.exit_code == ExitCode.OK, first.output
    assert "emailable:" in first.output and "under consent rule recorded" in first.output
    project = load_project(project_dir)
    project.use_tracking()
    tables, _ = load_data_dir(project.data)
    end = data_end(tables)
    client = MlflowClient()
    versions = {}
    for model in ("churn", "propensity", "recommender"):
        champion = client.get_model_version_by_alias(f"shop-a.{model}", CHAMPION)
        assert champion.tags["sendwise.project"] == "shop-a"
        assert champion.tags["sendwise.trained_through"] == end.isoformat()
        versions[model] = champion.version
    assert project.snapshot.exists()
    reports = sorted(project.reports.glob("run-*.html"))
    assert len(reports) == 1 and "data:image/png;base64," in reports[0].read_text()
    # the kind shipped and why, and the CLV model the churn model carries: in the output and in score
    assert "validation ROC-AUC" in first.output and "CLV: BG/NBD and Gamma-Gamma" in first.output
    scored = runner.invoke(app, ["score", "--project", str(project_dir), "--out", str(project_dir / "s.csv")])
    assert scored.exit_code == ExitCode.OK and "lifetime value over" in scored.output, scored.output
    shorter = runner.invoke(app, ["score", "--project", str(project_dir), "--out", str(project_dir / "s90.csv"),
                                  "--clv-horizon", "30"])
    assert shorter.exit_code == ExitCode.OK and "lifetime value over 30 days" in shorter.output, shorter.output
    year, month = (pd.read_csv(project_dir / f).set_index("customer_id") for f in ("s.csv", "s90.csv"))
    buyers = year["predicted_clv"].notna()
    assert buyers.any() and (year.loc[buyers, "predicted_clv"] >= month.loc[buyers, "predicted_clv"]).all()
    assert (year.loc[buyers, "predicted_clv"] > month.loc[buyers, "predicted_clv"]).any()

    second = runner.invoke(app, ["run", "--project", str(project_dir)])
    assert second.exit_code == ExitCode.OK, second.output
    assert "same recipe as champion" in second.output
    for model, version in versions.items():  # the same recipe, refreshed: a new version serves
        assert int(client.get_model_version_by_alias(f"shop-a.{model}", CHAMPION).version) > int(version)
    latest = max(project.reports.glob("run-*.html")).read_text()
    assert "last run&#39;s challenger" in latest or "last run's challenger" in latest


def test_a_second_run_waits_for_the_first(project_dir: Path) -> None:
    with run_lock(load_project(project_dir)):
        result = runner.invoke(app, ["run", "--project", str(project_dir)])
    assert result.exit_code == ExitCode.LOCKED
    assert "another `sendwise run`" in result.output and "run.lock" in result.output


def test_a_failed_model_keeps_its_champion_and_the_rest_is_done(project_dir: Path, tmp_path: Path) -> None:
    file = project_dir / PROJECT_FILE
    settings = yaml.safe_load(file.read_text())
    settings["run"]["churn_horizon_days"] = 700  # longer than the data: churn cannot be backtested
    file.write_text(yaml.safe_dump(settings))
    result = runner.invoke(app, ["run", "--project", str(project_dir)])
    assert result.exit_code == ExitCode.MODEL_FAILED, result.output
    assert "churn failed" in result.output
    project = load_project(project_dir)
    project.use_tracking()
    client = MlflowClient()
    assert client.get_model_version_by_alias("shop-a.propensity", CHAMPION)
    assert not client.search_model_versions("name = 'shop-a.churn'")
    assert project.snapshot.exists()


def test_run_needs_a_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run"])
    assert result.exit_code == ExitCode.USER_ERROR and "--project" in result.output


def test_the_project_in_the_current_directory_is_found(project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project_dir)
    assert find_project(None).name == "shop-a"
    monkeypatch.chdir(project_dir.parent)
    assert find_project(None) is None


def test_a_new_recipe_is_backtested_against_the_champions_on_one_holdout(project_dir: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # XGBoost the only candidate, so that the trials below change both classifiers' recipes (on this small
    # shop BG/NBD wins churn's validation month, and its recipe has no parameters for trials to change)
    monkeypatch.setattr("training.retrain.candidate_kinds", lambda label: (XGBOOST,))
    assert runner.invoke(app, ["run", "--project", str(project_dir)]).exit_code == ExitCode.OK
    file = project_dir / PROJECT_FILE
    settings = yaml.safe_load(file.read_text())
    settings["run"] |= {"trials": 2, "recommender": "itemknn"}  # other parameters, another recommender
    file.write_text(yaml.safe_dump(settings))
    second = runner.invoke(app, ["run", "--project", str(project_dir)])
    assert second.exit_code == ExitCode.OK, second.output
    backtests = [line for line in second.output.splitlines() if line.startswith("backtest at")]
    assert len(backtests) == 3 and all("champion 0." in line for line in backtests)  # both on one holdout
    project = load_project(project_dir)
    report = max(project.reports.glob("run-*.html")).read_text()
    assert report.count("Paired bootstrap, challenger minus champion") == 3
    project.use_tracking()
    client = MlflowClient()
    tables, _ = load_data_dir(project.data)
    for model in ("churn", "propensity", "recommender"):
        champion = client.get_model_version_by_alias(f"shop-a.{model}", CHAMPION)
        challenger = client.get_model_version_by_alias(f"shop-a.{model}", "challenger")
        assert int(challenger.version) == 2  # the new recipe, refitted, is registered whatever it scored
        assert int(champion.version) >= 2  # the winner's recipe, refitted through the data's end, serves
        assert champion.tags["sendwise.trained_through"] == data_end(tables).isoformat()


def test_a_project_folder_with_a_quote_and_a_space_in_its_path(tmp_path: Path) -> None:
    folder, tables = tmp_path / "bob's shop", tmp_path / "bob's tables"
    tables.mkdir()
    (tables / "orders.csv").write_text("order_id,customer_id,product_id,quantity,unit_price,ordered_at\n"
                                       "o1,c1,p1,1,9.5,2024-01-02T10:00:00\no2,c1,p1,1,9.5,2099-01-03T10:00:00\n")
    refused = runner.invoke(app, ["init", str(folder), "--data", str(tables)])
    assert refused.exit_code == 2 and "not valid" in refused.output and "--name" in refused.output
    assert not folder.exists()  # a bad name fails before anything is written
    result = runner.invoke(app, ["init", str(folder), "--data", str(tables), "--name", "bobs"])
    assert result.exit_code == 0, result.output
    assert "2099-01-03" in (folder / "state" / "rejects" / "orders.csv").read_text()  # rejects written under the quote


def test_two_projects_in_one_process_keep_their_own_stores(tmp_path: Path, demo_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name, uri in (("a", "sqlite:///store/mlflow.db"), ("b", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / PROJECT_FILE).write_text(yaml.safe_dump({"data": str(demo_dir), "tracking_uri": uri}))
    (tmp_path / "a" / "store").mkdir()
    a_uri = f"sqlite:///{(tmp_path / 'a').resolve()}/store/mlflow.db"  # relative to the project's folder
    for _ in range(2):  # either order, each project its own store
        assert find_project(tmp_path / "a").use_tracking() == a_uri
        assert find_project(tmp_path / "b").use_tracking() == f"sqlite:///{(tmp_path / 'b').resolve()}/mlruns/mlflow.db"


def test_new_feature_settings_replace_the_champions_and_the_service_starts(project_dir: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from sendwise.commands.serve import preflight
    from sendwise.project import apply_feature_settings, serve_settings
    from serving.config import ServeConfig

    assert runner.invoke(app, ["run", "--project", str(project_dir)]).exit_code == ExitCode.OK
    (project_dir / "features.yaml").write_text("order_windows_days: [14, 60]\n")
    file = project_dir / PROJECT_FILE
    settings = yaml.safe_load(file.read_text()) | {"feature_config": "features.yaml"}
    file.write_text(yaml.safe_dump(settings))
    second = runner.invoke(app, ["run", "--project", str(project_dir)])
    assert second.exit_code == ExitCode.OK, second.output
    assert second.output.count("other feature settings than the project's") == 2  # churn and propensity
    monkeypatch.setenv("SENDWISE_FEATURE_CONFIG", "other.yaml")  # restored after the test; the project's wins
    project = load_project(project_dir)
    apply_feature_settings(project)
    preflight(ServeConfig(**serve_settings(project)))  # models, snapshot and policy agree: no NotReadyError
