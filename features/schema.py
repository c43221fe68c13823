"""The data contract: table names, column names, canonical types and row rules.

This is the one place that spells out column names. Other modules import the constants below
instead of writing ``"customer_id"`` themselves.

Timestamps are stored as naive UTC. An input timestamp without a zone is taken to be UTC, or a
local time of the shop's time zone when one is given (``load_data_dir(..., timezone="Europe/London")``,
see :mod:`features.timezones`); one with an offset is converted to UTC.

Some rows cannot be true and are rejected: a timestamp after the moment the data is read
(:data:`NOW`), a price above :data:`MAX_PRICE` or a quantity beyond :data:`MAX_QUANTITY`, an
``order_id`` whose lines belong to different customers or whose purchase lines lie more than
:data:`ORDER_TIME_SPREAD` apart (:class:`GroupRule`; a return may come later under its order's id).

Customer attributes that change over time (:class:`Attribute`: country, email consent) have a
history in ``customer_changes``: one row per change, with the moment it took effect. ``customers``
keeps only today's values. Features read the history as of their as_of (never today's values); the
service checks today's consent at send time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

# Column names -----------------------------------------------------------------------------------
ORDER_ID = "order_id"
CUSTOMER_ID = "customer_id"
PRODUCT_ID = "product_id"
QUANTITY = "quantity"
UNIT_PRICE = "unit_price"
ORDERED_AT = "ordered_at"
SIGNUP_AT = "signup_at"
COUNTRY = "country"
EMAIL_CONSENT = "email_consent"
EVENT_TYPE = "event_type"
OCCURRED_AT = "occurred_at"
NAME = "name"
CATEGORY = "category"
PRICE = "price"
IMAGE_URL = "image_url"
URL = "url"
IN_STOCK = "in_stock"
AS_OF = "as_of"
UNSUBSCRIBED = "unsubscribed"  # feature: an unsubscribe event before as_of (read by the consent gate)
CHANGED_AT = "changed_at"
ATTRIBUTE = "attribute"
VALUE = "value"

# Limits beyond which a value is a mistake (a typo, a wrong column, cents read as units), not a sale.
MAX_PRICE = 1e9  # unit_price and price
MAX_QUANTITY = 1e9  # either sign: returns are negative
ORDER_TIME_SPREAD = timedelta(hours=1)  # lines of one order further apart than this are not one order
# In a rule's SQL and reason, replaced by the moment the rows are read (UTC); later rows are rejected.
NOW = "{now}"

# Bookkeeping columns added to rejects files.
SOURCE_ROW = "source_row"
REJECT_REASON = "reason"


class EventType(StrEnum):
    """Event types accepted in the ``events`` table."""

    PRODUCT_VIEW = "product_view"
    ADD_TO_CART = "add_to_cart"
    CHECKOUT_START = "checkout_start"
    EMAIL_SENT = "email_sent"
    EMAIL_OPEN = "email_open"
    EMAIL_CLICK = "email_click"
    UNSUBSCRIBE = "unsubscribe"


class Attribute(StrEnum):
    """Customer attributes with a time-stamped history in ``customer_changes``."""

    COUNTRY = COUNTRY
    EMAIL_CONSENT = EMAIL_CONSENT


# Text a boolean attribute's value may hold (as the customers file's booleans), compared lower-cased.
TRUE_TEXT = ("true", "t", "yes", "y", "1")
FALSE_TEXT = ("false", "f", "no", "n", "0")


def boolean_sql(text: str) -> str:
    """Portable SQL reading ``text`` as a boolean (:data:`TRUE_TEXT`, :data:`FALSE_TEXT`; NULL otherwise)."""
    true, false = (", ".join(f"'{w}'" for w in words) for words in (TRUE_TEXT, FALSE_TEXT))
    return f"CASE WHEN lower({text}) IN ({true}) THEN true WHEN lower({text}) IN ({false}) THEN false END"


class Table(StrEnum):
    ORDERS = "orders"
    CUSTOMERS = "customers"
    EVENTS = "events"
    PRODUCTS = "products"
    CUSTOMER_CHANGES = "customer_changes"


@dataclass(frozen=True)
class Column:
    """One contract column: its canonical DuckDB type and whether the file must have it."""

    name: str
    sql_type: str  # VARCHAR, DOUBLE, BIGINT, TIMESTAMP or BOOLEAN
    required: bool = True  # the column must be present in the file
    nullable: bool = False  # a row may leave it empty

    @property
    def expected(self) -> str:
        """Human words for the type, used in error messages."""
        return {
            "VARCHAR": "text",
            "DOUBLE": "a number",
            "BIGINT": "a whole number",
            "TIMESTAMP": "a date or timestamp such as 2024-03-01 or 2024-03-01T09:30:00Z",
            "BOOLEAN": "true/false (or 1/0, yes/no)",
        }[self.sql_type]


@dataclass(frozen=True)
class RowRule:
    """A rule every row must pass; ``failing_sql`` is true for a row that breaks it.

    It is evaluated on the typed columns (named as in the contract) plus, for each column,
    ``<name>__bad``: true where the input held a value that did not parse as the column's type.
    """

    reason: str
    failing_sql: str


@dataclass(frozen=True)
class GroupRule:
    """Rows sharing ``key`` (a column, or several separated by commas) must agree: ``disagree_sql``, an
    aggregate over one key's rows, is true when they do not, and then every row of that key is
    rejected with ``reason``.

    It sees the rows that passed every :class:`RowRule` and are not exact duplicates."""

    key: str
    reason: str
    disagree_sql: str


@dataclass(frozen=True)
class TableSpec:
    table: Table
    columns: tuple[Column, ...]
    rules: tuple[RowRule, ...] = field(default=())
    reject_exact_duplicates: bool = True
    unique_key: str | None = None  # later rows repeating this key are rejected
    group_rules: tuple[GroupRule, ...] = field(default=())
    time_column: str | None = None  # a row belongs to this moment (Tables.before cuts on it)
    hashed_when_empty: bool = True  # False for a table added to the contract later (Tables.fingerprint)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def _missing(col: str) -> RowRule:
    return RowRule(f"missing {col}", f"{col} IS NULL")


def _unparseable(col: Column) -> RowRule:
    return RowRule(
        f"unparseable {col.name} (expected {col.expected})",
        f"{col.name}__bad",
    )


_ORDER_COLUMNS = (
    Column(ORDER_ID, "VARCHAR"),
    Column(CUSTOMER_ID, "VARCHAR"),
    Column(PRODUCT_ID, "VARCHAR"),
    Column(QUANTITY, "DOUBLE"),
    Column(UNIT_PRICE, "DOUBLE"),
    Column(ORDERED_AT, "TIMESTAMP"),
)
_CUSTOMER_COLUMNS = (
    Column(CUSTOMER_ID, "VARCHAR"),
    Column(SIGNUP_AT, "TIMESTAMP", required=False, nullable=True),
    Column(COUNTRY, "VARCHAR", required=False, nullable=True),
    Column(EMAIL_CONSENT, "BOOLEAN", required=False, nullable=True),
)
_EVENT_COLUMNS = (
    Column(CUSTOMER_ID, "VARCHAR"),
    Column(EVENT_TYPE, "VARCHAR"),
    Column(PRODUCT_ID, "VARCHAR", required=False, nullable=True),
    Column(OCCURRED_AT, "TIMESTAMP"),
)
_CHANGE_COLUMNS = (
    Column(CUSTOMER_ID, "VARCHAR"),
    Column(CHANGED_AT, "TIMESTAMP"),
    Column(ATTRIBUTE, "VARCHAR"),
    Column(VALUE, "VARCHAR", nullable=True),  # empty: the attribute is no longer known
)
_PRODUCT_COLUMNS = (
    Column(PRODUCT_ID, "VARCHAR"),
    Column(NAME, "VARCHAR", required=False, nullable=True),
    Column(CATEGORY, "VARCHAR", required=False, nullable=True),
    Column(PRICE, "DOUBLE", required=False, nullable=True),
    Column(IMAGE_URL, "VARCHAR", required=False, nullable=True),
    Column(URL, "VARCHAR", required=False, nullable=True),
    Column(IN_STOCK, "BOOLEAN", required=False, nullable=True),
)


def _standard_rules(columns: tuple[Column, ...]) -> tuple[RowRule, ...]:
    """Unparseable values first (they explain a NULL), then missing required values, then
    timestamps after now."""
    parse = [_unparseable(c) for c in columns if c.sql_type != "VARCHAR"]
    missing = [_missing(c.name) for c in columns if not c.nullable]
    future = [_future(c.name) for c in columns if c.sql_type == "TIMESTAMP"]
    return tuple(parse + missing + future)


def _future(col: str) -> RowRule:
    return RowRule(f"{col} is in the future (after {NOW})", f"{col} > TIMESTAMP '{NOW}'")


def _above(col: str, limit: float) -> RowRule:
    return RowRule(f"{col} above {limit:,.0f}", f"{col} > {limit!r}")


_EVENT_TYPES_SQL = ", ".join(f"'{e.value}'" for e in EventType)
_ATTRIBUTES_SQL = ", ".join(f"'{a.value}'" for a in Attribute)

SPECS: dict[Table, TableSpec] = {
    Table.ORDERS: TableSpec(
        Table.ORDERS,
        _ORDER_COLUMNS,
        _standard_rules(_ORDER_COLUMNS)
        + (
            RowRule("negative unit_price", f"{UNIT_PRICE} < 0"),
            _above(UNIT_PRICE, MAX_PRICE),
            RowRule("zero quantity", f"{QUANTITY} = 0"),
            RowRule(f"quantity beyond ±{MAX_QUANTITY:,.0f}", f"abs({QUANTITY}) > {MAX_QUANTITY!r}"),
        ),
        group_rules=(
            GroupRule(ORDER_ID, f"{ORDER_ID} shared by lines of different {CUSTOMER_ID}",
                      f"count(DISTINCT {CUSTOMER_ID}) > 1"),
            # returns (negative quantity) may come later under the order's id; the purchase lines may not
            GroupRule(ORDER_ID, f"{ORDER_ID} shared by purchase lines at different {ORDERED_AT} "
                                f"(more than {ORDER_TIME_SPREAD.total_seconds() / 3600:g} hour apart)",
                      f"max({ORDERED_AT}) FILTER (WHERE {QUANTITY} > 0) - min({ORDERED_AT}) FILTER (WHERE {QUANTITY} > 0)"
                      f" > INTERVAL {int(ORDER_TIME_SPREAD.total_seconds())} SECOND"),
        ),
        time_column=ORDERED_AT,
    ),
    Table.CUSTOMERS: TableSpec(
        Table.CUSTOMERS,
        _CUSTOMER_COLUMNS,
        _standard_rules(_CUSTOMER_COLUMNS),
        unique_key=CUSTOMER_ID,
        time_column=SIGNUP_AT,
    ),
    Table.EVENTS: TableSpec(
        Table.EVENTS,
        _EVENT_COLUMNS,
        _standard_rules(_EVENT_COLUMNS)
        + (
            RowRule(
                f"unknown event_type (expected one of {', '.join(e.value for e in EventType)})",
                f"{EVENT_TYPE} NOT IN ({_EVENT_TYPES_SQL})",
            ),
        ),
        time_column=OCCURRED_AT,
    ),
    Table.PRODUCTS: TableSpec(
        Table.PRODUCTS,
        _PRODUCT_COLUMNS,
        _standard_rules(_PRODUCT_COLUMNS) + (RowRule("negative price", f"{PRICE} < 0"), _above(PRICE, MAX_PRICE)),
        unique_key=PRODUCT_ID,
    ),
    Table.CUSTOMER_CHANGES: TableSpec(
        Table.CUSTOMER_CHANGES,
        _CHANGE_COLUMNS,
        _standard_rules(_CHANGE_COLUMNS)
        + (
            RowRule(f"unknown attribute (expected one of {', '.join(a.value for a in Attribute)})",
                    f"{ATTRIBUTE} NOT IN ({_ATTRIBUTES_SQL})"),
            RowRule(f"{EMAIL_CONSENT} value is not true/false (or 1/0, yes/no)",
                    f"{ATTRIBUTE} = '{EMAIL_CONSENT}' AND {VALUE} IS NOT NULL AND ({boolean_sql(VALUE)}) IS NULL"),
        ),
        group_rules=(
            GroupRule(f"{CUSTOMER_ID}, {ATTRIBUTE}, {CHANGED_AT}",
                      f"different {VALUE}s for one customer's {ATTRIBUTE} at the same {CHANGED_AT}",
                      f"count(DISTINCT coalesce({VALUE}, '')) > 1"),
        ),
        time_column=CHANGED_AT,
        hashed_when_empty=False,
    ),
}

DUPLICATE_REASON = "exact duplicate of an earlier row"


def sql_literal(text: object) -> str:
    """``text`` as a SQL string literal (quotes doubled): for file paths and values in generated SQL."""
    return "'" + str(text).replace("'", "''") + "'"
