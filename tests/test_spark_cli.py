"""One setting switches a project's engine: ``engine: spark`` in sendwise.yaml (or ``--engine``) on the
feature, training-set and snapshot commands gives DuckDB's rows (issue 18 item 1)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from sendwise.cli import app

runner = CliRunner()
AS_OF = "2025-09-01"


def invoke(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def project(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spark-project")
    (root / "sendwise.yaml").write_text(yaml.safe_dump({"name": "lake", "data": str(demo_dir), "engine": "spark"}))
    return root


def read_directory(path: Path, like: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """A directory of Parquet files partitioned by as_of, read back with the columns, types and row order
    of DuckDB's frame ``like`` (pyarrow reads the partition column back as a category, and a nullable
    integer Spark wrote as a float)."""
    frame = pd.read_parquet(path)
    frame["as_of"] = pd.to_datetime(frame["as_of"].astype(str)).astype(like["as_of"].dtype)
    frame = frame[list(like.columns)].astype(like.dtypes.to_dict())
    return frame.sort_values(keys, ignore_index=True)


def test_duckdb_writes_one_file_and_says_so_for_a_directory(demo_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["features", "build", "--data", str(demo_dir), "--as-of", AS_OF,
                                 "--out", str(tmp_path / "features"), "--engine", "duckdb"])
    assert result.exit_code != 0
    assert "with the duckdb engine the output is one .parquet file" in " ".join(result.output.split())
    assert not (tmp_path / "features").exists()


def test_the_project_setting_is_checked() -> None:
    from pydantic import ValidationError

    from sendwise.project import ProjectSettings

    with pytest.raises(ValidationError, match="engine"):
        ProjectSettings.model_validate({"engine": "polars"})
    with pytest.raises(ValidationError, match="tables"):
        ProjectSettings.model_validate({"spark": {"tables": {"invoices": "x.parquet"}}})


def test_rfm_ranks_are_exact_unless_the_project_says_approximate(tmp_path: Path) -> None:
    from features.errors import InputError
    from sendwise.project import ProjectSettings, load_project

    assert ProjectSettings().spark.rfm_ranks == "exact"
    assert ProjectSettings.model_validate({"spark": {"rfm_ranks": "approximate"}}).spark.rfm_ranks == "approximate"
    (tmp_path / "sendwise.yaml").write_text(yaml.safe_dump({"engine": "spark", "spark": {"rfm_ranks": "fast"}}))
    with pytest.raises(InputError, match="sendwise.yaml: spark.rfm_ranks: Input should be 'exact' or 'approximate'"):
        load_project(tmp_path)


@pytest.mark.spark
def test_the_project_engine_builds_the_same_features_into_a_partitioned_directory(
        spark: object, project: Path, demo_dir: Path, tmp_path: Path) -> None:
    local = tmp_path / "local.parquet"
    invoke("features", "build", "--data", demo_dir, "--as-of", AS_OF, "--out", local, "--engine", "duckdb")
    lake = tmp_path / "lake-features"
    output = invoke("features", "build", "--project", project, "--as-of", AS_OF, "--out", lake)
    assert "computed by Spark" in " ".join(output.split()) and "partitioned by as_of" in " ".join(output.split())
    assert [p.name for p in lake.iterdir() if p.is_dir()] == ["as_of=2025-09-01 00%3A00%3A00"]
    expected = pd.read_parquet(local)
    written = read_directory(lake, expected, ["customer_id"])
    pd.testing.assert_frame_equal(written, expected, check_exact=False, rtol=1e-9)
    again = invoke("features", "build", "--project", project, "--as-of", AS_OF, "--out", lake)  # replaced whole
    assert "computed by Spark" in " ".join(again.split()) and not Path(f"{lake}.previous").exists()
    assert len(pd.read_parquet(lake)) == len(expected)


@pytest.mark.slow  # the commands' wiring; the rows themselves are held equal in the default run
@pytest.mark.spark
def test_a_training_set_and_a_snapshot_on_spark(spark: object, project: Path, demo_dir: Path, tmp_path: Path) -> None:
    local = tmp_path / "ts.parquet"
    args = ("--target", "purchased", "--as-of", "2025-06-01", "--as-of", "2025-08-01")
    invoke("features", "training-set", "--data", demo_dir, *args, "--out", local, "--engine", "duckdb")
    lake = tmp_path / "ts"
    output = invoke("features", "training-set", "--project", project, *args, "--out", lake)
    expected = pd.read_parquet(local)
    written = read_directory(lake, expected, ["as_of", "customer_id"])
    assert f"{len(expected):,} rows written" in output
    pd.testing.assert_frame_equal(written, expected, check_exact=False, rtol=1e-9)

    snapshot = tmp_path / "snapshot.parquet"
    invoke("features", "snapshot", "--project", project, "--out", snapshot)
    duck = tmp_path / "duck-snapshot.parquet"
    invoke("features", "snapshot", "--data", demo_dir, "--out", duck, "--engine", "duckdb")
    pd.testing.assert_frame_equal(pd.read_parquet(snapshot), pd.read_parquet(duck), check_exact=False, rtol=1e-9,
                                  check_dtype=False)


@pytest.mark.slow  # the commands' wiring; the rows themselves are held equal in the default run
@pytest.mark.spark
def test_a_model_trains_on_a_sample_of_the_spark_shop_recorded_with_its_run(
        spark: object, demo_dir: Path, tmp_path: Path) -> None:
    import mlflow

    root = tmp_path / "sampled"
    root.mkdir()
    (root / "sendwise.yaml").write_text(yaml.safe_dump(
        {"name": "sampled", "data": str(demo_dir), "engine": "spark", "spark": {"sample_customers": 300}}))
    output = invoke("train", "propensity", "--project", root, "--as-of", "2025-10-01")
    assert "a 75.0% sample, seed 0" in output
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    run = mlflow.search_runs(search_all_experiments=True, filter_string="params.target = 'purchased'").iloc[0]
    assert run["params.sample_fraction"] == "0.75" and run["params.sample_of_customers"] == "400"
    assert 200 <= int(run["params.sample_customers"]) <= 400


@pytest.mark.slow  # the command's wiring (a minute); sampling and a sampled auto are tested in the default run
@pytest.mark.spark
def test_a_recommender_trains_on_a_sample_of_the_spark_shop_recorded_with_its_run(
        spark: object, demo_dir: Path, tmp_path: Path) -> None:
    import mlflow

    (tmp_path / "sendwise.yaml").write_text(yaml.safe_dump(
        {"name": "sampled", "data": str(demo_dir), "engine": "spark", "spark": {"sample_customers": 300}}))
    output = " ".join(invoke("train", "recommender", "--project", tmp_path, "--as-of", "2025-10-01",
                             "--model", "als").split())
    assert "customers (a 75.0% sample, seed 0), each with their whole history" in output
    assert "sampled.recommender v1" in output
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = mlflow.search_runs(search_all_experiments=True, filter_string="params.model = 'als'").iloc[0]
    assert run["params.sample_fraction"] == "0.75" and run["params.sample_of_customers"] == "400"
    assert run["params.sample_seed"] == "0"
    sampled = int(run["params.sample_customers"])
    assert 200 <= sampled <= 400 and f"training on {sampled:,} of 400 customers" in output
    assert int(run["params.customers"]) <= sampled  # fitted on the sample's customers only


def test_full_data_training_is_a_setting_and_refuses_trials_before_reading_data(demo_dir: Path,
                                                                                tmp_path: Path) -> None:
    from pydantic import ValidationError

    from sendwise.project import ProjectSettings, SparkTraining

    assert ProjectSettings().spark.training == SparkTraining.SAMPLE
    with pytest.raises(ValidationError, match="training"):
        ProjectSettings.model_validate({"spark": {"training": "everything"}})
    assert ProjectSettings().spark.xgboost_workers is None
    with pytest.raises(ValidationError, match="xgboost_workers"):
        ProjectSettings.model_validate({"spark": {"xgboost_workers": 0}})
    (tmp_path / "sendwise.yaml").write_text(yaml.safe_dump(
        {"name": "full", "data": str(demo_dir), "engine": "spark", "spark": {"training": "full"}}))
    refused = runner.invoke(app, ["train", "churn", "--project", str(tmp_path), "--as-of", "2025-10-01",
                                  "--trials", "2"])
    assert refused.exit_code != 0 and "spark.training: full" in " ".join(refused.output.split())
    assert "training on every row" not in refused.output  # refused before the data is read


@pytest.mark.slow  # the commands' wiring; fit_bundle_spark itself is tested in test_spark_training
@pytest.mark.spark
def test_spark_training_full_fits_every_row_with_spark_xgboost(spark: object, demo_dir: Path, tmp_path: Path) -> None:
    import mlflow

    (tmp_path / "sendwise.yaml").write_text(yaml.safe_dump(
        {"name": "full", "data": str(demo_dir), "engine": "spark",
         "spark": {"training": "full", "xgboost_workers": 1}}))
    output = " ".join(invoke("train", "churn", "--project", tmp_path, "--as-of", "2025-10-01").split())
    assert "SparkXGBClassifier" in output and "no CLV model" in output and "full.churn v1" in output
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = mlflow.search_runs(search_all_experiments=True, filter_string="params.target = 'churned'").iloc[0]
    assert run["params.training"] == "spark_xgboost"
    assert run["params.num_workers"] == "1"  # spark.xgboost_workers, not the session's parallelism (2)


@pytest.mark.slow  # the commands' wiring; the rows themselves are held equal in the default run
@pytest.mark.spark
def test_score_and_recommend_on_spark_write_the_local_rows(spark: object, served_env: dict, demo_dir: Path,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(Path(served_env["SENDWISE_MLRUNS"]).parent)  # ./mlruns: the champions' store
    for command, keys in (("score", ["customer_id"]), ("recommend", ["customer_id", "rank"])):
        local, lake = tmp_path / f"{command}-local.parquet", tmp_path / f"{command}-lake"
        invoke(command, "--data", demo_dir, "--out", local, "--engine", "duckdb")
        output = invoke(command, "--data", demo_dir, "--out", lake, "--engine", "spark")
        expected = pd.read_parquet(local).sort_values(keys, ignore_index=True)
        written = pd.read_parquet(lake).sort_values(keys, ignore_index=True)[list(expected.columns)]
        assert len(expected) > 300 and lake.is_dir()
        # float32 scores of a matrix product over another batch of customers: equal to float32's precision
        pd.testing.assert_frame_equal(written, expected, check_exact=False, rtol=1e-5, check_dtype=False)
        assert ("not computed with the spark engine" if command == "score" else "recommendations for 400") in output
    result = runner.invoke(app, ["score", "--data", str(demo_dir), "--out", str(tmp_path / "s.txt"),
                                 "--engine", "spark"])
    assert result.exit_code != 0 and "one .csv or .parquet file" in " ".join(result.output.split())


# -- what a lake project must not lose or leak ---------------------------------------------------------------
def test_a_uri_keeps_its_slashes_and_no_output_overwrites_a_table_spark_reads(tmp_path: Path) -> None:
    from features.errors import InputError
    from sendwise.engines import EngineName, check_output, output_location
    from sendwise.project import SparkSettings

    assert output_location(Path("s3a://lake/shop/features")) == "s3a://lake/shop/features"
    assert output_location(Path("hdfs://nn:8020/x")) == "hdfs://nn:8020/x"
    assert output_location(tmp_path / "features") == str(tmp_path / "features")
    orders = tmp_path / "lake" / "orders"
    orders.mkdir(parents=True)
    settings = SparkSettings(tables={"orders": str(orders)})
    for out in (orders, tmp_path / "lake"):
        with pytest.raises(InputError, match="input"):
            check_output(EngineName.SPARK, out, spark=settings)
    check_output(EngineName.SPARK, tmp_path / "features", spark=settings)


@pytest.fixture
def lake(tiny_tables, tmp_path: Path) -> Path:
    """The hand-made tables as a lake: one Parquet file per table, naive timestamps."""
    from features.schema import Table

    root = tmp_path / "lake"
    root.mkdir()
    for table in (Table.ORDERS, Table.EVENTS, Table.CUSTOMERS):
        tiny_tables.con.execute(f"COPY {table.value} TO '{root / f'{table.value}.parquet'}' (FORMAT parquet)")
    return root


@pytest.mark.spark
def test_a_lake_project_honours_its_tombstones_zone_and_contract(spark: object, lake: Path, tmp_path: Path) -> None:
    from features.errors import InputError
    from features.io import write_tombstones
    from features.tombstones import Tombstones
    from sendwise.engines import EngineName, open_tables, write_partitioned
    from sendwise.project import SparkSettings

    settings = SparkSettings(tables={t: str(lake / f"{t}.parquet") for t in ("orders", "events", "customers")})
    data = tmp_path / "data"
    with pytest.raises(InputError, match="tombstones"):
        open_tables(EngineName.SPARK, data, None, settings)
    data.mkdir()
    write_tombstones(data, Tombstones().adding(["a"]))
    tables = open_tables(EngineName.SPARK, data, None, settings)
    assert set(tables.query("SELECT DISTINCT customer_id FROM orders")["customer_id"]) == {"b"}
    utc = tables.time_range()[0]
    # one shop per session: each open replaces the views, so each is read right after it is opened
    london = open_tables(EngineName.SPARK, data, None, settings, timezone="Europe/London").time_range()[0]
    tokyo = open_tables(EngineName.SPARK, data, None, settings, timezone="Asia/Tokyo").time_range()[0]
    assert london == utc and (utc - tokyo).total_seconds() == 9 * 3600  # January: London is on UTC

    broken = SparkSettings(tables={"orders": str(lake / "events.parquet")})
    with pytest.raises(InputError, match="spark.tables.orders has no column order_id"):
        open_tables(EngineName.SPARK, data, None, broken)
    with pytest.raises(InputError, match="spark.tables.orders: cannot read"):
        open_tables(EngineName.SPARK, data, None, SparkSettings(tables={"orders": str(lake / "nope.parquet")}))

    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("not Spark's")
    with pytest.raises(InputError, match="is not a directory Spark wrote"):
        write_partitioned(tables.sql("SELECT * FROM orders"), keep, partition_by=None)
    assert (keep / "notes.txt").read_text() == "not Spark's"
