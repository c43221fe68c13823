"""Rows that cannot be true are rejected with their reason, never loaded: rows dated after the command
runs, one order_id shared by different customers or days, absurd prices and quantities. Empty tables
and importer errors are said in the user's words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.importers.movielens import import_movielens
from features.importers.uci_retail import import_online_retail
from features.io import load_data_dir
from features.validate import ContractError
from sendwise.cli import app

runner = CliRunner()
HEADER = "order_id,customer_id,product_id,quantity,unit_price,ordered_at\n"
UCI_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


def reasons_by_row(path: Path) -> dict[int, str]:
    rejects = pd.read_csv(path, dtype=str)
    return dict(zip(rejects["source_row"].astype(int), rejects["reason"], strict=True))


def accounted(report) -> bool:
    return all(t.read == t.loaded + t.rejected for t in report.tables)


def test_rows_after_now_are_rejected_in_every_table(tmp_path: Path) -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    (tmp_path / "orders.csv").write_text(HEADER + "1,c1,p1,1,2,2024-01-01\n2,c1,p1,1,2,2031-05-01\n"
                                         f"3,c2,p1,1,2,{soon}\n4,c2,p1,1,2,2024-01-02T10:00:00+02:00\n")
    (tmp_path / "events.csv").write_text("customer_id,event_type,occurred_at\nc1,product_view,2024-01-01\n"
                                         "c1,product_view,2031-01-01\n")
    (tmp_path / "customers.csv").write_text("customer_id,signup_at\nc1,2023-01-01\nc2,2031-01-01\n")
    tables, report = load_data_dir(tmp_path)
    assert accounted(report)
    orders = reasons_by_row(tmp_path / "_rejects" / "orders.csv")
    assert sorted(orders) == [2, 3]
    assert all(r.startswith("ordered_at is in the future (after ") for r in orders.values())
    assert reasons_by_row(tmp_path / "_rejects" / "events.csv")[2].startswith("occurred_at is in the future")
    assert reasons_by_row(tmp_path / "_rejects" / "customers.csv")[2].startswith("signup_at is in the future")
    assert sorted(tables.frame("orders")["order_id"]) == ["1", "4"]


def test_ten_future_rows_cannot_make_a_future_snapshot(tmp_path: Path, demo_dir: Path) -> None:
    # issue 13: 10 rows in 2031 made a 2031 snapshot in which almost every customer was "lapsed"
    orders = pd.read_parquet(demo_dir / "orders.parquet")
    future = orders.head(10).assign(order_id=lambda f: "future" + f["order_id"].astype(str),
                                    ordered_at=pd.Timestamp("2031-06-01"))
    pd.concat([orders, future]).to_parquet(tmp_path / "orders.parquet")
    result = runner.invoke(app, ["features", "snapshot", "--data", str(tmp_path), "--out", str(tmp_path / "s.parquet")])
    assert result.exit_code == 0, result.output
    assert "in the future" in result.output
    from features.snapshot import read_snapshot
    _, meta = read_snapshot(tmp_path / "s.parquet")
    assert meta["as_of"] < "2027"


def test_an_order_id_shared_by_customers_or_days_is_rejected_whole(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_text(HEADER + "\n".join([
        "A,c1,p1,1,2,2024-01-01 10:00",
        "A,c1,p2,1,2,2024-01-01 10:01",  # A: one order whose lines span a minute: fine
        "B,c1,p1,1,2,2024-01-02",
        "B,c2,p2,1,2,2024-01-02",          # B: two customers
        "C,c3,p1,1,2,2024-01-03",
        "C,c3,p2,1,2,2024-03-09",          # C: two days
        "D,,p1,1,2,2024-01-04",            # D: a line without customer is rejected for that
        "D,c4,p1,1,2,2024-01-04",          #    and does not make D a conflict
        "E,c5,p1,2,2,2024-01-05",          # E: returns under the order's id, days later: fine
        "E,c5,p1,-1,2,2024-01-09",
        "E,c5,p1,-1,2,2024-01-20",
        "F,c6,p1,2,2,2024-01-05",          # F: a return by another customer is not
        "F,c7,p1,-1,2,2024-01-09",
    ]) + "\n")
    tables, report = load_data_dir(tmp_path)
    assert accounted(report)
    reasons = reasons_by_row(tmp_path / "_rejects" / "orders.csv")
    customers, days = ("order_id shared by lines of different customer_id",
                       "order_id shared by purchase lines at different ordered_at (more than 1 hour apart)")
    assert reasons == {3: customers, 4: customers, 5: days, 6: days, 7: "missing customer_id",
                       12: customers, 13: customers}
    assert sorted(tables.frame("orders")["order_id"]) == ["A", "A", "D", "E", "E", "E"]


def test_absurd_prices_and_quantities_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_text(HEADER + "1,c1,p1,1,2,2024-01-01\n2,c1,p1,1,2e9,2024-01-01\n"
                                         "3,c1,p1,5e12,2,2024-01-01\n4,c1,p1,-5e12,2,2024-01-01\n"
                                         "5,c1,p1,1,1e9,2024-01-01\n")
    (tmp_path / "products.csv").write_text("product_id,price\np1,3\np2,1e15\n")
    tables, report = load_data_dir(tmp_path)
    assert accounted(report)
    assert reasons_by_row(tmp_path / "_rejects" / "orders.csv") == {
        2: "unit_price above 1,000,000,000",
        3: "quantity beyond ±1,000,000,000",
        4: "quantity beyond ±1,000,000,000",
    }
    assert reasons_by_row(tmp_path / "_rejects" / "products.csv") == {2: "price above 1,000,000,000"}
    assert sorted(tables.frame("orders")["order_id"]) == ["1", "5"]


@pytest.mark.parametrize("name", ["orders.csv", "orders.parquet"])
def test_a_header_only_orders_file_says_so(tmp_path: Path, name: str) -> None:
    if name.endswith(".csv"):
        (tmp_path / name).write_text(HEADER)
    else:
        pd.DataFrame({c: pd.Series(dtype=str) for c in HEADER.strip().split(",")}).to_parquet(tmp_path / name)
    with pytest.raises(ContractError, match=rf"{name}: orders has no rows"):
        load_data_dir(tmp_path)
    result = runner.invoke(app, ["features", "build", "--data", str(tmp_path), "--as-of", "2024-01-01",
                                 "--out", str(tmp_path / "f.parquet")])
    assert result.exit_code == 2 and "orders has no rows" in result.output
    assert "None" not in result.output


def test_orders_with_every_row_rejected_stop_the_commands_that_need_them(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_text(HEADER + "1,,p1,1,2,2024-01-01\n2,c1,p1,1,2,2031-01-01\n")
    validate = runner.invoke(app, ["data", "validate", str(tmp_path)])
    assert validate.exit_code == 0, validate.output  # validate shows what went where
    result = runner.invoke(app, ["features", "build", "--data", str(tmp_path), "--as-of", "2024-01-01",
                                 "--out", str(tmp_path / "f.parquet")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "orders has no rows left: all 2 were rejected" in text, text
    assert "None" not in text


def test_importer_messages_name_the_users_columns(tmp_path: Path) -> None:
    src = tmp_path / "uci.csv"
    src.write_text(UCI_HEADER + "1,85123A,HEART,6,yesterday,2.55,17850,UK\n2,85123A,HEART,6,today,2.55,17850,UK\n")
    with pytest.raises(ContractError, match=r"uci.csv: column 'InvoiceDate' should hold a date") as err:
        import_online_retail(src, tmp_path / "out")
    assert "ordered_at" not in str(err.value)
    src.write_text(UCI_HEADER + "\n".join([
        "1,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850,UK",
        "2,85123A,HEART,6,2010-12-01 08:26:00,2.55,,UK",
        "3,85123A,HEART,6,soon,2.55,17850,UK",
        "4,85123A,HEART,6,2031-12-01 08:26:00,2.55,17850,UK",
        "5,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850,UK",
        "5,85123A,HEART,6,2010-12-01 08:26:00,2.55,17851,UK",
        "6,85123A,HEART,6,2010-12-01 08:26:00,3e9,17850,UK",
    ]) + "\n")
    report = import_online_retail(src, tmp_path / "out")
    assert report.loaded + report.rejected == report.read == 7
    reasons = set(report.reasons)
    unparseable = "unparseable InvoiceDate (expected a date or timestamp such as 2024-03-01 or 2024-03-01T09:30:00Z)"
    assert {"missing CustomerID", unparseable, "InvoiceNo shared by lines of different CustomerID",
            "UnitPrice above 1,000,000,000"} <= reasons
    assert any(r.startswith("InvoiceDate is in the future") for r in reasons)
    assert not any(name in r for r in reasons for name in ("customer_id", "ordered_at", "order_id", "unit_price"))
    _, validation = load_data_dir(tmp_path / "out")
    assert validation.rejected == 0  # what the importer writes, the loader takes whole


def test_importers_stop_on_a_source_without_rows(tmp_path: Path) -> None:
    src = tmp_path / "uci.csv"
    src.write_text(UCI_HEADER)
    with pytest.raises(ContractError, match="uci.csv: no rows"):
        import_online_retail(src, tmp_path / "out")
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(ContractError, match="ratings.csv: no rows"):
        import_movielens(ratings, tmp_path / "out")


def test_movielens_rejects_ratings_from_the_future(tmp_path: Path) -> None:
    src = tmp_path / "ratings.csv"
    src.write_text("userId,movieId,rating,timestamp\n1,10,4.5,964982703\n1,11,4.5,1956528000\n"
                   "1,12,4.5,99999999999999999\n")  # beyond any timestamp: it used to crash the import
    report = import_movielens(src, tmp_path / "out")
    assert report.loaded == 1 and report.rejected == 2
    assert report.reasons.pop("unparseable timestamp (expected unix seconds)") == 1
    assert next(iter(report.reasons)).startswith("timestamp is in the future")
