"""Commands never destroy their own input: an output path that is an input, holds one, or is where a
table of the data directory is read from is refused with exit 2, before anything is written.

Every case checks the input byte for byte afterwards.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sendwise.cli import app

runner = CliRunner()
ORDERS = ("order_id,customer_id,product_id,quantity,unit_price,ordered_at\n"
          "1,c1,p1,2,3.5,2024-01-01 10:00\n2,c2,p1,1,3.5,2024-02-01 10:00\n3,c1,p2,1,9,2024-03-01 10:00\n")
UCI = ("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
       "1,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850,United Kingdom\n")
RATINGS = "userId,movieId,rating,timestamp\n1,10,4.5,964982703\n"
EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "example.yaml"


def refused(args: list[object], *inputs: Path, says: str = "input") -> str:
    """Run the command; it must exit 2 with a one-line error and leave every input as it was."""
    before = {p: p.read_bytes() for p in inputs}
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert says in result.output, result.output
    for path, content in before.items():
        assert path.read_bytes() == content, f"{path} changed"
    return result.output


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "orders.csv").write_text(ORDERS)
    (d / "customers.csv").write_text("customer_id,country\nc1,UK\nc2,FR\n")
    return d


@pytest.mark.parametrize("command", [
    ["features", "build", "--as-of", "2024-02-15"],
    ["features", "training-set", "--as-of", "2024-02-01", "--horizon", "7"],
    ["features", "snapshot"],
])
def test_features_commands_refuse_to_write_over_a_table(data: Path, command: list[str]) -> None:
    out = refused([*command, "--data", data, "--out", data / "orders.csv"], data / "orders.csv",
                  data / "customers.csv")
    assert str(data / "orders.csv") in out.replace("\n", "")


def test_snapshot_refuses_the_parquet_orders_it_reads(tmp_path: Path, tiny_frames: dict) -> None:
    # the report of issue 13: `features snapshot --data data --out data/orders.parquet`
    for name, frame in tiny_frames.items():
        frame.to_parquet(tmp_path / f"{name}.parquet")
    refused(["features", "snapshot", "--data", tmp_path, "--out", tmp_path / "orders.parquet"],
            *tmp_path.glob("*.parquet"))


def test_a_table_the_directory_does_not_have_yet_is_refused_too(data: Path) -> None:
    # data/products.parquet does not exist, but once written the loader would read it as products
    refused(["features", "build", "--data", data, "--as-of", "2024-02-15", "--out", data / "products.parquet"],
            data / "orders.csv", says="products")
    assert not (data / "products.parquet").exists()
    tombstones = data / "_privacy" / "tombstones.json"  # read by every load, even before it exists
    refused(["features", "build", "--data", data, "--as-of", "2024-02-15", "--out", tombstones],
            data / "orders.csv", says="tombstones")
    assert not tombstones.exists()


def test_the_data_directory_itself_or_a_folder_above_it_is_refused(data: Path) -> None:
    refused(["features", "build", "--data", data, "--as-of", "2024-02-15", "--out", data], data / "orders.csv")
    refused(["features", "build", "--data", data, "--as-of", "2024-02-15", "--out", data.parent],
            data / "orders.csv")


def test_a_link_to_an_input_is_the_input(data: Path, tmp_path: Path) -> None:
    link = tmp_path / "features.parquet"
    link.symlink_to(data / "orders.csv")
    refused(["features", "build", "--data", data, "--as-of", "2024-02-15", "--out", link], data / "orders.csv")
    hard = tmp_path / "hard.parquet"
    hard.hardlink_to(data / "orders.csv")
    refused(["features", "build", "--data", data, "--as-of", "2024-02-15", "--out", hard], data / "orders.csv")


def test_other_files_in_the_data_directory_are_fine(data: Path) -> None:
    result = runner.invoke(app, ["features", "build", "--data", str(data), "--as-of", "2024-02-15",
                                 "--out", str(data / "features.parquet")])
    assert result.exit_code == 0, result.output


def test_validate_refuses_rejects_in_place_of_the_tables(data: Path, tmp_path: Path) -> None:
    # the report of issue 13: `data validate r --rejects r` overwrote r/orders.csv with the rejects
    (data / "orders.csv").write_text(ORDERS + "9,,p1,1,1,2024-01-01\n")  # one reject
    refused(["data", "validate", data, "--rejects", data], data / "orders.csv", data / "customers.csv",
            says="--rejects")
    refused(["data", "validate", data, "--rejects", tmp_path], data / "orders.csv", data / "customers.csv")
    refused(["features", "build", "--data", data, "--as-of", "2024-02-15", "--out", tmp_path / "f.parquet",
             "--rejects", data], data / "orders.csv")
    ok = runner.invoke(app, ["data", "validate", str(data), "--rejects", str(data / "_rejects")])
    assert ok.exit_code == 0, ok.output
    assert (data / "_rejects" / "orders.csv").exists()


@pytest.mark.parametrize(("command", "source", "text"), [
    (["data", "import", "online-retail"], "uci.csv", UCI),
    (["data", "import", "movielens"], "ratings.csv", RATINGS),
])
def test_importers_refuse_an_output_that_is_or_holds_the_source(tmp_path: Path, command: list[str], source: str,
                                                                text: str) -> None:
    src = tmp_path / "raw" / source
    src.parent.mkdir()
    src.write_text(text)
    refused([*command, src, "--out", src], src)
    refused([*command, src, "--out", src.parent], src)
    refused([*command, src, "--out", tmp_path], src)
    # an output directory whose tables are CSV would end up with two files for one table
    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "orders.csv").write_text(ORDERS)
    refused([*command, src, "--out", shop], src, shop / "orders.csv", says="orders.csv")
    assert not (shop / "orders.parquet").exists()


def test_generate_refuses_a_file_or_a_directory_of_csv_tables(tmp_path: Path, data: Path) -> None:
    refused(["data", "generate", "--customers", "20", "--out", data / "orders.csv"], data / "orders.csv",
            says="is a file")
    refused(["data", "generate", "--customers", "20", "--out", data], data / "orders.csv", data / "customers.csv",
            says="orders.csv")


@pytest.mark.parametrize("command", [["score"], ["recommend", "--k", "3"]])
def test_score_and_recommend_refuse_a_table(data: Path, command: list[str]) -> None:
    refused([*command, "--data", data, "--as-of", "2024-02-15", "--out", data / "orders.csv"], data / "orders.csv")
    refused([*command, "--data", data, "--as-of", "2024-02-15", "--out", data / "customers.parquet"],
            data / "customers.csv")


def test_experiments_commands_refuse_their_inputs(tmp_path: Path, data: Path) -> None:
    config = tmp_path / "experiments.yaml"
    shutil.copy(EXAMPLE_CONFIG, config)
    customers = tmp_path / "customers.csv"
    customers.write_text("customer_id\nc1\nc2\n")
    name = "subject_line_test"
    refused(["experiments", "assign", name, "--config", config, "--customers", customers, "--out", customers],
            customers, config)
    refused(["experiments", "assign", name, "--config", config, "--customers", customers, "--out", config],
            customers, config)
    refused(["experiments", "simulate", name, "--config", config, "--customers", "50", "--out", tmp_path / "ab",
             "--exposures", config], config)
    refused(["experiments", "simulate", name, "--config", config, "--customers", "50", "--out", tmp_path], config)
    exposures = tmp_path / "exposures.jsonl"
    exposures.write_text("")
    refused(["experiments", "analyze", name, "--config", config, "--data", data, "--exposures", exposures,
             "--report", exposures, "--no-mlflow"], exposures, config, data / "orders.csv")
    refused(["experiments", "analyze", name, "--config", config, "--data", data, "--exposures", exposures,
             "--report", data / "orders.csv", "--no-mlflow"], exposures, config, data / "orders.csv")
