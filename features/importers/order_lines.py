"""One engine for every source with a row per order line: UCI Online Retail (I and II), a Shopify
orders export and any CSV of order lines with a column mapping.

A :class:`LineLayout` says how a source row becomes an order line: one SQL expression over the
source's text columns per contract column, the words the user knows each column by, and why a row
is no order line at all (a fee code, a cancelled order). :func:`import_lines` then, on the source
read as text (dialect, encoding and byte-order mark as the loader reads them):

1. computes every row's contract values; a customer id is trimmed, an email address in it
   lower-cased (``Jane@Shop.example`` and ``jane@shop.example`` are one customer, the one the email
   platform names) and a whole number written as a decimal (``13085.0``, as Excel saves ids)
   written without it;
2. leaves out the rows of customers forgotten in the output directory (``sendwise privacy forget``);
3. validates the order lines as ``orders`` (:mod:`features.validate`), naive times read in the
   shop's time zone; every row that is not loaded goes to the rejects file as it was, with its row
   number, its reason (in the source's column names) and the ``customer_id`` it would have had, so
   that ``sendwise privacy forget`` finds a customer's rejected rows whatever the source called them;
4. derives ``products`` from the order lines (most frequent name, category and links, median
   positive unit price) and ``customers`` from the loaded orders (most frequent country, the email
   consent given with their latest order);
5. writes the tables as parquet, timestamps as UTC instants (:func:`features.io.write_tables`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from features import schema as s
from features.importers.report import SOURCE_VIEW, ImportReport, skip_forgotten_source, write_import
from features.tables import Tables, create_empty
from features.timezones import utc_timestamp_sql
from features.validate import ROW_ID, validate_raw

ORDER_COLUMNS = tuple(s.SPECS[s.Table.ORDERS].column_names)
PRODUCT_ATTRIBUTES = (s.NAME, s.CATEGORY, s.IMAGE_URL, s.URL)
CUSTOMER_ATTRIBUTES = (s.COUNTRY, s.EMAIL_CONSENT)
LINE_COLUMNS = ORDER_COLUMNS + PRODUCT_ATTRIBUTES + CUSTOMER_ATTRIBUTES  # what a layout may give
LINES = "_lines"  # one row per source row: its contract values and why it is no order line
NOT_A_LINE = "_not_a_line"
REJECTS = "_import_rejects"


def quoted(column: str) -> str:
    """``column`` as an SQL identifier, whatever characters it holds."""
    return '"' + column.replace('"', '""') + '"'


def text_sql(column: str) -> str:
    """SQL: source column ``column`` as trimmed text, NULL when empty."""
    return f"NULLIF(trim(CAST({quoted(column)} AS VARCHAR)), '')"


def customer_id_sql(text: str) -> str:
    """SQL: the customer id in trimmed text ``text``: an email address lower-cased, a whole number
    written as a decimal (``13085.0``) without its decimals."""
    return (f"(CASE WHEN contains({text}, '@') THEN lower({text}) "
            f"ELSE regexp_replace({text}, '^([0-9]+)[.]0+$', '\\1') END)")


@dataclass(frozen=True)
class LineLayout:
    """How the rows of one kind of source become order lines."""

    what: str  # the layout in words, for messages: "a Shopify orders export"
    columns: Mapping[str, str]  # contract column (LINE_COLUMNS) -> SQL over a source row; orders' are required
    names: Mapping[str, str]  # contract column -> the user's name for it, in errors and reasons
    not_a_line: str | None = None  # SQL: why the row is no order line (a reason), NULL when it is one
    source_sql: str = f"SELECT * FROM {SOURCE_VIEW}"  # the rows the expressions read (one per source row)
    warnings: tuple[str, ...] = field(default=())  # for the report: what was loaded but deserves a look

    def __post_init__(self) -> None:
        missing = [c for c in ORDER_COLUMNS if c not in self.columns]
        unknown = [c for c in self.columns if c not in LINE_COLUMNS]
        assert not missing and not unknown, f"{self.what}: missing {missing}, unknown {unknown}"


def import_lines(con: duckdb.DuckDBPyConnection, src: Path, out_dir: Path | str, layout: LineLayout,
                 timezone: str | None = None) -> ImportReport:
    """Import ``src``, already read into ``con`` as ``_source`` (see :mod:`features.importers.report`),
    as order lines by ``layout`` into ``out_dir``; naive times are local times in ``timezone`` (a
    name :func:`features.timezones.check_timezone` returned, None: UTC)."""
    values = []
    for column in LINE_COLUMNS:
        sql = layout.columns.get(column, "CAST(NULL AS VARCHAR)")
        if column == s.CUSTOMER_ID:
            sql = customer_id_sql(f"NULLIF(trim({sql}), '')")
        values.append(f"{sql} AS {column}")
    con.execute(
        f"""CREATE TEMP TABLE {LINES} AS
            SELECT {ROW_ID}, {', '.join(values)}, {layout.not_a_line or 'CAST(NULL AS VARCHAR)'} AS {NOT_A_LINE}
            FROM ({layout.source_sql}) ORDER BY {ROW_ID}"""
    )
    forgotten = skip_forgotten_source(con, s.CUSTOMER_ID, out_dir, LINES)
    con.execute(f"""CREATE TEMP VIEW _order_lines AS SELECT {ROW_ID}, {', '.join(ORDER_COLUMNS)}
                    FROM {LINES} WHERE {NOT_A_LINE} IS NULL""")
    validate_raw(con, s.SPECS[s.Table.ORDERS], "_order_lines", str(src), names=layout.names, timezone=timezone)
    con.execute(
        f"""CREATE TEMP TABLE {REJECTS} AS
            SELECT l.{ROW_ID} AS {s.SOURCE_ROW}, coalesce(l.{NOT_A_LINE}, r.{s.REJECT_REASON}) AS {s.REJECT_REASON},
                   l.{s.CUSTOMER_ID}, src.* EXCLUDE ({ROW_ID})
            FROM {LINES} l JOIN {SOURCE_VIEW} src ON src.{ROW_ID} = l.{ROW_ID}
            LEFT JOIN orders_rejects r ON r.{s.SOURCE_ROW} = l.{ROW_ID}
            WHERE l.{NOT_A_LINE} IS NOT NULL OR r.{s.SOURCE_ROW} IS NOT NULL
            ORDER BY 1"""
    )
    _derive_products(con)
    _derive_customers(con, timezone)
    create_empty(con, s.SPECS[s.Table.EVENTS])
    return write_import(Tables(con), str(src), REJECTS, out_dir, read_table=LINES, forgotten=forgotten,
                        timezone=timezone, warnings=layout.warnings)


def _counted(key: str, columns: Iterable[str]) -> str:
    """SQL select items: for each column, how often its value occurs for ``key`` and its first row."""
    return ", ".join(f"count(*) OVER (PARTITION BY {key}, {c}) AS {c}__n, "
                     f"min({ROW_ID}) OVER (PARTITION BY {key}, {c}) AS {c}__first" for c in columns)


def _most_frequent(column: str) -> str:
    """SQL aggregate over :func:`_counted` rows: the most frequent value, ties to the first in the file."""
    return f"arg_max({column}, row({column}__n, -{column}__first)) FILTER (WHERE {column} IS NOT NULL)"


def _derive_products(con: duckdb.DuckDBPyConnection) -> None:
    """One product per product id of the order lines (rejected ones too: a line without a customer
    still names its product): the most frequent name, category and links (ties: the first in the
    file), the median positive unit price of purchases."""
    con.execute(
        f"""CREATE TABLE products AS
            WITH lines AS (
              SELECT {ROW_ID}, NULLIF(trim({s.PRODUCT_ID}), '') AS pid,
                     {', '.join(f"NULLIF(trim({c}), '') AS {c}" for c in PRODUCT_ATTRIBUTES)},
                     TRY_CAST({s.UNIT_PRICE} AS DOUBLE) AS price, TRY_CAST({s.QUANTITY} AS DOUBLE) AS qty
              FROM {LINES} WHERE {NOT_A_LINE} IS NULL),
            counted AS (SELECT *, {_counted("pid", PRODUCT_ATTRIBUTES)} FROM lines WHERE pid IS NOT NULL)
            SELECT pid AS {s.PRODUCT_ID}, {_most_frequent(s.NAME)} AS {s.NAME},
                   {_most_frequent(s.CATEGORY)} AS {s.CATEGORY},
                   median(price) FILTER (WHERE price > 0 AND price <= {s.MAX_PRICE!r} AND qty > 0) AS {s.PRICE},
                   {_most_frequent(s.IMAGE_URL)} AS {s.IMAGE_URL}, {_most_frequent(s.URL)} AS {s.URL},
                   CAST(NULL AS BOOLEAN) AS {s.IN_STOCK}
            FROM counted GROUP BY pid ORDER BY pid"""
    )


def _derive_customers(con: duckdb.DuckDBPyConnection, timezone: str | None) -> None:
    """One customer per customer of the loaded orders: the most frequent country of their lines (ties:
    the first in the file), the email consent given with their latest line that gives one (yes/no,
    true/false, 1/0; same time: the later line in the file)."""
    consent = s.boolean_sql(f"trim({s.EMAIL_CONSENT})")
    when = utc_timestamp_sql(s.ORDERED_AT, "VARCHAR", timezone)
    con.execute(
        f"""CREATE TABLE customers AS
            WITH lines AS (
              SELECT {ROW_ID}, {s.CUSTOMER_ID} AS cid, NULLIF(trim({s.COUNTRY}), '') AS {s.COUNTRY},
                     {consent} AS consent, {when} AS line_at
              FROM {LINES}),
            counted AS (SELECT *, {_counted("cid", [s.COUNTRY])} FROM lines),
            attributes AS (
              SELECT cid, {_most_frequent(s.COUNTRY)} AS country,
                     arg_max(consent, row(line_at, {ROW_ID}))
                       FILTER (WHERE consent IS NOT NULL AND line_at IS NOT NULL) AS consent
              FROM counted GROUP BY cid)
            SELECT o.{s.CUSTOMER_ID}, CAST(NULL AS TIMESTAMP) AS {s.SIGNUP_AT},
                   a.country AS {s.COUNTRY}, a.consent AS {s.EMAIL_CONSENT}
            FROM (SELECT DISTINCT {s.CUSTOMER_ID} FROM orders) o
            LEFT JOIN attributes a ON o.{s.CUSTOMER_ID} = a.cid ORDER BY 1"""
    )
