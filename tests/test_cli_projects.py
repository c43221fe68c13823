"""Every command reads the project: ``--project DIR``, or the current directory when it holds
sendwise.yaml; options given win; without a project and without --data a command says both ways."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from features.io import load_data_dir
from features.snapshot import read_snapshot, snapshot_as_of
from sendwise.cli import app
from sendwise.console import console
from sendwise.project import PROJECT_FILE, load_project
from training.registry import CHALLENGER

runner = CliRunner()


def run(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # rich wraps at the console's width


def fails(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    return " ".join(result.output.split())


@pytest.fixture
def project(demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project over the generated shop (400 customers), with few monthly folds to keep training short
    and a churn horizon of its own (60 days);
    the tests run in an empty folder, so that nothing can come from the current directory by accident."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SENDWISE_FEATURE_CONFIG", raising=False)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    run("init", tmp_path / "shop", "--data", demo_dir, "--name", "shop-a")
    file = tmp_path / "shop" / PROJECT_FILE
    settings = yaml.safe_load(file.read_text())
    settings["run"] |= {"periods": 6, "churn_horizon_days": 60}
    file.write_text(yaml.safe_dump(settings))
    return tmp_path / "shop"


def test_data_commands_read_the_project_given_or_here(project: Path, demo_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = run("data", "validate", "--project", project)
    assert "orders" in out and "loaded" in out
    run("features", "snapshot", "--project", project)  # default --out: the project's snapshot
    features, meta = read_snapshot(project / "state" / "snapshot.parquet")
    tables, _ = load_data_dir(demo_dir, None)
    assert pd.Timestamp(meta["as_of"]) == pd.Timestamp(snapshot_as_of(tables)) and len(features) > 300

    monkeypatch.chdir(project)  # no --project: the current directory's sendwise.yaml
    out = run("features", "build", "--as-of", "2025-09-01", "--out", "f.parquet")
    assert "at 2025-09-01 written to f.parquet" in out  # ISO 8601, not 2025-09-01 00:00:00
    assert (pd.read_parquet(project / "f.parquet")["as_of"] == pd.Timestamp("2025-09-01")).all()
    out = run("features", "training-set", "--target", "purchased", "--periods", "2", "--out", "t.parquet")
    assert pd.read_parquet(project / "t.parquet")["as_of"].nunique() == 2
    assert "00:00:00" not in out


def test_a_flag_overrides_the_project(project: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    run("data", "generate", "--customers", "60", "--seed", "3", "--products", "20", "--out", other)
    run("features", "build", "--project", project, "--data", other, "--as-of", "2025-09-01",
        "--out", tmp_path / "f.parquet")
    assert len(pd.read_parquet(tmp_path / "f.parquet")) <= 60  # the other shop's customers, not the project's 400
    run("features", "snapshot", "--project", project, "--out", tmp_path / "s.parquet")
    assert (tmp_path / "s.parquet").exists() and not (project / "state" / "snapshot.parquet").exists()


def test_a_bad_project_is_named(tmp_path: Path) -> None:
    out = fails("features", "build", "--project", tmp_path, "--as-of", "2025-09-01", "--out", tmp_path / "f.parquet")
    assert f"{tmp_path / PROJECT_FILE} does not exist" in out and "sendwise init" in out


@pytest.mark.parametrize("command", [
    ["data", "validate"],
    ["features", "build", "--as-of", "2025-09-01", "--out", "f.parquet"],
    ["features", "snapshot", "--out", "s.parquet"],
    ["train", "churn", "--as-of", "2025-09-01"],
    ["train", "recommender", "--as-of", "2025-09-01"],
    ["score", "--out", "s.csv"],
    ["recommend", "--out", "r.csv"],
    ["evaluate", "recommender", "--as-of", "2025-09-01"],
    ["experiments", "analyze", "welcome"],
    ["privacy", "export", "c1", "--no-mlruns", "--no-exposure-log"],
])
def test_without_project_or_data_the_error_names_both(command: list[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = fails(*command)
    assert "pass --data DIR" in out and "--project DIR" in out, out


def narrow(*args: object) -> str:
    """The command's output in an 80-column terminal: no line of ours wider, no cell cut off."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    ours = [line for line in result.stdout.splitlines()  # not the libraries' warnings; the copyable paths aside
            if not line.startswith(("plots: ", "open with: "))]
    assert not [line for line in ours if len(line) > 80 or "…" in line], result.output
    return " ".join(result.output.split())


def test_train_score_and_recommend_with_a_project(project: Path, tmp_path: Path, demo_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "width", 80)
    out = narrow("train", "churn", "--project", project, "--as-of", "2025-10-01")
    assert "registered as shop-a.churn v1" in out
    uri = f"sqlite:///{project.resolve() / 'mlruns' / 'mlflow.db'}"
    assert "plots: " in out and "/plots" in out and f"open with: mlflow ui --backend-store-uri {uri}" in out
    run("train", "propensity", "--project", project, "--as-of", "2025-10-01", "--trials", "0")
    assert not (tmp_path / "elsewhere" / "mlruns").exists()  # the project's store, not ./mlruns
    load_project(project).use_tracking()
    client = MlflowClient()
    churn = client.get_model_version_by_alias("shop-a.churn", CHALLENGER)
    assert churn.tags["sendwise.project"] == "shop-a"
    assert client.get_run(churn.run_id).data.params["horizon_days"] == "60"  # the project's run settings

    out = narrow("models", "list", "--project", project)
    assert "shop-a.churn" in out and "shop-a.propensity" in out and "roc_auc" in out
    out = narrow("score", "--project", project, "--out", tmp_path / "scores.csv")  # no --as-of: the data's end
    tables, _ = load_data_dir(demo_dir, None)
    end = snapshot_as_of(tables)
    assert f"scored at {end:%Y-%m-%dT%H:%M:%S}" in out
    assert "emailable:" in out and "under consent rule recorded" in out
    assert len(pd.read_csv(tmp_path / "scores.csv")) > 300
    out = run("score", "--project", project, "--out", tmp_path / "s2.csv", "--consent", "unless-refused",
              "--as-of", "2025-10-01")
    assert "scored at 2025-10-01 " in out and "under consent rule unless-refused" in out

    out = narrow("train", "recommender", "--project", project, "--as-of", "2025-10-01", "--model", "itemknn")
    assert "shop-a.recommender v1 (itemknn)" in out and "plots: " in out
    out = run("recommend", "--project", project, "--out", tmp_path / "recs.csv", "--k", "3")
    assert "with shop-a.recommender v1 (itemknn)" in out and f"at {end:%Y-%m-%dT%H:%M:%S}" in out
    assert pd.read_csv(tmp_path / "recs.csv").groupby("customer_id").size().eq(3).all()


EXPERIMENT = ("experiments: [{name: welcome, start: 2025-01-01, end: 2025-02-01T12:30, "
              "variants: [{name: a, weight: 0.5}, {name: b, weight: 0.5}]}]\n")


def test_experiments_read_the_projects_file(project: Path, tmp_path: Path) -> None:
    (project / "exp.yaml").write_text(EXPERIMENT)  # relative to the project folder
    file = project / PROJECT_FILE
    file.write_text(file.read_text() + "experiments: exp.yaml\n")
    out = run("experiments", "validate", "--project", project)
    assert f"{project.resolve() / 'exp.yaml'}: 1 experiments" in out
    assert "2025-01-01 " in out and "2025-02-01T12:30:00" in out  # ISO 8601
    (tmp_path / "other.yaml").write_text(EXPERIMENT.replace("welcome", "other"))
    out = run("experiments", "validate", "--project", project, "--config", tmp_path / "other.yaml")
    assert "other" in out and "welcome" not in out
    out = fails("experiments", "analyze", "welcome", "--project", project, "--no-mlflow")
    assert f"exposure log {project.resolve() / 'state' / 'exposures.jsonl'} does not exist" in out


def test_privacy_uses_the_projects_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    run("data", "generate", "--customers", "40", "--seed", "5", "--products", "15", "--out", "tables")
    run("init", "p", "--data", "tables")
    run("features", "snapshot", "--project", "p")  # p/state/snapshot.parquet holds every customer
    who = pd.read_parquet(tmp_path / "p" / "state" / "snapshot.parquet")["customer_id"].iloc[0]
    out = fails("privacy", "export", who, "--project", "p")
    assert f"MLflow store {tmp_path.resolve() / 'p' / 'mlruns'} does not exist" in out  # the project's, not ./mlruns
    result = runner.invoke(app, ["privacy", "export", who, "--project", "p", "--no-mlruns", "--no-exposure-log"])
    assert result.exit_code == 0 and f'"customer_id": "{who}"' in result.output, result.output
    out = run("privacy", "forget", who, "--project", "p", "--no-mlruns", "--no-exposure-log")
    assert "snapshot.parquet" in out  # the project's state folder is searched
    assert who not in set(pd.read_parquet(tmp_path / "p" / "state" / "snapshot.parquet")["customer_id"])


def test_the_projects_time_zone_reads_naive_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Orders at 08:00 on Jan 1 and Jan 10 in Tokyo are 23:00 UTC the day before: at 2024-01-09T23:30Z the
    Tokyo shop's customer has 2 orders; read as UTC, the Jan 10 order (08:00 UTC) is still to come."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "orders.csv").write_text(
        "order_id,customer_id,product_id,quantity,unit_price,ordered_at\n"
        "o1,c1,p1,1,5.0,2024-01-01 08:00:00\no2,c1,p1,1,5.0,2024-01-10 08:00:00\n")
    run("init", "tokyo", "--data", "tables", "--timezone", "Asia/Tokyo")
    as_of = ["--as-of", "2024-01-09T23:30Z"]
    run("features", "build", "--project", "tokyo", *as_of, "--out", "tokyo.parquet")
    run("features", "build", "--data", "tables", *as_of, "--out", "utc.parquet")  # no project: UTC
    assert pd.read_parquet(tmp_path / "tokyo.parquet")["orders_count"].tolist() == [2]
    assert pd.read_parquet(tmp_path / "utc.parquet")["orders_count"].tolist() == [1]


def test_the_service_settings_of_a_project_include_its_clock_segments_and_event_log(project: Path) -> None:
    from sendwise.project import serve_settings
    from serving.clock import ClockMode
    from serving.config import ServeConfig

    found = load_project(project)
    assert serve_settings(found)["segments"] is None  # no segments.yaml yet
    (project / "segments.yaml").write_text("segments:\n  - {name: regulars, when: 'orders_count >= 2'}\n")
    settings = yaml.safe_load((project / PROJECT_FILE).read_text())
    settings["serve"] |= {"clock": "data"}
    (project / PROJECT_FILE).write_text(yaml.safe_dump(settings))
    config = ServeConfig(**serve_settings(load_project(project)))
    assert config.segments == project / "segments.yaml" and config.clock is ClockMode.DATA
    assert config.events_path == project / "state" / "events.jsonl"
    settings["serve"] |= {"clock": "sundial"}
    (project / PROJECT_FILE).write_text(yaml.safe_dump(settings))
    assert "serve.clock" in fails("models", "list", "--project", project)
