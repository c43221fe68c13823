"""UCI Online Retail to the data contract, in either of its layouts:

* Online Retail (2010-2011): InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice,
  CustomerID, Country;
* Online Retail II (2009-2011): Invoice, StockCode, Description, Quantity, InvoiceDate, Price,
  Customer ID, Country (ids may be written ``13085.0``).

The layout is told from the header unless it is given. Both follow the same rules
(:mod:`features.importers.order_lines` does the work):

* every invoice line becomes an order line; cancellations (``C`` invoices, negative quantity) stay
  as returns;
* lines of customers forgotten in the output directory (``sendwise privacy forget``) are left out;
* lines whose StockCode is a fee, postage, adjustment, test or gift voucher are not products: they
  are rejected with that reason, as are lines without a customer and every other contract breach;
* ``products`` comes from the product lines (most frequent description, median positive price; the
  source has no categories); ``customers`` from the loaded lines (most frequent country).

InvoiceDate is UK local time without a zone: give ``timezone="Europe/London"`` to store it as UTC
(without one it is read as UTC, as every naive timestamp is).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import duckdb

from features import schema as s
from features.errors import InputError
from features.importers.order_lines import ORDER_COLUMNS, LineLayout, import_lines, text_sql
from features.importers.report import (
    ImportReport,
    check_import_paths,
    missing_columns,
    read_source,
    require_columns,
    require_rows,
)
from features.io import Encoding
from features.timezones import check_timezone


class RetailLayout(StrEnum):
    ONLINE_RETAIL = "UCI Online Retail"
    ONLINE_RETAIL_II = "UCI Online Retail II"

    @property
    def columns(self) -> dict[str, str]:
        """Contract column -> source column, in the source's order."""
        return _COLUMNS[self]

    @property
    def what(self) -> str:
        return f"the {self.value} layout"


_COLUMNS = {
    RetailLayout.ONLINE_RETAIL: {
        s.ORDER_ID: "InvoiceNo", s.PRODUCT_ID: "StockCode", s.NAME: "Description", s.QUANTITY: "Quantity",
        s.ORDERED_AT: "InvoiceDate", s.UNIT_PRICE: "UnitPrice", s.CUSTOMER_ID: "CustomerID", s.COUNTRY: "Country"},
    RetailLayout.ONLINE_RETAIL_II: {
        s.ORDER_ID: "Invoice", s.PRODUCT_ID: "StockCode", s.NAME: "Description", s.QUANTITY: "Quantity",
        s.ORDERED_AT: "InvoiceDate", s.UNIT_PRICE: "Price", s.CUSTOMER_ID: "Customer ID", s.COUNTRY: "Country"},
}
SOURCE_COLUMNS = tuple(RetailLayout.ONLINE_RETAIL.columns.values())
CUSTOMER_COLUMN = "CustomerID"
# contract column -> the source column it comes from, so that errors and reasons use the source's names
SOURCE_NAMES = {k: v for k, v in RetailLayout.ONLINE_RETAIL.columns.items() if k in ORDER_COLUMNS}
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
NON_PRODUCT_PREFIXES = {"ADJUST": "adjustment", "TEST": "test"}  # ADJUST2, TEST001 (Online Retail II)
GIFT_VOUCHER_PREFIX = "GIFT_0001"


def _non_product_reason_sql() -> str:
    code = "upper(trim(StockCode))"
    whens = " ".join(
        f"WHEN {code} = '{c}' THEN 'not a product: {what} code {c}'" for c, what in NON_PRODUCT_CODES.items()
    )
    prefixes = " ".join(f"WHEN starts_with({code}, '{p}') THEN 'not a product: {what} code ' || {code}"
                        for p, what in NON_PRODUCT_PREFIXES.items())
    return (f"CASE {whens} WHEN starts_with({code}, '{GIFT_VOUCHER_PREFIX}') THEN 'not a product: gift voucher' "
            f"{prefixes} END")


def retail_layout(layout: RetailLayout | str) -> RetailLayout:
    """``layout`` as a :class:`RetailLayout`: a member, its value or its name (``online-retail-ii``)."""
    if isinstance(layout, RetailLayout) or layout in set(RetailLayout):
        return RetailLayout(layout)
    try:
        return RetailLayout[str(layout).strip().upper().replace("-", "_")]
    except KeyError:
        raise InputError(f"unknown Online Retail layout {layout!r}; expected "
                         f"{' or '.join(lay.name.lower().replace('_', '-') for lay in RetailLayout)}.") from None


def _layout_of(con: duckdb.DuckDBPyConnection, src: Path, layout: RetailLayout | None) -> RetailLayout:
    """``layout`` checked against the header; when None, the layout the header has (the closer one
    names what is missing, and the other is named too)."""
    if layout is not None:
        require_columns(con, src, tuple(layout.columns.values()), layout.what)
        return layout
    missing = {lay: missing_columns(con, lay.columns.values()) for lay in RetailLayout}
    closest = min(RetailLayout, key=lambda lay: len(missing[lay]))  # ties: Online Retail, the first
    other = next(lay for lay in RetailLayout if lay is not closest)
    require_columns(con, src, tuple(closest.columns.values()), closest.what,
                    also=f" (or {other.what}: {', '.join(other.columns.values())})")
    return closest


def import_online_retail(src: Path | str, out_dir: Path | str, encoding: Encoding | str = Encoding.UTF_8,
                         timezone: str | None = None, layout: RetailLayout | str | None = None) -> ImportReport:
    """Convert the UCI file at ``src`` (CSV in ``encoding``) into contract tables in ``out_dir``
    (rejects in ``_rejects``). ``layout``: a :class:`RetailLayout` (or its name); None: told from the
    header. Naive InvoiceDates are local times in ``timezone`` (None: UTC)."""
    src = Path(src)
    zone = check_timezone(timezone)
    given = None if layout is None else retail_layout(layout)
    check_import_paths(src, out_dir)
    con = read_source(src, (given or RetailLayout.ONLINE_RETAIL).what, encoding)
    chosen = _layout_of(con, src, given)
    require_rows(con, src, chosen.what)
    columns = {contract: text_sql(source) for contract, source in chosen.columns.items()}
    names = {k: v for k, v in chosen.columns.items() if k in ORDER_COLUMNS}
    lines = LineLayout(chosen.what, columns, names, not_a_line=_non_product_reason_sql())
    return import_lines(con, src, out_dir, lines, zone)
