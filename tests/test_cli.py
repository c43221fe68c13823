"""The ``sendwise`` command line, end to end on small data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from sendwise.cli import app

runner = CliRunner()


def run(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_generate_validate_features_training_set_snapshot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run("data", "generate", "--customers", "300", "--seed", "2", "--products", "40", "--out", data)
    out = run("data", "validate", data)
    assert "orders" in out and "loaded" in out
    run("features", "build", "--data", data, "--as-of", "2025-09-01", "--out", tmp_path / "f.parquet")
    features = pd.read_parquet(tmp_path / "f.parquet")
    assert len(features) > 100 and (features["as_of"] == pd.Timestamp("2025-09-01")).all()
    out = run("features", "training-set", "--data", data, "--target", "purchased", "--periods", "3",
              "--out", tmp_path / "t.parquet")
    assert "purchased within 30 days" in out
    assert pd.read_parquet(tmp_path / "t.parquet")["as_of"].nunique() == 3
    run("features", "snapshot", "--data", data, "--out", tmp_path / "s.parquet")
    assert len(pd.read_parquet(tmp_path / "s.parquet")) >= len(features)


def test_contract_errors_exit_2_with_the_message(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_text("order_id,customer_id\n1,a\n")
    result = runner.invoke(app, ["data", "validate", str(tmp_path)])
    assert result.exit_code == 2
    assert "missing required column 'product_id'" in result.output


def test_as_of_before_the_data_is_a_clear_error(tmp_path: Path, tiny_frames: dict) -> None:
    for name, frame in tiny_frames.items():
        frame.to_parquet(tmp_path / f"{name}.parquet")
    result = runner.invoke(app, ["features", "build", "--data", str(tmp_path), "--as-of", "2020-01-01",
                                 "--out", str(tmp_path / "f.parquet")])
    assert result.exit_code == 2 and "is not after the first row of the data" in result.output


def test_import_online_retail_prints_the_accounting(tmp_path: Path) -> None:
    src = tmp_path / "uci.csv"
    src.write_text("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
                   "1,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850,United Kingdom\n"
                   "1,POST,POSTAGE,1,2010-12-01 08:26:00,18,17850,United Kingdom\n")
    out = run("data", "import", "online-retail", src, "--out", tmp_path / "o")
    assert "not a product: postage code POST" in out and "rejected" in out
