"""A shop's own export to the contract: Online Retail II, a Shopify orders export, any CSV by a column
mapping, the one entry point and its commands. Every fixture is written here, hostile bits included
(a byte-order mark, semicolons, a formula-looking name, a javascript: link); every output is loaded
back through load_data_dir, which must take it whole."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.errors import InputError
from features.importers import ImportFormat, parse_mapping, run_import
from features.importers.shopify import EXPORT_COLUMNS
from features.importers.uci_retail import import_online_retail
from features.io import load_data_dir, write_tombstones
from features.privacy import drop_customer_rows
from features.tombstones import Tombstones
from features.validate import ContractError
from sendwise.cli import app

runner = CliRunner()
II_HEADER = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country\n"
FORMULA = '=HYPERLINK("http://evil.example/x","Click me")'


def loaded(out: Path, timezone: str | None = None):
    """The output loaded back: it must validate without a single reject."""
    tables, report = load_data_dir(out, timezone=timezone)
    assert report.rejected == 0, [t.reasons for t in report.tables]
    return tables


def rejects_of(report) -> dict[int, str]:
    frame = pd.read_csv(report.rejects_file, dtype=str, keep_default_na=False)
    return dict(zip(frame["source_row"].astype(int), frame["reason"], strict=True))


# Online Retail II ---------------------------------------------------------------------------------

II_ROWS = [
    "489434,85048,15CM CHRISTMAS GLASS BALL 20 LIGHTS,12,2009-12-01 07:45:00,6.95,13085.0,United Kingdom",
    "489434,79323W,WHITE CHERRY LIGHTS,12,2009-12-01 07:45:00,6.75,13085.0,United Kingdom",
    "C489449,85048,15CM CHRISTMAS GLASS BALL 20 LIGHTS,-1,2009-12-01 10:33:00,6.95,13085.0,United Kingdom",
    "489435,POST,POSTAGE,1,2009-12-01 07:46:00,18.00,13085.0,United Kingdom",
    "489436,ADJUST2,Adjustment by Peter on 24/05/2010 1,1,2010-05-24 12:00:00,300.13,14000.0,France",
    "489437,TEST001,This is a test product.,5,2010-07-01 12:00:00,4.50,14000.0,France",
    "489438,22423,REGENCY CAKESTAND 3 TIER,1,2010-07-01 12:00:00,12.75,,United Kingdom",
    "489439,22423,REGENCY CAKESTAND 3 TIER,2,2010-07-01 12:00:00,12.75,14000.0,France",
]


def write_ii(path: Path) -> Path:
    path.write_text(II_HEADER + "\n".join(II_ROWS) + "\n")
    return path


def test_online_retail_ii_is_told_from_its_header_and_follows_the_same_rules(tmp_path: Path) -> None:
    src = write_ii(tmp_path / "online_retail_II.csv")
    report = import_online_retail(src, tmp_path / "out", timezone="Europe/London")
    assert (report.read, report.loaded, report.rejected) == (8, 4, 4)
    assert report.reasons == {
        "missing Customer ID": 1,  # the II layout's own column names in the reasons
        "not a product: adjustment code ADJUST2": 1,
        "not a product: postage code POST": 1,
        "not a product: test code TEST001": 1,
    }
    tables = loaded(tmp_path / "out")
    orders = tables.frame("orders").sort_values(["ordered_at", "product_id"])
    assert set(orders["customer_id"]) == {"13085", "14000"}  # 13085.0 as Excel saved it: the id 13085
    assert orders.loc[orders["order_id"] == "C489449", "quantity"].item() == -1  # a cancellation is a return
    # UK time: December is GMT (= UTC), July is BST (UTC+1)
    assert orders["ordered_at"].iloc[0] == pd.Timestamp("2009-12-01 07:45")
    assert orders["ordered_at"].iloc[-1] == pd.Timestamp("2010-07-01 11:00")
    customers = tables.frame("customers").set_index("customer_id")
    assert customers["country"].to_dict() == {"13085": "United Kingdom", "14000": "France"}
    assert sorted(tables.frame("products")["product_id"]) == ["22423", "79323W", "85048"]


def test_online_retail_ii_by_format_and_the_wrong_file_for_it(tmp_path: Path) -> None:
    src = write_ii(tmp_path / "ii.csv")
    for fmt in (ImportFormat.ONLINE_RETAIL, ImportFormat.ONLINE_RETAIL_II):
        assert run_import(fmt, src, tmp_path / fmt.value).loaded == 4
    one = tmp_path / "one.csv"
    one.write_text("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
                   "536365,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850,United Kingdom\n")
    with pytest.raises(ContractError, match="one.csv: not the UCI Online Retail II layout; missing column.s. "
                                            "Invoice, Price, Customer ID"):
        run_import("online-retail-ii", one, tmp_path / "o")


# Shopify ------------------------------------------------------------------------------------------

def shopify_csv(rows: list[dict[str, str]], bom: bool = True) -> str:
    """Rows as Shopify writes its export: every column of the header, most of them empty here."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return ("\ufeff" if bom else "") + buffer.getvalue()


def order(name: str, email: str, created: str, *, status: str = "paid", marketing: str = "no",
          country: str = "FR", currency: str = "EUR", cancelled: str = "", paid: str = "") -> dict[str, str]:
    """The order's own fields, as on its first row."""
    return {"Name": name, "Email": email, "Financial Status": status, "Paid at": paid or created,
            "Accepts Marketing": marketing, "Currency": currency, "Created at": created,
            "Billing Country": country, "Cancelled at": cancelled, "Id": name.strip("#")}


def item(name: str, sku: str, quantity: str, price: str, vendor: str = "Acme") -> dict[str, str]:
    return {"Lineitem name": name, "Lineitem sku": sku, "Lineitem quantity": quantity, "Lineitem price": price,
            "Vendor": vendor}


def next_line(name: str, created: str, **line: str) -> dict[str, str]:
    """A later row of an order: the line item only (and Name, Created at), the order's fields empty."""
    return {"Name": name, "Created at": created, **line}


SHOPIFY_ROWS = [  # newest first, as the export lists orders
    order("#1006", "jane@shop.example", "2024-03-09 18:00:00 -0500", marketing="no", country="US", currency="USD")
    | item("Mug", "MUG-1", "1", "12.50"),
    order("#1005", "ann@shop.example", "2024-03-08 10:00:00 +0100", status="partially_refunded")
    | item("Mug", "MUG-1", "3", "12.50"),
    order("#1004", "bob@shop.example", "2024-03-07 10:00:00 +0100", status="voided") | item("Mug", "MUG-1", "1", "12.50"),
    order("#1003", "bob@shop.example", "2024-03-06 10:00:00 +0100", status="refunded")
    | item("Mug", "MUG-1", "1", "12.50"),
    order("#1002", "bob@shop.example", "2024-03-05 10:00:00 +0100", cancelled="2024-03-05 12:00:00 +0100")
    | item("Mug", "MUG-1", "2", "12.50"),
    order("#1001", "", "2024-03-04 10:00:00 +0100") | item("Mug", "MUG-1", "1", "12.50"),  # a POS sale, no email
    order("#1000", " Jane@Shop.Example ", "2024-03-01 10:15:00 +0100", marketing="yes", country="FR")
    | item("Mug", "MUG-1", "2", "12.50"),
    next_line("#1000", "2024-03-01 10:15:00 +0100", **item(FORMULA, "", "1", "3.00")),  # no SKU: its name
    next_line("#1000", "2024-03-01 10:15:00 +0100", **item("Tea towel", "TT-2", "1", "7.00")),
]


def test_shopify_export_end_to_end(tmp_path: Path) -> None:
    src = tmp_path / "orders_export_1.csv"
    src.write_text(shopify_csv(SHOPIFY_ROWS), encoding="utf-8")
    report = run_import("shopify", src, tmp_path / "out", timezone="America/New_York")
    assert (report.read, report.loaded, report.rejected) == (9, 5, 4)
    assert rejects_of(report) == {
        3: "voided order (Financial Status voided)",
        4: "refunded order (Financial Status refunded)",
        5: "cancelled order (Cancelled at is set)",
        6: "missing Email",
    }
    assert report.warnings == ["orders in 2 currencies (EUR, USD): unit prices are loaded as they are, not converted"]
    tables = loaded(tmp_path / "out", timezone="America/New_York")  # the project's zone again: no second shift
    orders = tables.frame("orders").set_index(["order_id", "product_id"]).sort_index()
    # the order's fields reach its later rows: one customer (the email, trimmed and lower-cased), one time
    first = orders.loc["#1000"]
    assert set(first["customer_id"]) == {"jane@shop.example"}
    assert set(first["ordered_at"]) == {pd.Timestamp("2024-03-01 09:15")}  # +0100 honoured, whatever the zone
    assert sorted(first.index) == sorted(["MUG-1", "TT-2", FORMULA])  # no SKU: the name, verbatim, as data
    assert orders.loc[("#1006", "MUG-1"), "ordered_at"] == pd.Timestamp("2024-03-09 23:00")
    assert orders.loc[("#1005", "MUG-1"), "quantity"] == 3  # partially refunded: still a purchase
    customers = tables.frame("customers").set_index("customer_id")
    assert customers.loc["jane@shop.example", "email_consent"] == False
    assert customers.loc["jane@shop.example", "country"] == "FR"  # most frequent over her lines (3 FR, 1 US)
    assert customers.loc["ann@shop.example", "email_consent"] == False
    products = tables.frame("products").set_index("product_id")
    assert products.loc[FORMULA, "name"] == FORMULA and products.loc["TT-2", "name"] == "Tea towel"
    assert products.loc["MUG-1", "price"] == 12.5
    rejected = pd.read_csv(report.rejects_file, dtype=str, keep_default_na=False)
    assert list(rejected.columns) == ["source_row", "reason", "customer_id", *EXPORT_COLUMNS]  # the row as it was
    assert rejected.loc[rejected["source_row"] == "5", "Cancelled at"].item() == "2024-03-05 12:00:00 +0100"
    # a customer forgotten later is found in the rejects by the contract's id, not the export's "Email"
    assert drop_customer_rows(report.rejects_file, {"bob@shop.example"}) == {"bob@shop.example": 3}
    assert rejects_of(report) == {6: "missing Email"}


def test_shopify_consent_is_the_latest_orders_and_forgotten_customers_stay_out(tmp_path: Path) -> None:
    rows = [
        order("#2", "kim@shop.example", "2024-03-02 10:00:00 +0000", marketing="yes") | item("Mug", "MUG-1", "1", "5"),
        next_line("#2", "2024-03-02 10:00:00 +0000", **item("Cup", "CUP-1", "1", "4")),
        order("#1", "kim@shop.example", "2024-03-01 10:00:00 +0000", marketing="no") | item("Mug", "MUG-1", "1", "5"),
        order("#3", "Gone@Shop.example", "2024-03-03 10:00:00 +0000") | item("Mug", "MUG-1", "1", "5"),
        next_line("#3", "2024-03-03 10:00:00 +0000", **item("Cup", "CUP-1", "1", "4")),  # carries the email
    ]
    src = tmp_path / "orders_export.csv"
    src.write_text(shopify_csv(rows, bom=False))
    out = tmp_path / "out"
    write_tombstones(out, Tombstones().adding(["gone@shop.example"]))
    report = run_import(ImportFormat.SHOPIFY, src, out)
    assert (report.read, report.loaded, report.rejected, report.forgotten) == (5, 3, 0, 2)
    customers = loaded(out).frame("customers").set_index("customer_id")
    assert customers["email_consent"].to_dict() == {"kim@shop.example": True}  # March 2 (later) said yes


def test_shopify_mapping_replaces_a_default(tmp_path: Path) -> None:
    rows = [order("#1", "kim@shop.example", "2024-03-01 10:00:00", paid="2024-03-01 11:30:00")
            | item("Mug", "MUG-1", "1", "5", vendor="Bean & Co")]
    src = tmp_path / "orders_export.csv"
    src.write_text(shopify_csv(rows))
    run_import("shopify", src, tmp_path / "out", mapping={"ordered_at": "Paid at", "category": "Vendor"},
               timezone="Europe/Berlin")
    tables = loaded(tmp_path / "out")
    assert tables.frame("orders")["ordered_at"].item() == pd.Timestamp("2024-03-01 10:30")  # CET, naive
    assert tables.frame("products")["category"].item() == "Bean & Co"


def test_shopify_rows_without_an_order_name_borrow_nothing(tmp_path: Path) -> None:
    rows = [{"Email": "a@x.example", "Created at": "2024-01-01", "Cancelled at": "2024-01-02"} | item("Mug", "M", "1", "5"),
            {"Created at": "2024-01-01"} | item("Mug", "M", "1", "5")]  # no Name: not the row above's order
    src = tmp_path / "orders_export.csv"
    src.write_text(shopify_csv(rows))
    report = run_import("shopify", src, tmp_path / "out")
    assert rejects_of(report) == {1: "cancelled order (Cancelled at is set)", 2: "missing Name"}


def test_a_file_that_is_not_a_shopify_export_names_what_is_missing(tmp_path: Path) -> None:
    src = tmp_path / "orders.csv"
    src.write_text("Name,Email,Created at\n#1,a@b.example,2024-01-01\n")
    with pytest.raises(ContractError, match="orders.csv: not a Shopify orders export; missing column.s. "
                                            "Lineitem name, Lineitem quantity, Lineitem price") as err:
        run_import("shopify", src, tmp_path / "out")
    assert "The file's columns: Name, Email, Created at." in str(err.value)
    assert not (tmp_path / "out").exists()


# Any CSV, by a column mapping ---------------------------------------------------------------------

GERMAN = {"order_id": "Bestellung", "customer_id": "Kunde", "product_id": "Artikel", "quantity": "Menge",
          "unit_price": "Preis", "ordered_at": "Datum", "name": "Bezeichnung", "url": "Link", "country": "Land",
          "email_consent": "Newsletter"}


def test_mapped_csv_with_semicolons_a_bom_and_hostile_values(tmp_path: Path) -> None:
    src = tmp_path / "bestellungen.csv"
    quoted_formula = '"' + FORMULA.replace('"', '""') + '"'
    src.write_bytes(("\ufeffBestellung;Kunde;Artikel;Menge;Preis;Datum;Bezeichnung;Link;Land;Newsletter;reason\n"
                     f"B1;Anna@Example.de;A-1;2;9.90;2024-07-01 12:00;{quoted_formula};"
                     "javascript:alert(1);DE;ja;gift\n"
                     "B1;Anna@Example.de;A-2;1;4.50;2024-07-01 12:00;Becher;https://shop.example/a-2;DE;ja;\n"
                     "B2;ben@example.de;A-1;1;9,90;2024-07-02 08:00;Tasse;;AT;nein;\n"
                     "B3;ben@example.de;A-2;1;4.50;2024-07-03 09:00:00+02:00;Becher;;AT;true;\n"
                     "B4;;A-2;1;4.50;2024-07-04 09:00;Becher;;AT;true;\n").encode())
    report = run_import("csv", src, tmp_path / "out", mapping=GERMAN, timezone="Europe/Berlin")
    assert (report.read, report.loaded, report.rejected) == (5, 3, 2)
    assert rejects_of(report) == {3: "unparseable Preis (expected a number)", 5: "missing Kunde"}
    assert report.warnings == [("1 product url value(s) are not absolute http(s) URLs (e.g. 'javascript:alert(1)'); "
                                "emails show those products without a link or image")]
    tables = loaded(tmp_path / "out")
    orders = tables.frame("orders").set_index(["order_id", "product_id"]).sort_index()
    assert orders.loc[("B1", "A-1"), "customer_id"] == "anna@example.de"  # an email: lower-cased
    assert orders.loc[("B1", "A-1"), "ordered_at"] == pd.Timestamp("2024-07-01 10:00")  # CEST, UTC+2
    assert orders.loc[("B3", "A-2"), "ordered_at"] == pd.Timestamp("2024-07-03 07:00")  # its own offset
    products = tables.frame("products").set_index("product_id")
    assert products.loc["A-1", "name"] == FORMULA  # text, kept as it was: not a formula, not altered
    assert products.loc["A-1", "url"] == "javascript:alert(1)"  # loaded, counted in the warning, never linked
    customers = tables.frame("customers").set_index("customer_id")
    assert customers["country"].to_dict() == {"anna@example.de": "DE", "ben@example.de": "AT"}
    # "ja"/"nein" are not booleans the contract knows: consent unknown; ben's latest valid line says true
    assert pd.isna(customers.loc["anna@example.de", "email_consent"])
    assert customers.loc["ben@example.de", "email_consent"] == True
    rejected = pd.read_csv(report.rejects_file, dtype=str, keep_default_na=False)
    assert list(rejected.columns[:4]) == ["source_row", "reason", "customer_id", "Bestellung"]
    assert rejected.columns[-1] == "reason_1"  # the file's own column 'reason', renamed beside ours


def test_mapped_csv_takes_columns_named_as_the_contract(tmp_path: Path) -> None:
    src = tmp_path / "lines.csv"
    src.write_text("order_id,customer_id,product_id,quantity,unit_price,Paid at,name\n"
                   "1,c1,p1,1,2.50,2024-01-05 10:00,Customer Name Not A Product\n")
    report = run_import("csv", src, tmp_path / "out", mapping=parse_mapping(['ordered_at= Paid at ']))
    assert report.loaded == 1
    tables = loaded(tmp_path / "out")
    assert pd.isna(tables.frame("products")["name"].item())  # name is read only when mapped
    assert tables.frame("orders")["ordered_at"].item() == pd.Timestamp("2024-01-05 10:00")


def test_mapped_csv_errors_say_what_is_missing_and_what_exists(tmp_path: Path) -> None:
    src = tmp_path / "lines.csv"
    src.write_text("Order,Email,SKU,Qty,Price,Paid at\n1,a@b.example,p1,1,2.5,2024-01-05\n")
    with pytest.raises(InputError) as err:
        run_import("csv", src, tmp_path / "out", mapping={"customer_id": "Email"})
    message = str(err.value)
    assert "no column for order_id, product_id, quantity, unit_price, ordered_at" in message
    assert "--map order_id=COLUMN" in message and "The file's columns: Order, Email, SKU, Qty, Price, Paid at." in message
    with pytest.raises(InputError, match=r"no column 'Paid_at' \(mapped to ordered_at\). Did you mean 'Paid at'\? "
                                         r"The file's columns: Order, Email"):
        run_import("csv", src, tmp_path / "out", mapping={"ordered_at": "Paid_at"})
    with pytest.raises(InputError, match=r"unknown contract column\(s\) 'paid_at' in the column mapping; expected one "
                                         r"of order_id, customer_id, .*, email_consent"):
        run_import("csv", src, tmp_path / "out", mapping={"paid_at": "Paid at"})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("items", "message"), [
    (["ordered_at"], "expected CONTRACT_COLUMN=SOURCE_COLUMN"),
    (["ordered_at="], "expected CONTRACT_COLUMN=SOURCE_COLUMN"),
    (["ordered_at=Paid at", "ordered_at=Created at"], "--map ordered_at is given twice"),
    (["ordred_at=Paid at"], "unknown contract column.s. 'ordred_at'"),
])
def test_parse_mapping_refuses_what_it_cannot_read(items: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_mapping(items)


def test_parse_mapping_keeps_an_equals_sign_in_the_column() -> None:
    assert parse_mapping(["name=Title=Short", "ordered_at = Paid at"]) == {"name": "Title=Short", "ordered_at": "Paid at"}


# The entry point and the commands ---------------------------------------------------------------

def test_run_import_refuses_options_a_format_does_not_take(tmp_path: Path) -> None:
    src = write_ii(tmp_path / "ii.csv")
    with pytest.raises(InputError, match="unknown import format 'woocommerce'; expected one of online-retail, "
                                         "online-retail-ii, shopify, csv, movielens"):
        run_import("woocommerce", src, tmp_path / "out")
    with pytest.raises(InputError, match="a column mapping applies to the shopify and csv formats"):
        run_import("online-retail", src, tmp_path / "out", mapping={"ordered_at": "InvoiceDate"})
    with pytest.raises(InputError, match="unknown time zone 'Europe/Londres'"):
        run_import("online-retail", src, tmp_path / "out", timezone="Europe/Londres")
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("userId,movieId,rating,timestamp\n1,10,4.5,964982703\n")
    with pytest.raises(InputError, match="MovieLens timestamps are unix seconds"):
        run_import("movielens", ratings, tmp_path / "out", timezone="Europe/London")
    assert not (tmp_path / "out").exists()


def test_an_import_loaded_with_the_same_zone_is_not_shifted_twice(tmp_path: Path) -> None:
    src = write_ii(tmp_path / "ii.csv")
    run_import("online-retail-ii", src, tmp_path / "out", timezone="Asia/Kolkata")  # UTC+5:30
    once = loaded(tmp_path / "out").frame("orders")["ordered_at"].min()
    again = loaded(tmp_path / "out", timezone="Asia/Kolkata").frame("orders")["ordered_at"].min()
    assert once == again == pd.Timestamp("2009-12-01 02:15")


def test_the_commands(tmp_path: Path) -> None:
    src = tmp_path / "lines.csv"
    src.write_text("Order,Email,SKU,Qty,Price,Paid at,Link\n1,a@b.example,p1,1,2.5,2024-01-05 10:00,javascript:x\n")
    result = runner.invoke(app, ["data", "import", "csv", str(src), "--out", str(tmp_path / "out"),
                                 "--map", "order_id=Order", "--map", "customer_id=Email", "--map", "product_id=SKU",
                                 "--map", "quantity=Qty", "--map", "unit_price=Price", "--map", "ordered_at=Paid at",
                                 "--map", "url=Link", "--timezone", "America/New_York"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "read as America/New_York local time" in text and "not absolute http(s) URLs" in text
    assert loaded(tmp_path / "out").frame("orders")["ordered_at"].item() == pd.Timestamp("2024-01-05 15:00")
    for args, message in [
        (["--map", "order_id"], "expected CONTRACT_COLUMN=SOURCE_COLUMN"),
        (["--map", "customer_id=Email", "--timezone", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
        (["--map", "customer_id=Email"], "no column for order_id, product_id"),
    ]:
        result = runner.invoke(app, ["data", "import", "csv", str(src), "--out", str(tmp_path / "o2"), *args])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    shopify = tmp_path / "orders_export.csv"
    shopify.write_text(shopify_csv(SHOPIFY_ROWS))
    result = runner.invoke(app, ["data", "import", "shopify", str(shopify), "--out", str(tmp_path / "shop")])
    assert result.exit_code == 0 and "cancelled order (Cancelled at is set)" in result.output, result.output
    result = runner.invoke(app, ["data", "import", "online-retail-ii", str(write_ii(tmp_path / "ii.csv")),
                                 "--out", str(tmp_path / "ii"), "--timezone", "Europe/London"])
    assert result.exit_code == 0 and "not a product: test code TEST001" in result.output, result.output
