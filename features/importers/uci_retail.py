"""UCI Online Retail (InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice,
CustomerID, Country) to the data contract.

* every invoice line becomes an order line; cancellations (``C`` invoices, negative quantity) stay
  as returns;
* lines of customers forgotten in the output directory (``sendwise privacy forget``) are left out;
* lines whose StockCode is a fee, postage, adjustment or gift voucher are not products: they are
  rejected with that reason, as are lines without a customer and every other contract breach;
* ``products`` comes from the product lines (most frequent description, median positive price; the
  source has no categories); ``customers`` from the loaded lines (most frequent country).

InvoiceDate is UK local time without a zone; like every naive timestamp it is read as UTC.
"""

from __future__ import annotations

from pathlib import Path

from features import schema as s
from features.importers.report import (
    ImportReport,
    check_import_paths,
    open_source,
    skip_forgotten_source,
    write_import,
)
from features.io import Encoding
from features.tables import Tables, create_empty
from features.validate import ROW_ID, validate_raw

SOURCE_COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
CUSTOMER_COLUMN = "CustomerID"
# contract column -> the source column it comes from, so that errors and reasons use the source's names
SOURCE_NAMES = {s.ORDER_ID: "InvoiceNo", s.CUSTOMER_ID: CUSTOMER_COLUMN, s.PRODUCT_ID: "StockCode",
                s.QUANTITY: "Quantity", s.UNIT_PRICE: "UnitPrice", s.ORDERED_AT: "InvoiceDate"}
NON_PRODUCT_CODES = {
    "POST": "postage",
    "DOT": "postage",
    "C2": "carriage",
    "M": "manual adjustment",
    "D": "discount",
    "S": "samples",
    "B": "bad-debt adjustment",
    "BANK CHARGES": "bank charges",
    "AMAZONFEE": "marketplace fee",
    "CRUK": "charity commission",
}
GIFT_VOUCHER_PREFIX = "GIFT_0001"


def _non_product_reason_sql() -> str:
    code = "upper(trim(StockCode))"
    whens = " ".join(
        f"WHEN {code} = '{c}' THEN 'not a product: {what} code {c}'" for c, what in NON_PRODUCT_CODES.items()
    )
    return f"CASE {whens} WHEN starts_with({code}, '{GIFT_VOUCHER_PREFIX}') THEN 'not a product: gift voucher' END"


def import_online_retail(src: Path | str, out_dir: Path | str,
                         encoding: Encoding | str = Encoding.UTF_8) -> ImportReport:
    """Convert the UCI file at ``src`` (CSV in ``encoding``) into contract tables in ``out_dir``
    (rejects in ``_rejects``)."""
    src = Path(src)
    check_import_paths(src, out_dir)
    con = open_source(src, SOURCE_COLUMNS, "the UCI Online Retail layout", encoding)
    forgotten = skip_forgotten_source(con, CUSTOMER_COLUMN, out_dir)
    con.execute(f"CREATE TEMP TABLE uci_flagged AS SELECT *, {_non_product_reason_sql()} AS non_product FROM _source")
    con.execute(
        f"""CREATE TEMP VIEW uci_orders AS SELECT {ROW_ID},
              InvoiceNo AS {s.ORDER_ID}, CustomerID AS {s.CUSTOMER_ID}, trim(StockCode) AS {s.PRODUCT_ID},
              Quantity AS {s.QUANTITY}, UnitPrice AS {s.UNIT_PRICE}, InvoiceDate AS {s.ORDERED_AT}
            FROM uci_flagged WHERE non_product IS NULL"""
    )
    validate_raw(con, s.SPECS[s.Table.ORDERS], "uci_orders", str(src), names=SOURCE_NAMES)
    con.execute(
        f"""CREATE TABLE orders_import_rejects AS
            SELECT {ROW_ID} AS {s.SOURCE_ROW}, reason, * EXCLUDE ({ROW_ID}, reason) FROM (
              SELECT u.* EXCLUDE (non_product), coalesce(u.non_product, r.{s.REJECT_REASON}) AS reason
              FROM uci_flagged u LEFT JOIN orders_rejects r ON u.{ROW_ID} = r.{s.SOURCE_ROW}
              WHERE u.non_product IS NOT NULL OR r.{s.SOURCE_ROW} IS NOT NULL)
            ORDER BY {s.SOURCE_ROW}"""
    )
    con.execute(
        f"""CREATE TABLE products AS
            WITH lines AS (
              SELECT trim(StockCode) AS pid, NULLIF(trim(Description), '') AS name,
                     TRY_CAST(UnitPrice AS DOUBLE) AS price, TRY_CAST(Quantity AS DOUBLE) AS qty
              FROM uci_flagged WHERE non_product IS NULL)
            SELECT pid AS {s.PRODUCT_ID}, mode(name) AS {s.NAME}, CAST(NULL AS VARCHAR) AS {s.CATEGORY},
                   median(price) FILTER (WHERE price > 0 AND price <= {s.MAX_PRICE!r} AND qty > 0) AS {s.PRICE},
                   CAST(NULL AS VARCHAR) AS {s.IMAGE_URL}, CAST(NULL AS VARCHAR) AS {s.URL},
                   CAST(NULL AS BOOLEAN) AS {s.IN_STOCK}
            FROM lines GROUP BY pid ORDER BY pid"""
    )
    con.execute(
        f"""CREATE TABLE customers AS
            WITH country AS (
              SELECT trim(CustomerID) AS cid, mode(NULLIF(trim(Country), '')) AS country
              FROM uci_flagged GROUP BY 1)
            SELECT o.{s.CUSTOMER_ID}, CAST(NULL AS TIMESTAMP) AS {s.SIGNUP_AT},
                   c.country AS {s.COUNTRY}, CAST(NULL AS BOOLEAN) AS {s.EMAIL_CONSENT}
            FROM (SELECT DISTINCT {s.CUSTOMER_ID} FROM orders) o
            LEFT JOIN country c ON o.{s.CUSTOMER_ID} = c.cid ORDER BY 1"""
    )
    create_empty(con, s.SPECS[s.Table.EVENTS])
    return write_import(Tables(con), str(src), "orders_import_rejects", out_dir, forgotten=forgotten)
