"""A Shopify orders export (Admin > Orders > Export, CSV) to the data contract.

The export has one row per line item; the order's own fields (Email, Financial Status, Paid at,
Accepts Marketing, Currency, Billing Country, Cancelled at...) are often only on its first row: they
are carried to the order's other rows (rows of one order share its ``Name``). Then:

* order_id = ``Name`` (``#1001``); ordered_at = ``Created at``, whose offset (``2024-03-01 10:15:00
  +0100``) is honoured, so the shop's time zone only matters for times written without one;
* customer_id = ``Email``, trimmed and lower-cased: the email platform that calls the service knows
  a customer by their address, and Shopify keeps no other id in this export. A row without an email
  (a point-of-sale sale, a draft) is rejected, "missing Email";
* product_id = ``Lineitem sku``, else ``Lineitem name`` (a product without a SKU); quantity and
  unit_price = ``Lineitem quantity`` and ``Lineitem price`` (before discounts); the product's name =
  ``Lineitem name``;
* the customer's country = ``Billing Country`` (as Shopify writes it, a code such as ``FR``), the
  email consent = ``Accepts Marketing`` (yes/no; ``Accepts Email Marketing`` in some exports) of
  their latest order;
* a cancelled order (``Cancelled at`` set) and a refunded or voided one (``Financial Status``) never
  became a sale: their rows are rejected with that reason ("cancelled order", "refunded order",
  "voided order"), counted and written to the rejects file. A partially refunded order stays a
  purchase (the export does not say which lines were refunded).

A mapping (contract column -> column of the export, as for the csv format) replaces any of these
choices, e.g. ``{"ordered_at": "Paid at"}`` or ``{"category": "Vendor"}``. Orders in more than one
currency are loaded as they are, with a warning: prices are not converted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import duckdb

from features import schema as s
from features.importers.mapping import check_mapping, mapped_columns
from features.importers.order_lines import ORDER_COLUMNS, LineLayout, import_lines, quoted, text_sql
from features.importers.report import (
    SOURCE_VIEW,
    ImportReport,
    check_import_paths,
    read_source,
    require_rows,
    source_columns,
)
from features.io import Encoding
from features.timezones import check_timezone
from features.validate import ROW_ID, ContractError

WHAT = "a Shopify orders export"
# The header of Shopify's orders export, for reference (and the tests); the importer reads the columns below.
EXPORT_COLUMNS = (
    "Name", "Email", "Financial Status", "Paid at", "Fulfillment Status", "Fulfilled at", "Accepts Marketing",
    "Currency", "Subtotal", "Shipping", "Taxes", "Total", "Discount Code", "Discount Amount", "Shipping Method",
    "Created at", "Lineitem quantity", "Lineitem name", "Lineitem price", "Lineitem compare at price",
    "Lineitem sku", "Lineitem requires shipping", "Lineitem taxable", "Lineitem fulfillment status",
    "Billing Name", "Billing Street", "Billing Address1", "Billing Address2", "Billing Company", "Billing City",
    "Billing Zip", "Billing Province", "Billing Country", "Billing Phone", "Shipping Name", "Shipping Street",
    "Shipping Address1", "Shipping Address2", "Shipping Company", "Shipping City", "Shipping Zip",
    "Shipping Province", "Shipping Country", "Shipping Phone", "Notes", "Note Attributes", "Cancelled at",
    "Payment Method", "Payment Reference", "Refunded Amount", "Vendor", "Outstanding Balance", "Employee",
    "Location", "Device ID", "Id", "Tags", "Risk Level", "Source", "Lineitem discount", "Tax 1 Name",
    "Tax 1 Value", "Tax 2 Name", "Tax 2 Value", "Tax 3 Name", "Tax 3 Value", "Tax 4 Name", "Tax 4 Value",
    "Tax 5 Name", "Tax 5 Value", "Phone", "Receipt Number", "Duties", "Billing Province Name",
    "Shipping Province Name", "Payment ID", "Payment Terms Name", "Next Payment Due At", "Payment References",
)
SKU, LINE_NAME = "Lineitem sku", "Lineitem name"
# contract column -> the export's column (product_id: the SKU, else the line item's name)
DEFAULTS = {
    s.ORDER_ID: "Name", s.CUSTOMER_ID: "Email", s.PRODUCT_ID: SKU, s.QUANTITY: "Lineitem quantity",
    s.UNIT_PRICE: "Lineitem price", s.ORDERED_AT: "Created at", s.NAME: LINE_NAME, s.COUNTRY: "Billing Country",
    s.EMAIL_CONSENT: "Accepts Marketing",
}
CONSENT_COLUMNS = ("Accepts Marketing", "Accepts Email Marketing")
FINANCIAL_STATUS, CANCELLED_AT, CURRENCY = "Financial Status", "Cancelled at", "Currency"
NOT_A_SALE = {"refunded": "refunded order", "voided": "voided order"}  # Financial Status -> reason
LINE_LEVEL_PREFIX, VENDOR = "Lineitem", "Vendor"  # columns of the line item itself: never carried


def _sources(src: Path, found: list[str], mapping: Mapping[str, str]) -> dict[str, str]:
    """Contract column -> the export's column: the defaults present in the file, then ``mapping``. An
    order column found neither way is a ContractError listing the file's columns."""
    defaults = dict(DEFAULTS)
    defaults[s.EMAIL_CONSENT] = next((c for c in CONSENT_COLUMNS if c in found), DEFAULTS[s.EMAIL_CONSENT])
    if SKU not in found:
        defaults[s.PRODUCT_ID] = LINE_NAME
    mapped = mapped_columns(src, found, mapping)
    missing = [defaults[c] for c in ORDER_COLUMNS if c not in mapped and defaults[c] not in found]
    if missing:
        raise ContractError(
            f"{src}: not {WHAT}; missing column(s) {', '.join(missing)}. Expected Shopify's orders export "
            f"(Admin > Orders > Export, CSV) with {', '.join(DEFAULTS[c] for c in ORDER_COLUMNS)}, or a mapping "
            f"to other columns. The file's columns: {', '.join(found)}.")
    return {c: column for c, column in defaults.items() if column in found} | mapped


def _carried_source(found: list[str], sources: Mapping[str, str]) -> str:
    """SQL of the export's rows with the order's own fields that a row leaves empty taken from the
    order's rows that have them (rows of one order share its order_id column; a row without one is
    left as it is)."""
    key = sources[s.ORDER_ID]
    used = set(sources.values()) | {FINANCIAL_STATUS, CANCELLED_AT, CURRENCY}
    carried = [c for c in found if c in used and c != key and not c.startswith(LINE_LEVEL_PREFIX) and c != VENDOR]
    if not carried:
        return f"SELECT * FROM {SOURCE_VIEW}"
    window = (f"PARTITION BY {text_sql(key)} ORDER BY {ROW_ID} "
              "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING")
    replaced = ", ".join(f"coalesce({text_sql(c)}, CASE WHEN {text_sql(key)} IS NOT NULL "  # no order: nothing
                         f"THEN first_value({text_sql(c)} IGNORE NULLS) OVER ({window}) END) AS {quoted(c)}"
                         for c in carried)
    return f"SELECT * REPLACE ({replaced}) FROM {SOURCE_VIEW}"


def _not_a_sale_sql(found: list[str]) -> str | None:
    """SQL: the reason a row's order is no sale (cancelled, refunded, voided), NULL for a sale."""
    whens = []
    if CANCELLED_AT in found:
        whens.append(f"WHEN {text_sql(CANCELLED_AT)} IS NOT NULL THEN 'cancelled order ({CANCELLED_AT} is set)'")
    if FINANCIAL_STATUS in found:
        status = f"lower({text_sql(FINANCIAL_STATUS)})"
        whens += [f"WHEN {status} = '{value}' THEN '{reason} ({FINANCIAL_STATUS} {value})'"
                  for value, reason in NOT_A_SALE.items()]
    return f"CASE {' '.join(whens)} END" if whens else None


def _currency_warning(con: duckdb.DuckDBPyConnection, found: list[str], source_sql: str) -> list[str]:
    if CURRENCY not in found:
        return []
    currencies = [c for (c,) in con.execute(
        f"SELECT DISTINCT {text_sql(CURRENCY)} AS c FROM ({source_sql}) WHERE c IS NOT NULL ORDER BY 1").fetchall()]
    if len(currencies) < 2:
        return []
    shown = ", ".join(currencies[:5])
    return [f"orders in {len(currencies)} currencies ({shown}): unit prices are loaded as they are, not converted"]


def import_shopify(src: Path | str, out_dir: Path | str, mapping: Mapping[str, str] | None = None,
                   encoding: Encoding | str = Encoding.UTF_8, timezone: str | None = None) -> ImportReport:
    """Convert the Shopify orders export at ``src`` into contract tables in ``out_dir`` (rejects in
    ``_rejects``); ``mapping`` (contract column -> the export's column) replaces the default choices;
    times without an offset are local times in ``timezone`` (None: UTC)."""
    src = Path(src)
    mapping = check_mapping(mapping)
    zone = check_timezone(timezone)
    check_import_paths(src, out_dir)
    con = read_source(src, WHAT, encoding)
    found = source_columns(con)
    sources = _sources(src, found, mapping)
    require_rows(con, src, WHAT)
    columns = {c: text_sql(column) for c, column in sources.items()}
    names = {c: column for c, column in sources.items() if c in ORDER_COLUMNS}
    if s.PRODUCT_ID not in mapping and sources[s.PRODUCT_ID] == SKU:
        columns[s.PRODUCT_ID] = f"coalesce({text_sql(SKU)}, {text_sql(LINE_NAME)})"
        names[s.PRODUCT_ID] = f"{SKU} (or {LINE_NAME})"
    source_sql = _carried_source(found, sources)
    layout = LineLayout(WHAT, columns, names, not_a_line=_not_a_sale_sql(found), source_sql=source_sql,
                        warnings=tuple(_currency_warning(con, found, source_sql)))
    return import_lines(con, src, out_dir, layout, zone)
