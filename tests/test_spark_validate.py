"""Tables Spark reads from a lake are validated row by row as DuckDB validates a data directory
(issue 18): the same clean rows, the same rejects (row and reason), the same counts and features.

The lake is a raw landing zone: every column is text, so each kind of bad value can be written. Both
engines read the same Parquet files at the same ``now``. The rows, by the rule they break:

orders: an exact duplicate of o2's line; quantity ``abc`` and ``1.5d`` (Java reads a trailing d as a
double, DuckDB does not: both reject it); a blank customer_id; a line in 2999 (the future); a negative
unit_price; a zero quantity; o9 shared by customers a and b (both lines); o10's purchase lines 3 hours
apart (both lines); ordered_at ``not a date``. o13's ``2024-01-21 10:15:00 +0100`` is good (09:15 UTC).
customers: b twice (the second is rejected, naming the first's row); e's consent ``maybe``; f signs up
in 2999. events: an unknown event_type; a blank occurred_at. products: a negative price; p1 twice.
customer_changes: an unknown attribute; consent ``maybe``; c's country both France and Spain at once.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_spark_features import assert_same_frames

from features.build import build_features
from features.errors import InputError
from features.io import load_data_dir
from features.schema import SOURCE_ROW, Table

NOW = datetime(2026, 6, 1, 12, 0)
AS_OF = datetime(2024, 2, 1)
LAKE: dict[Table, tuple[str, list[str]]] = {
    Table.ORDERS: ("order_id,customer_id,product_id,quantity,unit_price,ordered_at", [
        "o1,a,p1,2,10,2024-01-01", "o1,a,p2,1,5,2024-01-01", "o2,a,p1,1,10,2024-01-11", "o3,b,p2,3,5,2024-01-20",
        "r1,a,p1,-1,10,2024-01-15", "o2,a,p1,1,10,2024-01-11", "o4,b,p1,abc,5,2024-01-21",
        "o5, ,p1,1,5,2024-01-21", "o6,b,p1,1,5,2999-01-01", "o7,b,p1,1,-5,2024-01-21", "o8,b,p1,0,5,2024-01-21",
        "o9,a,p1,1,5,2024-01-21", "o9,b,p1,1,5,2024-01-21", "o10,b,p1,1,5,2024-01-21 10:00",
        "o10,b,p2,1,5,2024-01-21 13:00", "o11,b,p1,1,5,not a date", "o12,b,p1,1.5d,5,2024-01-21",
        "o13,b,p1,1,5,2024-01-21 10:15:00 +0100"]),
    Table.CUSTOMERS: ("customer_id,signup_at,country,email_consent", [
        "a,2023-12-01,France,true", "b,,Germany,yes", "c,2024-01-30,France,1", "d,2024-02-10,France,true",
        "b,2024-01-02,Spain,no", "e,2024-01-03,Spain,maybe", "f,2999-01-01,Spain,true"]),
    Table.EVENTS: ("customer_id,event_type,product_id,occurred_at", [
        "a,email_sent,,2024-01-25", "a,email_open,,2024-01-26", "b,add_to_cart,p2,2024-01-29",
        "c,product_view,p1,2024-01-31 11:00", "c,add_to_cart,p1,2024-01-31 12:00", "c,click,p1,2024-01-31",
        "c,product_view,p2,"]),
    Table.PRODUCTS: ("product_id,name,category,price,in_stock", [
        "p1,Mug,kitchen,10,true", "p2,Bag,bags,5,false", "p3,Pen,office,-1,true", "p1,Mug 2,kitchen,12,true"]),
    Table.CUSTOMER_CHANGES: ("customer_id,changed_at,attribute,value", [
        "a,2023-12-01,country,United Kingdom", "b,2024-01-20,email_consent,yes", "b,2024-01-21,height,180",
        "b,2024-01-22,email_consent,maybe", "c,2024-01-01,country,France", "c,2024-01-01,country,Spain"]),
}


def write_lake(root: Path, lake: dict[Table, tuple[str, list[str]]] = LAKE) -> dict[Table, str]:
    """Each table as one Parquet file of text columns (empty text is written as empty, not NULL)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for table, (header, lines) in lake.items():
        names = header.split(",")
        columns = list(zip(*(line.split(",") for line in lines), strict=True))
        frame = pa.table({name: pa.array(list(values), pa.string()) for name, values in zip(names, columns,
                                                                                              strict=True)})
        paths[table] = str(root / f"{table.value}.parquet")
        pq.write_table(frame, paths[table])
    return paths


def rows(frame: pd.DataFrame) -> list[tuple]:
    """The rows of ``frame`` as sorted tuples of plain values (NULL as None, timestamps as text)."""
    def plain(value: object) -> object:
        if value is None or value is pd.NaT or (not isinstance(value, str) and pd.isna(value)):
            return None
        if isinstance(value, pd.Timestamp | datetime):
            return pd.Timestamp(value).isoformat()
        return value.item() if hasattr(value, "item") else value
    return sorted((tuple(plain(v) for v in row) for row in frame.itertuples(index=False)), key=repr)


@pytest.fixture(scope="module")
def validated(spark: object, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The lake validated by DuckDB and by Spark: (DuckDB tables, DuckDB report, Spark tables, rejects)."""
    from features.spark import SparkTables

    root = tmp_path_factory.mktemp("lake")
    paths = write_lake(root / "lake")
    tables, report = load_data_dir(root / "lake", root / "duckdb_rejects", now=NOW)
    remote = SparkTables.from_sources(spark, paths, rejects=root / "spark_rejects", now=NOW)
    return tables, report, remote, root / "spark_rejects"


@pytest.mark.spark
def test_spark_keeps_and_rejects_the_rows_duckdb_keeps_and_rejects(spark: object, validated: tuple) -> None:
    tables, report, remote, rejects = validated
    assert [(r.table, r.read, r.loaded, r.rejected, r.reasons) for r in remote.reports] == \
        [(r.table, r.read, r.loaded, r.rejected, r.reasons) for r in report.tables]
    assert {r.table: r.rejected for r in remote.reports} == {"orders": 12, "customers": 3, "events": 2,
                                                            "products": 2, "customer_changes": 4}
    for table in LAKE:
        expected = tables.con.execute(f"SELECT * FROM {table.value}_rejects").df()
        written = spark.read.parquet(str(rejects / table.value)).toPandas()
        assert list(written.columns) == ["source_file", *expected.columns]
        assert {Path(f).name for f in written["source_file"]} == {f"{table.value}.parquet"}
        assert rows(written.drop(columns="source_file")) == rows(expected), table
        clean = tables.query(f"SELECT * FROM {table.value}")
        assert rows(remote.query(f"SELECT * FROM {table.value}")) == rows(clean), table
    reasons = dict(rows(spark.read.parquet(str(rejects / "customers")).toPandas()[[SOURCE_ROW, "reason"]]))
    assert reasons[5] == "duplicate customer_id (first in row 2)"
    assert not list(rejects.glob("*.writing"))


@pytest.mark.spark
def test_features_over_the_clean_rows_equal_duckdbs(validated: tuple) -> None:
    tables, _, remote, _ = validated
    assert_same_frames(build_features(tables, AS_OF), build_features(remote, AS_OF))


@pytest.mark.spark
def test_the_views_read_the_clean_rows_kept_not_the_source_nor_the_rules(validated: tuple) -> None:
    """The clean rows are computed once, with the rejects: a query on a view scans them (cached), not
    the lake's files, the rules or the rejects written."""
    _, _, remote, _ = validated
    for table in (Table.ORDERS, Table.CUSTOMERS):
        plan = remote.sql(f"SELECT count(*) FROM {table.value}")._jdf.queryExecution().sparkPlan()
        leaves = plan.collectLeaves()
        assert [leaves.apply(i).nodeName() for i in range(leaves.size())] == ["InMemoryTableScan"], table


@pytest.mark.spark
def test_closing_the_tables_releases_the_rows_they_keep(spark: object, tmp_path: Path) -> None:
    from features.spark import SparkTables

    paths = write_lake(tmp_path / "lake", {Table.ORDERS: LAKE[Table.ORDERS]})
    with SparkTables.from_sources(spark, paths, rejects=tmp_path / "rejects", now=NOW) as remote:
        kept = remote._frames[Table.ORDERS]
        assert kept.storageLevel.useMemory and kept.storageLevel.useDisk
        assert remote.count(Table.ORDERS) == remote.reports[0].loaded == 6
    assert not kept.is_cached


@pytest.mark.spark
def test_typed_columns_in_a_folder_of_files_are_validated_as_duckdb_validates_them(spark: object,
                                                                                  tmp_path: Path) -> None:
    """Parquet's own types (bigint, double, timestamp with and without a zone, boolean), each table a
    folder of two files: the same clean rows and counts as DuckDB's validation of the rows as one file;
    a key repeated in the second file names the first's row and file."""
    from features.spark import SparkTables

    def at(text: str) -> datetime:
        return datetime.fromisoformat(text)

    orders = pa.table({"order_id": ["o1", "o2", "o3", "o4"], "customer_id": ["a", "a", "b", "b"],
                       "product_id": ["p1", "p2", "p1", "p1"], "quantity": pa.array([2, -1, 0, 1], pa.int64()),
                       "unit_price": [10.0, 5.0, 5.0, 5.0],
                       "ordered_at": pa.array([at("2024-01-01 10:00"), at("2024-01-02 11:00"), at("2024-01-03 12:00"),
                                               at("2999-01-01 00:00")], pa.timestamp("us", tz="UTC"))})
    customers = pa.table({"customer_id": ["a", "b", "a"],
                          "signup_at": pa.array([at("2023-12-01 08:00"), at("2023-12-02 09:30"), at("2023-12-03")],
                                                pa.timestamp("us")),  # no zone: TIMESTAMP_NTZ in Spark
                          "country": ["France", "Spain", "France"], "email_consent": [True, False, True]})
    lake, data = tmp_path / "lake", tmp_path / "data"
    data.mkdir()
    for name, table, split in (("orders", orders, 2), ("customers", customers, 2)):
        (lake / name).mkdir(parents=True)
        pq.write_table(table.slice(0, split), lake / name / "part-0.parquet")
        pq.write_table(table.slice(split), lake / name / "part-1.parquet")
        pq.write_table(table, data / f"{name}.parquet")
    tables, report = load_data_dir(data, tmp_path / "duckdb_rejects", now=NOW)
    remote = SparkTables.from_sources(spark, {Table.ORDERS: str(lake / "orders"),
                                              Table.CUSTOMERS: str(lake / "customers")},
                                      rejects=tmp_path / "spark_rejects", now=NOW)
    assert [(r.table, r.read, r.loaded, r.rejected) for r in remote.reports] == \
        [(r.table, r.read, r.loaded, r.rejected) for r in report.tables]
    assert [r.rejected for r in remote.reports[:2]] == [2, 1]
    for table in (Table.ORDERS, Table.CUSTOMERS):
        clean = rows(tables.query(f"SELECT * FROM {table.value}"))
        assert rows(remote.query(f"SELECT * FROM {table.value}")) == clean, table
    assert ("a", "2023-12-01T08:00:00", "France", True) in clean
    written = spark.read.parquet(str(tmp_path / "spark_rejects" / "customers")).toPandas()
    [(source, row, reason)] = rows(written[["source_file", SOURCE_ROW, "reason"]])
    assert source.endswith("customers/part-1.parquet") and row == 1
    assert reason.startswith("duplicate customer_id (first in row 1 of ") and reason.endswith("part-0.parquet)")
    orders_rejects = spark.read.parquet(str(tmp_path / "spark_rejects" / "orders")).toPandas()
    assert rows(orders_rejects[["order_id", "reason"]]) == \
        rows(tables.con.execute("SELECT order_id, reason FROM orders_rejects").df())


@pytest.mark.spark
def test_a_column_that_mostly_fails_to_parse_is_the_same_error(spark: object, tmp_path: Path) -> None:
    from features.spark import SparkTables

    lake = {Table.ORDERS: (LAKE[Table.ORDERS][0], ["o1,a,p1,x,10,2024-01-01", "o2,a,p1,1,10,2024-01-02",
                                                   "o3,a,p1,y,10,2024-01-03"])}
    paths = write_lake(tmp_path / "lake", lake)
    with pytest.raises(InputError) as duck:
        load_data_dir(tmp_path / "lake", tmp_path / "duckdb_rejects", now=NOW)
    with pytest.raises(InputError) as remote:
        SparkTables.from_sources(spark, paths, rejects=tmp_path / "spark_rejects", now=NOW)
    assert str(remote.value) == str(duck.value)
    assert "column 'quantity' should hold a number, but 2 of 3 values are not, for example 'x'" in str(duck.value)
    assert not (tmp_path / "spark_rejects").exists()


@pytest.mark.spark
def test_rejects_never_overwrite_an_input_nor_a_folder_spark_did_not_write(spark: object, tmp_path: Path) -> None:
    from features.spark import SparkTables
    from sendwise.engines import EngineName, open_tables
    from sendwise.project import SparkSettings

    paths = write_lake(tmp_path / "lake", {Table.ORDERS: LAKE[Table.ORDERS]})
    data = tmp_path / "data"
    data.mkdir()
    settings = SparkSettings(tables={"orders": paths[Table.ORDERS]})
    with pytest.raises(InputError, match="the rejects folder .* holds .* an input of this command"):
        open_tables(EngineName.SPARK, data, tmp_path / "lake", settings)
    with pytest.raises(InputError, match="is the data directory this command reads"):
        open_tables(EngineName.SPARK, data, data, settings)
    folder = tmp_path / "shared" / "orders"  # a lake table as a folder, where the rejects would go
    folder.mkdir(parents=True)
    (folder / "part-0.parquet").write_bytes(Path(paths[Table.ORDERS]).read_bytes())
    with pytest.raises(InputError, match="an input of this command"):
        SparkTables.from_sources(spark, {Table.ORDERS: str(folder)}, rejects=tmp_path / "shared", now=NOW)
    theirs = tmp_path / "rejects" / "orders"
    theirs.mkdir(parents=True)
    (theirs / "notes.txt").write_text("not Spark's")
    with pytest.raises(InputError, match="not a folder of rejects Spark wrote"):
        SparkTables.from_sources(spark, paths, rejects=tmp_path / "rejects", now=NOW)
    assert (theirs / "notes.txt").read_text() == "not Spark's"

    tables = open_tables(EngineName.SPARK, data, None, settings)  # default: DATA/_rejects, as DuckDB's
    assert tables.reports[0].rejected == 12 and (data / "_rejects" / "orders" / "_SUCCESS").exists()
    first = sorted(p.name for p in (data / "_rejects" / "orders").glob("*.parquet"))
    again = open_tables(EngineName.SPARK, data, None, settings)  # a second run replaces the folder whole
    assert again.reports[0].rejected == 12
    assert sorted(p.name for p in (data / "_rejects" / "orders").glob("*.parquet")) != first
    assert not (data / "_rejects" / "orders.writing").exists()


@pytest.mark.spark
def test_local_times_become_the_same_utc_times_across_daylight_saving(spark: object, tmp_path: Path) -> None:
    """New York: 02:30 on 2024-03-10 does not exist (read as 07:30 UTC), 01:30 on 2024-11-03 happens
    twice (the later, 06:30 UTC); a time with an offset keeps it."""
    from features.spark import SparkTables

    lake = {Table.ORDERS: (LAKE[Table.ORDERS][0], [
        "o1,a,p1,1,10,2024-03-10 02:30", "o2,a,p1,1,10,2024-11-03 01:30", "o3,a,p1,1,10,2024-11-03 00:30",
        "o4,a,p1,1,10,2024-07-01 12:00", "o5,a,p1,1,10,2024-07-01 12:00:00 +0100"])}
    paths = write_lake(tmp_path / "lake", lake)
    tables, _ = load_data_dir(tmp_path / "lake", tmp_path / "duckdb_rejects", now=NOW, timezone="America/New_York")
    remote = SparkTables.from_sources(spark, paths, timezone="America/New_York", rejects=tmp_path / "spark_rejects",
                                      now=NOW)
    expected = rows(tables.query("SELECT order_id, ordered_at FROM orders"))
    assert rows(remote.query("SELECT order_id, ordered_at FROM orders")) == expected
    assert ("o2", "2024-11-03T06:30:00") in expected and ("o1", "2024-03-10T07:30:00") in expected
