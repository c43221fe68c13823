"""Any CSV with a row per order line, by a column mapping (:mod:`features.importers.mapping`).

Each contract column of an order line (order_id, customer_id, product_id, quantity, unit_price,
ordered_at) comes from the source column it is mapped to, else from a column of its own name;
one that is neither is an error listing what is missing and the file's columns. A product's name,
category, image_url and url and a customer's country and email_consent are read only when mapped
(a column called ``name`` may well be the customer's). The rows go through the order-lines engine
(:mod:`features.importers.order_lines`): bad rows to the rejects file with their reason under the
file's column names, products and customers derived from the lines, naive times read in the shop's
time zone. The file is read as every CSV is (delimiter, quotes, encoding and byte-order mark
sniffed); numbers must use a decimal point.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from features.importers.mapping import check_mapping, mapped_columns, require_order_columns
from features.importers.order_lines import ORDER_COLUMNS, LineLayout, import_lines, text_sql
from features.importers.report import (
    ImportReport,
    check_import_paths,
    read_source,
    require_rows,
    source_columns,
)
from features.io import Encoding
from features.timezones import check_timezone

WHAT = "a CSV of order lines"


def import_csv(src: Path | str, out_dir: Path | str, mapping: Mapping[str, str] | None = None,
               encoding: Encoding | str = Encoding.UTF_8, timezone: str | None = None) -> ImportReport:
    """Convert the CSV of order lines at ``src`` into contract tables in ``out_dir`` by ``mapping``
    (contract column -> source column); naive times are local times in ``timezone`` (None: UTC)."""
    src = Path(src)
    mapping = check_mapping(mapping)
    zone = check_timezone(timezone)
    check_import_paths(src, out_dir)
    con = read_source(src, WHAT, encoding)
    found = source_columns(con)
    sources = {c: c for c in ORDER_COLUMNS if c in found} | mapped_columns(src, found, mapping)
    require_order_columns(src, found, sources, WHAT)
    require_rows(con, src, WHAT)
    layout = LineLayout(WHAT, {c: text_sql(column) for c, column in sources.items()},
                        names={c: column for c, column in sources.items() if c in ORDER_COLUMNS})
    return import_lines(con, src, out_dir, layout, zone)
