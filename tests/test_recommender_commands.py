"""The recommender commands end to end on generated data, and the protocol on real Online Retail."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.importers.uci_retail import import_online_retail
from features.io import load_data_dir
from features.tables import Tables
from sendwise.cli import app
from training.recommenders.batch import known_customers
from training.recommenders.evaluation import NEW_ITEMS, evaluate
from training.recommenders.models import make_recommender
from training.registry import CHALLENGER, CHAMPION, alias_version
from training.tracking import configure_tracking

runner = CliRunner()


def run(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_train_evaluate_recommend_and_promote(demo_dir: Path, demo_tables: Tables, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # (rich output after a progress bar escapes CliRunner's capture: check effects, not text)
    run("train", "recommender", "--data", demo_dir, "--as-of", "2025-10-01", "--trials", "2")
    run("train", "recommender", "--data", demo_dir, "--as-of", "2025-10-01", "--model", "itemknn")
    configure_tracking()
    assert (alias_version("recommender", CHAMPION), alias_version("recommender", CHALLENGER)) == ("1", "2")
    pyfunc = mlflow.pyfunc.load_model("models:/recommender/2")  # logged as code, not pickled
    known = known_customers(demo_tables, datetime(2025, 10, 1))["customer_id"].iloc[0]
    answer = pyfunc.predict(pd.DataFrame({"customer_id": [known, "nobody"]}))
    assert list(answer["customer_id"]) == [known] * 10 and list(answer["rank"]) == list(range(1, 11))
    listing = run("models", "list", "recommender")
    assert "ndcg" in listing and "popu" in listing  # narrow terminal: rich truncates cells
    run("models", "promote", "recommender", "--margin", "-1")
    assert alias_version("recommender", CHAMPION) == "2"
    run("train", "recommender", "--data", demo_dir, "--as-of", "2025-10-01", "--model", "itemknn", "--k", "5")
    result = runner.invoke(app, ["models", "promote", "recommender", "--margin", "-1"])
    assert result.exit_code == 2 and "train both with the same --k" in " ".join(result.output.split())
    assert alias_version("recommender", CHAMPION) == "2"
    # --force promotes when no comparison is possible: other k, or (after training on newer data) other holdouts
    forced = " ".join(run("models", "promote", "recommender", "--force").split())
    assert "promoted: forced without a comparison: champion v2 logged ndcg_at_10 and challenger v3 ndcg_at_5" in forced
    assert alias_version("recommender", CHAMPION) == "3"
    run("train", "recommender", "--data", demo_dir, "--as-of", "2025-09-01", "--model", "itemknn")
    result = runner.invoke(app, ["models", "promote", "recommender"])
    assert result.exit_code == 2 and "were evaluated on different holdouts" in result.output
    assert alias_version("recommender", CHAMPION) == "3"
    forced = " ".join(run("models", "promote", "recommender", "--force").split())
    assert "not compared" in forced and "promoted: forced without a comparison: champion v3 and challenger v4 " \
        "were evaluated on different holdouts" in forced
    assert alias_version("recommender", CHAMPION) == "4"
    run("evaluate", "recommender", "--data", demo_dir, "--as-of", "2025-10-01")

    target = tmp_path / "recs.parquet"
    run("recommend", "--data", demo_dir, "--as-of", "2026-01-01", "--k", "5", "--out", target,
        "--max-per-category", "2")
    recs = pd.read_parquet(target)
    assert list(recs.columns) == ["customer_id", "rank", "product_id", "score", "source"]
    known = set(known_customers(demo_tables, datetime(2026, 1, 1))["customer_id"])
    assert set(recs["customer_id"]) == known
    assert recs.groupby("customer_id").size().eq(5).all()
    assert set(recs["source"]) <= {"similar-to", "popular"}  # the champion is the item-kNN model


def test_recommend_errors_name_the_problem(demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = runner.invoke(app, ["recommend", "--data", str(demo_dir), "--as-of", "2026-01-01", "--out", "r.csv"])
    assert result.exit_code == 2 and "no 'recommender' model has the alias 'champion'" in result.output
    result = runner.invoke(app, ["recommend", "--data", str(demo_dir), "--as-of", "2026-01-01", "--out", "r.csv",
                                 "--k", "500"])
    assert result.exit_code == 2 and "k must be an int in [1, 100]; got 500" in result.output


def test_real_online_retail_protocol(online_retail_path: Path, tmp_path: Path) -> None:
    """The issue's protocol: as_of 2011-09-09, truth = new products bought to the end of the data."""
    import_online_retail(online_retail_path, tmp_path / "or")
    tables, _ = load_data_dir(tmp_path / "or", None)
    table = evaluate(tables, datetime(2011, 9, 9), {"popular": make_recommender("popular"),
                                                     "als": make_recommender("als")})
    new = table[table["variant"] == NEW_ITEMS].set_index("model")
    assert new.loc["als", "customers"] == 1_860
    assert new.loc["popular", "ndcg"] == pytest.approx(0.0505, abs=0.002)
    assert new.loc["als", "ndcg"] > new.loc["popular", "ndcg"] + 0.03
