"""The data contract: clear errors for wrong files and columns, every bad row rejected with a reason."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.io import load_data_dir
from features.validate import ContractError

ORDERS_HEADER = "order_id,customer_id,product_id,quantity,unit_price,ordered_at\n"


def write(dir_: Path, name: str, text: str) -> Path:
    path = dir_ / name
    path.write_text(text)
    return path


def test_bad_rows_go_to_rejects_with_reasons_and_every_row_is_accounted_for(tmp_path: Path) -> None:
    write(tmp_path, "orders.csv", ORDERS_HEADER + "\n".join([
        "1,c1,p1,2,3.5,2024-01-01 10:00",          # ok
        "1,c1,p1,2,3.5,2024-01-01 10:00",          # exact duplicate of row 1
        "2,,p1,1,3.5,2024-01-02",                  # missing customer
        "3,c2,p2,-1,3.5,2024-01-03T10:00:00+02:00",  # a return: kept, time converted to UTC
        "4,c2,p2,1,-3.5,2024-01-03",               # negative price
        "5,c3,p2,1,abc,2024-01-03",                # unparseable price
        "6,c3,p2,1,2,notadate",                    # unparseable date
        "7,c3,p2,0,2,2024-01-04",                  # zero quantity
    ]) + "\n")
    write(tmp_path, "events.csv", "customer_id,event_type,product_id,occurred_at\n"
          "c1,product_view,p1,2024-01-01\nc1,teleport,p1,2024-01-01\n")
    tables, report = load_data_dir(tmp_path)

    orders = {t.table: t for t in report.tables}["orders"]
    assert (orders.read, orders.loaded, orders.rejected) == (8, 2, 6)
    rejects = pd.read_csv(tmp_path / "_rejects" / "orders.csv", dtype=str)
    assert dict(zip(rejects["source_row"].astype(int), rejects["reason"], strict=True)) == {
        2: "exact duplicate of an earlier row",
        3: "missing customer_id",
        5: "negative unit_price",
        6: "unparseable unit_price (expected a number)",
        7: "unparseable ordered_at (expected a date or timestamp such as 2024-03-01 or 2024-03-01T09:30:00Z)",
        8: "zero quantity",
    }
    assert rejects.loc[rejects["source_row"] == "6", "unit_price"].item() == "abc"  # the text as given
    loaded = tables.frame("orders").set_index("order_id")
    assert loaded.loc["3", "quantity"] == -1
    assert loaded.loc["3", "ordered_at"] == pd.Timestamp("2024-01-03 08:00")
    event_rejects = pd.read_csv(tmp_path / "_rejects" / "events.csv")
    assert event_rejects["reason"].item().startswith("unknown event_type (expected one of product_view")
    assert sum(t.read for t in report.tables) == sum(t.loaded + t.rejected for t in report.tables)


def test_missing_column_names_file_column_and_close_match(tmp_path: Path) -> None:
    write(tmp_path, "orders.csv", "order_id,customer,product_id,quantity,unit_price,ordered_at\n1,c,p,1,1,2024-01-01\n")
    with pytest.raises(ContractError, match=r"orders.csv: missing required column 'customer_id'.*Did you mean 'customer'"):
        load_data_dir(tmp_path)


def test_a_column_of_the_wrong_type_is_an_error_with_an_example(tmp_path: Path) -> None:
    write(tmp_path, "orders.csv", ORDERS_HEADER + "1,c,p,1,cheap,2024-01-01\n2,c,p,1,dear,2024-01-02\n3,c,p,1,2.0,2024-01-02\n")
    with pytest.raises(ContractError, match=r"orders.csv: column 'unit_price' should hold a number, but 2 of 3 values are not, for example 'cheap'"):
        load_data_dir(tmp_path)


def test_no_orders_table_is_an_error_listing_accepted_names(tmp_path: Path) -> None:
    write(tmp_path, "customers.csv", "customer_id\nc\n")
    with pytest.raises(ContractError, match=r"no orders table. Expected orders.parquet, orders.csv or orders.csv.gz"):
        load_data_dir(tmp_path)


def test_two_files_for_one_table_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "orders.csv", ORDERS_HEADER)
    pd.DataFrame({"order_id": []}).to_parquet(tmp_path / "orders.parquet")
    with pytest.raises(ContractError, match="both orders.parquet and orders.csv exist"):
        load_data_dir(tmp_path)


def test_duplicate_keys_keep_the_first_row_and_extra_attributes_pass_through(tmp_path: Path) -> None:
    write(tmp_path, "orders.csv", ORDERS_HEADER + "1,c1,p1,1,1,2024-01-01\n")
    write(tmp_path, "customers.csv", "customer_id,signup_at,country,email_consent,vip\n"
          "c1,2023-01-01,UK,yes,1\nc1,2023-01-02,UK,no,0\nc2,,DE,,0\n")
    tables, report = load_data_dir(tmp_path)
    customers = tables.frame("customers").set_index("customer_id")
    assert list(customers.index) == ["c1", "c2"]
    assert bool(customers.loc["c1", "email_consent"]) is True
    assert pd.isna(customers.loc["c2", "email_consent"])
    assert customers.loc["c1", "vip"] == "1"
    reasons = {t.table: t.reasons for t in report.tables}["customers"]
    assert reasons == {"duplicate customer_id (first in row 1)": 1}


def test_parquet_input_with_typed_columns(tmp_path: Path, tiny_frames: dict[str, pd.DataFrame]) -> None:
    for name, frame in tiny_frames.items():
        frame.to_parquet(tmp_path / f"{name}.parquet")
    tables, report = load_data_dir(tmp_path)
    assert report.rejected == 0
    assert tables.count("orders") == len(tiny_frames["orders"])
    assert report.rejects_dir is None


def test_orphan_references_are_warned_about(tmp_path: Path) -> None:
    write(tmp_path, "orders.csv", ORDERS_HEADER + "1,c1,p1,1,1,2024-01-01\n")
    write(tmp_path, "customers.csv", "customer_id\nc2\n")
    _, report = load_data_dir(tmp_path)
    assert report.warnings == ["1 customer_id value(s) in orders are not in customers"]


def test_unsafe_product_links_are_counted_in_a_warning(tmp_path) -> None:
    (tmp_path / "orders.csv").write_text("order_id,customer_id,product_id,quantity,unit_price,ordered_at\n"
                                         "o1,c1,p1,1,2.5,2024-01-01\n")
    (tmp_path / "products.csv").write_text(
        "product_id,name,url,image_url\n"
        "p1,ok,https://shop.example/p1,HTTPS://cdn.example/p1.jpg\n"
        "p2,bad,javascript:alert(1)//,//evil.example/x.png\n"
        "p3,bad,\" JaVaScRiPt:alert(1)\",\"data:image/png;base64,AAAA\"\n"
        "p4,none,,\n")
    _, report = load_data_dir(tmp_path)
    assert any(w.startswith("2 product url value(s) are not absolute http(s) URLs") for w in report.warnings)
    assert any(w.startswith("2 product image_url value(s) are not absolute http(s) URLs") for w in report.warnings)
