"""Importers of public datasets, on small hand-made files and on the real files when present."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from features.importers.movielens import import_movielens
from features.importers.uci_retail import import_online_retail
from features.io import load_data_dir
from features.validate import ContractError

UCI_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


def test_online_retail_mapping_on_a_hand_made_file(tmp_path: Path) -> None:
    src = tmp_path / "uci.csv.gz"
    with gzip.open(src, "wt") as fh:
        fh.write(UCI_HEADER + "".join(f"{line}\n" for line in (
            "536365,85123A,WHITE HANGING HEART ,6,2010-12-01 08:26:00,2.55,17850,United Kingdom",
            "536365,POST,POSTAGE,1,2010-12-01 08:26:00,18.00,17850,United Kingdom",
            "C536379,85123A,WHITE HANGING HEART,-2,2010-12-02 09:41:00,2.55,17850,United Kingdom",
            "536380,22423,REGENCY CAKESTAND,1,2010-12-02 10:00:00,12.75,,United Kingdom",
            "536381,gift_0001_20,Dotcomgiftshop Gift Voucher,1,2010-12-03 10:00:00,17.02,14000,France",
            "A563185,B,Adjust bad debt,1,2011-08-12 14:50:00,-11062.06,,United Kingdom",
            "536382,22423,REGENCY CAKESTAND,2,2010-12-04 10:00:00,12.75,14000,France",
        )))
    report = import_online_retail(src, tmp_path / "out")
    assert (report.read, report.loaded, report.rejected) == (7, 3, 4)
    assert report.reasons == {
        "missing CustomerID": 1,  # the source's column, as in the rejects file
        "not a product: bad-debt adjustment code B": 1,
        "not a product: gift voucher": 1,
        "not a product: postage code POST": 1,
    }
    tables, validation = load_data_dir(tmp_path / "out")
    assert validation.rejected == 0
    orders = tables.frame("orders").set_index("order_id")
    assert orders.loc["C536379", "quantity"] == -2  # a cancellation is a return
    products = tables.frame("products").set_index("product_id")
    assert sorted(products.index) == ["22423", "85123A"]
    assert products.loc["85123A", "name"] == "WHITE HANGING HEART"  # trimmed, most frequent
    assert products.loc["22423", "price"] == 12.75
    customers = tables.frame("customers").set_index("customer_id")
    assert customers["country"].to_dict() == {"14000": "France", "17850": "United Kingdom"}
    rejects = pd.read_csv(tmp_path / "out" / "_rejects" / "uci.csv", dtype=str)
    assert list(rejects.columns[:4]) == ["source_row", "reason", "customer_id", "InvoiceNo"]
    assert sorted(rejects["source_row"].astype(int)) == [2, 4, 5, 6]


def test_online_retail_wrong_layout_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "x.csv"
    src.write_text("InvoiceNo,StockCode\n1,2\n")
    with pytest.raises(ContractError, match="not the UCI Online Retail layout; missing column.s. Description") as err:
        import_online_retail(src, tmp_path / "out")
    assert "(or the UCI Online Retail II layout: Invoice, StockCode" in str(err.value)  # the other one is named
    src.write_text("Invoice,StockCode,Customer ID\n1,2,3\n")  # closer to Online Retail II: its columns are listed
    with pytest.raises(ContractError, match="not the UCI Online Retail II layout; missing column.s. Description, "
                                            "Quantity, InvoiceDate, Price, Country"):
        import_online_retail(src, tmp_path / "out")
    with pytest.raises(ContractError, match="not the UCI Online Retail layout; missing column.s. InvoiceNo, "):
        import_online_retail(src, tmp_path / "out", layout="online-retail")  # a layout given is checked


def test_real_online_retail_accounts_for_every_row(online_retail_path: Path, tmp_path: Path) -> None:
    report = import_online_retail(online_retail_path, tmp_path)
    assert report.read == 541_909
    assert report.loaded + report.rejected == 541_909
    assert report.reasons["missing CustomerID"] > 130_000
    assert report.tables["customers"] > 4_300
    rejects = pd.read_csv(report.rejects_file, dtype=str, usecols=["source_row", "reason"])
    assert len(rejects) == report.rejected and rejects["source_row"].is_unique
    tables, validation = load_data_dir(tmp_path)
    assert validation.rejected == 0 and tables.count("orders") == report.loaded
    returns = tables.con.execute("SELECT count(*) FROM orders WHERE quantity < 0").fetchall()[0][0]
    assert returns > 8_000  # cancellations with a customer are kept as returns


def test_real_online_retail_in_uk_time_agrees_with_pandas(online_retail_path: Path, tmp_path: Path) -> None:
    """InvoiceDate is UK local time: read in Europe/London, each invoice's time is what pandas' own
    time zone code (zoneinfo) makes of it. The shop sold nothing in an hour that DST skips or repeats
    (ambiguous="raise" would say so), so the two rules for those hours cannot differ here."""
    report = import_online_retail(online_retail_path, tmp_path, timezone="Europe/London")
    assert (report.read, report.loaded, report.timezone) == (541_909, 399_691, "Europe/London")  # as in UTC
    tables, validation = load_data_dir(tmp_path)
    assert validation.rejected == 0
    got = tables.con.execute("SELECT order_id, min(ordered_at) FROM orders GROUP BY 1").df().set_index("order_id")
    source = pd.read_csv(online_retail_path, usecols=["InvoiceNo", "InvoiceDate"], dtype=str)
    local = pd.to_datetime(source["InvoiceDate"]).dt.tz_localize("Europe/London", ambiguous="raise",
                                                                 nonexistent="raise")
    expected = local.dt.tz_convert("UTC").dt.tz_localize(None).groupby(source["InvoiceNo"]).min()
    expected = expected.reindex(got.index)
    assert (got.iloc[:, 0] == expected).all()
    shift = (pd.to_datetime(source["InvoiceDate"]).groupby(source["InvoiceNo"]).min().reindex(got.index)
             - got.iloc[:, 0]).value_counts()
    assert set(shift.index) == {pd.Timedelta(0), pd.Timedelta(hours=1)} and shift.min() > 5_000  # GMT and BST


def test_movielens_mapping_and_rejects(tmp_path: Path) -> None:
    src = tmp_path / "ratings.csv"
    src.write_text("userId,movieId,rating,timestamp\n1,10,4.5,964982703\n1,11,2.0,964982704\n"
                   "2,10,7,964982705\n2,12,3.0,notatime\n1,10,4.5,964982703\n")
    report = import_movielens(src, tmp_path / "out")
    assert (report.read, report.loaded, report.rejected) == (5, 2, 3)
    assert report.tables == {"orders": 1, "customers": 1, "events": 2, "products": 2}
    tables, _ = load_data_dir(tmp_path / "out")
    assert tables.frame("orders")["product_id"].tolist() == ["10"]
    assert str(tables.frame("events")["occurred_at"].iloc[0]) == "2000-07-30 18:45:03"


def test_real_movielens(movielens_path: Path, tmp_path: Path) -> None:
    report = import_movielens(movielens_path, tmp_path)
    assert report.read == 100_836 and report.rejected == 0
    assert report.tables["customers"] == 610 and report.tables["products"] == 9_724
