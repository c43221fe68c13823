"""The feature registry: every customer feature declared once.

A declaration says where a feature comes from (a :class:`Source`: a contract table and its
timestamp, or a relation derived from another source), how it is computed (an :class:`Agg`
over the source's rows before the as_of, optionally in a trailing window and under a filter; or a
portable SQL expression over other features), its type, the value a customer without rows gets,
its unit, and a phrase that says a value in words for a reason ("no order for 142 days"). Features
that are computed together are declared together, in groups.

From the declarations come:

* the feature query of each engine (:mod:`features.engines.compiler`; DuckDB by default),
* the model's input columns (:meth:`Registry.model_inputs`),
* the signals a next-best-action policy may name (:meth:`Registry.signals`),
* reasons in words (:func:`describe`), and
* the README's feature table (:func:`markdown_table`; a test holds the README to it).

Declarations hold portable SQL only: no dialect's functions, parameters or time arithmetic (the
engine supplies those). :mod:`features._reference` is a hand-written pandas twin, deliberately not
generated from here: the tests hold the generated SQL to it.

Customer attributes that change (country, email consent) are read from time-stamped history
(``customer_changes``), as of the as_of: the current values in ``customers`` never enter a feature,
so no model learns from them (the service still checks today's consent at send time).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache

from features.config import FeatureConfig
from features.engines import double as _double
from features.rfm import SEGMENTS, segment_sql
from features.schema import (
    ATTRIBUTE,
    CATEGORY,
    CHANGED_AT,
    COUNTRY,
    CUSTOMER_ID,
    EMAIL_CONSENT,
    EVENT_TYPE,
    OCCURRED_AT,
    ORDER_ID,
    ORDERED_AT,
    PRICE,
    PRODUCT_ID,
    QUANTITY,
    SIGNUP_AT,
    UNIT_PRICE,
    UNSUBSCRIBED,
    VALUE,
    Attribute,
    EventType,
    Table,
    boolean_sql,
)

LIFECYCLE_STAGES = ("prospect", "new", "active", "loyal", "at-risk", "lapsed")


class Agg(StrEnum):
    """How a feature summarises its source's rows (those before the as_of, in its window, passing its
    filter) per customer."""

    COUNT = "count"  # rows
    COUNT_DISTINCT = "count_distinct"  # distinct values of ``of``
    SUM = "sum"
    MEAN = "mean"
    STDDEV = "stddev"  # sample standard deviation
    MAX = "max"
    ANY = "any"  # some row passes the filter (and window)
    DAYS_SINCE_FIRST = "days_since_first"  # fractional days from the first row's timestamp to the as_of
    DAYS_SINCE_LAST = "days_since_last"
    LATEST = "latest"  # ``of`` at the latest row
    TOP = "top"  # ``of`` of the row with the largest ``by`` (ties: the smallest ``of``)


class Unit(StrEnum):
    DAYS = "days"
    COUNT = "count"
    MONEY = "money"
    SHARE = "share"  # 0 to 1
    RATIO = "ratio"
    SCORE = "score"
    FLAG = "flag"
    TEXT = "text"
    LEVEL = "level"  # one of a fixed vocabulary


class Dtype(StrEnum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    TEXT = "text"


@dataclass(frozen=True)
class Lookup:
    """Columns of a dimension table (no timestamp: products) joined to a source's rows by ``key``."""

    table: Table
    key: str
    columns: tuple[str, ...]
    inner: bool = False  # keep only rows with a match


@dataclass(frozen=True)
class Source:
    """A timed relation features aggregate, keyed by ``customer_id``.

    Exactly one of ``table`` (a contract table: only its rows with ``timestamp`` before the as_of),
    ``rows_of`` (another source's rows where ``where`` holds; ``timestamp`` names the same column as
    there), ``rollup_of`` (another source's rows
    grouped by the customer and ``keys``; ``timestamp`` and
    ``columns`` are then aggregates), ``intervals_of`` (the days between a customer's consecutive rows
    of another source, column ``gap``) or ``union_of`` (the customers and timestamps of several
    sources, column ``seen_at``) says where the rows come from.
    """

    name: str
    description: str
    table: Table | None = None
    timestamp: str | None = None
    read: tuple[str, ...] = ()  # a table's columns to read
    rows_of: str | None = None
    rollup_of: str | None = None
    keys: tuple[str, ...] = ()
    intervals_of: str | None = None
    union_of: tuple[str, ...] = ()
    columns: tuple[tuple[str, str], ...] = ()  # (name, portable SQL) added to each row
    where: str | None = None
    lookup: Lookup | None = None
    after_last_of: str | None = None  # only rows later than the customer's last row of this source
    window_days: int | None = None  # only rows in this many days before the as_of

    @property
    def time_column(self) -> str | None:
        if self.intervals_of:
            return None
        if self.union_of:
            return "seen_at"
        if self.rollup_of:
            return self.timestamp and self.timestamp_name
        return self.timestamp

    @property
    def timestamp_name(self) -> str:
        """A rollup's timestamp column (its aggregate is ``timestamp``: ``min(ordered_at)`` -> ordered_at)."""
        match = re.fullmatch(r"\w+\((\w+)\)", self.timestamp or "")
        return match.group(1) if match else "at"


Phrase = Callable[[float], str]


@dataclass(frozen=True)
class Feature:
    """One feature. ``source`` and ``agg`` for an aggregate, ``expr`` for one derived from other
    features (portable SQL naming them), ``score_of`` for a 1-5 percent-rank score among the customers
    where ``population`` holds, ``population_median`` for one number over all customers at the as_of.

    Names starting with ``_`` are intermediate: computed, never output. ``default`` is what a customer
    without rows gets (None: NULL). ``phrase`` says a value in words; ``missing`` says NULL in words.
    ``levels`` makes a text feature a one-hot model input (one 0/1 column per level, ``name=level``),
    and ``level_phrases`` then says each level and its absence.
    """

    name: str
    group: str
    description: str
    dtype: Dtype
    unit: Unit
    source: str | None = None
    agg: Agg | None = None
    of: str | None = None
    by: str | None = None
    where: str | None = None
    window_days: int | None = None
    expr: str | None = None
    score_of: str | None = None
    descending: bool = False
    population: str | None = None
    population_median: str | None = None
    default: object | None = None
    phrase: Phrase | None = None
    missing: str | None = None
    model_input: bool = True
    signal: bool = False
    levels: tuple[str, ...] = ()
    level_phrases: tuple[tuple[str, str], ...] = ()  # (is, is not) per level
    family: str | None = None  # windowed families: the name without ``_<days>d``

    @property
    def internal(self) -> bool:
        return self.name.startswith("_")

    @property
    def kind(self) -> str:
        if self.agg is not None:
            return "aggregate"
        if self.score_of is not None:
            return "score"
        if self.population_median is not None:
            return "population"
        return "derived"


# -- phrases ----------------------------------------------------------------------------------------


def _plural(n: float, noun: str, plural: str | None = None) -> str:
    shown = f"{n:,.0f}"
    return f"{shown} {noun if shown in ('1', '-1') else plural or noun + 's'}"


def days_text(value: float) -> str:
    """``value`` days in words: "less than a day", "1 day", "142 days"."""
    return "less than a day" if abs(value) < 0.5 else _plural(abs(value), "day")


def window_text(days: int) -> str:
    return "the last day" if days == 1 else f"the last {days} days"


def money_text(value: float) -> str:
    return f"{value:,.2f}"


def share_text(value: float) -> str:
    return f"{value:.0%}"


def _count(noun: str, plural: str, suffix: str = "", none: str | None = None) -> Phrase:
    """``3 cart adds in the last 7 days``; zero: ``no cart adds in the last 7 days``."""
    tail = f" {suffix}" if suffix else ""
    return lambda v: (none or f"no {plural}{tail}") if round(v) == 0 else f"{_plural(v, noun, plural)}{tail}"


def _money(template: str, zero: str) -> Phrase:
    return lambda v: zero if round(v, 2) == 0 else template.format(money_text(v))


def _days_ago(template: str) -> Phrase:
    return lambda v: template.format(days_text(v))


def _flag(yes: str, no: str) -> Phrase:
    return lambda v: yes if v else no


# -- declarations -----------------------------------------------------------------------------------

_PURCHASE = f"{QUANTITY} > 0"
_RETURN = f"{QUANTITY} < 0"


def _event(kind: EventType) -> str:
    return f"{EVENT_TYPE} = '{kind.value}'"


def _attribute(name: Attribute) -> str:
    return f"{ATTRIBUTE} = '{name.value}'"


def _ratio(numerator: str, denominator: str) -> str:
    """``numerator / denominator``, NULL unless the denominator is positive (portable: no division by zero)."""
    return f"CASE WHEN {denominator} > 0 THEN {numerator} / {denominator} END"


def sources(config: FeatureConfig) -> tuple[Source, ...]:
    return (
        Source("signups", "customers with their signup time", table=Table.CUSTOMERS, timestamp=SIGNUP_AT,
               read=(CUSTOMER_ID, SIGNUP_AT)),
        Source("order_lines", "order lines (a negative quantity is a return)", table=Table.ORDERS,
               timestamp=ORDERED_AT, read=(CUSTOMER_ID, ORDER_ID, PRODUCT_ID, QUANTITY, UNIT_PRICE, ORDERED_AT)),
        Source("bought_lines", "order lines with a positive quantity", rows_of="order_lines", where=_PURCHASE,
               timestamp=ORDERED_AT),
        Source("returned_lines", "order lines with a negative quantity (returns)", rows_of="order_lines",
               where=_RETURN, timestamp=ORDERED_AT),
        Source("purchases", "orders: an order id's lines with a positive quantity", rollup_of="order_lines",
               keys=(ORDER_ID,), where=_PURCHASE, timestamp=f"min({ORDERED_AT})",
               columns=(("value", f"sum({QUANTITY} * {UNIT_PRICE})"), ("items", f"sum({QUANTITY})"))),
        Source("purchase_gaps", "days between a customer's consecutive orders", intervals_of="purchases"),
        Source("category_spend", "spend per product category", rollup_of="order_lines", keys=(CATEGORY,),
               lookup=Lookup(Table.PRODUCTS, PRODUCT_ID, (CATEGORY,), inner=True),
               where=f"{_PURCHASE} AND {CATEGORY} IS NOT NULL",
               columns=(("value", f"sum({QUANTITY} * {UNIT_PRICE})"),)),
        Source("events", "behavioural and email events", table=Table.EVENTS, timestamp=OCCURRED_AT,
               read=(CUSTOMER_ID, EVENT_TYPE, PRODUCT_ID, OCCURRED_AT)),
        Source("abandoned_cart_adds", "cart adds after the customer's last order, in the longest cart window",
               table=Table.EVENTS, timestamp=OCCURRED_AT, read=(CUSTOMER_ID, EVENT_TYPE, PRODUCT_ID, OCCURRED_AT),
               where=_event(EventType.ADD_TO_CART), after_last_of="purchases",
               window_days=max(config.abandoned_cart_days),
               lookup=Lookup(Table.PRODUCTS, PRODUCT_ID, (PRICE,)),
               columns=(("first_of_product", (f"row_number() OVER (PARTITION BY {CUSTOMER_ID}, {PRODUCT_ID} "
                                              f"ORDER BY {OCCURRED_AT}) = 1")),)),
        Source("attribute_changes", "time-stamped changes of customer attributes (country, email consent)",
               table=Table.CUSTOMER_CHANGES, timestamp=CHANGED_AT, read=(CUSTOMER_ID, ATTRIBUTE, VALUE, CHANGED_AT)),
        Source("activity", "first and last time a customer was seen (signup, order line or event)",
               union_of=("signups", "order_lines", "events")),
    )


POPULATION_SOURCE = "activity"  # a customer is known at the as_of when this source has a row for them


def _stage_phrases(config: FeatureConfig) -> tuple[tuple[str, str], ...]:
    life = config.lifecycle
    return tuple({
        "prospect": ("has not ordered yet", "has ordered before"),
        "new": (f"new customer: first order within {life.new_days:g} days", "not a new customer"),
        "active": ("active customer, ordering at their usual pace", "not ordering at their usual pace"),
        "loyal": (f"loyal customer: {life.loyal_min_orders} or more orders, ordering at their usual pace",
                  "not a loyal customer"),
        "at-risk": (f"at risk: no order for over {life.at_risk_factor:g} times their usual gap",
                    "not at risk of lapsing"),
        "lapsed": (f"lapsed: no order for over {life.lapsed_factor:g} times their usual gap", "not lapsed"),
    }[stage] for stage in LIFECYCLE_STAGES)


def _lifecycle_sql(config: FeatureConfig) -> str:
    life = config.lifecycle
    gap = (f"greatest({_double(life.min_gap_days)}, least({_double(life.max_gap_days)}, "
           f"coalesce(ipi_mean_days, _typical_gap, {_double(life.default_gap_days)})))")
    return (f"CASE WHEN orders_count = 0 THEN 'prospect' "
            f"WHEN days_since_first_order <= {_double(life.new_days)} THEN 'new' "
            f"WHEN recency_days > {_double(life.lapsed_factor)} * {gap} THEN 'lapsed' "
            f"WHEN recency_days > {_double(life.at_risk_factor)} * {gap} THEN 'at-risk' "
            f"WHEN orders_count >= {int(life.loyal_min_orders)} THEN 'loyal' ELSE 'active' END")


def features(config: FeatureConfig) -> tuple[Feature, ...]:
    """Every feature for ``config``, in output order (intermediate ones where they are computed)."""
    out: list[Feature] = []

    def add(*items: Feature) -> None:
        out.extend(items)

    # Customer attributes, as of the as_of, from their time-stamped history.
    add(Feature(COUNTRY, "attributes", "the customer's country at the as_of (latest change before it)", Dtype.TEXT,
                Unit.TEXT, source="attribute_changes", agg=Agg.LATEST, of=VALUE,
                where=_attribute(Attribute.COUNTRY), model_input=False, signal=True,
                phrase=lambda v: f"lives in {v}", missing="country not on record"),
        Feature(EMAIL_CONSENT, "attributes", "email consent at the as_of (latest change before it)", Dtype.BOOL,
                Unit.FLAG, source="attribute_changes", agg=Agg.LATEST, of=boolean_sql(VALUE),
                where=_attribute(Attribute.EMAIL_CONSENT), signal=True,
                phrase=_flag("consented to email", "has not consented to email"),
                missing="email consent not on record"))

    # Orders.
    add(Feature("tenure_days", "orders", "days since the customer was first seen", Dtype.FLOAT, Unit.DAYS,
                source=POPULATION_SOURCE, agg=Agg.DAYS_SINCE_FIRST, phrase=_days_ago("first seen {} ago"),
                missing="not seen before"),
        Feature("recency_days", "orders", "days since the last order", Dtype.FLOAT, Unit.DAYS, source="purchases",
                agg=Agg.DAYS_SINCE_LAST, phrase=_days_ago("last order {} ago"), missing="never ordered", signal=True),
        Feature("days_since_first_order", "orders", "days since the first order", Dtype.FLOAT, Unit.DAYS,
                source="purchases", agg=Agg.DAYS_SINCE_FIRST, phrase=_days_ago("first order {} ago"),
                missing="never ordered"),
        Feature("orders_count", "orders", "orders (distinct order ids with a positive line)", Dtype.INT, Unit.COUNT,
                source="purchases", agg=Agg.COUNT, default=0, phrase=_count("order", "orders", "in total",
                                                                            none="no orders yet"), signal=True),
        Feature("revenue", "orders", "spend: quantity × unit_price over positive lines", Dtype.FLOAT, Unit.MONEY,
                source="purchases", agg=Agg.SUM, of="value", default=0,
                phrase=_money("spent {} in total", "spent nothing yet")))
    for d in config.order_windows_days:
        add(Feature(f"orders_{d}d", "orders", f"orders in the last {d} days", Dtype.INT, Unit.COUNT,
                    source="purchases", agg=Agg.COUNT, window_days=d, default=0, family="orders",
                    phrase=_count("order", "orders", f"in {window_text(d)}")),
            Feature(f"revenue_{d}d", "orders", f"spend in the last {d} days", Dtype.FLOAT, Unit.MONEY,
                    source="purchases", agg=Agg.SUM, of="value", window_days=d, default=0, family="revenue",
                    phrase=_money(f"spent {{}} in {window_text(d)}", f"spent nothing in {window_text(d)}")))
    add(Feature("_items", "orders", "items bought", Dtype.FLOAT, Unit.COUNT, source="purchases", agg=Agg.SUM,
                of="items"),
        Feature("avg_order_value", "orders", "revenue / orders", Dtype.FLOAT, Unit.MONEY,
                expr=_ratio("revenue", "orders_count"), phrase=lambda v: f"orders worth {money_text(v)} on average",
                missing="no orders yet"),
        Feature("items_per_order", "orders", "items bought / orders", Dtype.FLOAT, Unit.COUNT,
                expr=_ratio("_items", "orders_count"), phrase=lambda v: f"{v:,.1f} items per order on average",
                missing="no orders yet"),
        Feature("distinct_products", "orders", "distinct products bought", Dtype.INT, Unit.COUNT,
                source="bought_lines", agg=Agg.COUNT_DISTINCT, of=PRODUCT_ID, default=0,
                phrase=lambda v: ("no products bought yet" if round(v) == 0 else
                                  f"bought {_plural(v, 'different product')}")),
        Feature("_basket_value", "orders", "spend over positive lines", Dtype.FLOAT, Unit.MONEY,
                source="bought_lines", agg=Agg.SUM, of=f"{QUANTITY} * {UNIT_PRICE}"),
        Feature("_basket_items", "orders", "items over positive lines", Dtype.FLOAT, Unit.COUNT,
                source="bought_lines", agg=Agg.SUM, of=QUANTITY),
        Feature("avg_unit_price", "orders", "spend / items bought", Dtype.FLOAT, Unit.MONEY,
                expr=_ratio("_basket_value", "_basket_items"),
                phrase=lambda v: f"pays {money_text(v)} per item on average", missing="no items bought yet"))

    # Rhythm: the days between consecutive orders.
    add(Feature("ipi_mean_days", "rhythm", "mean days between consecutive orders", Dtype.FLOAT, Unit.DAYS,
                source="purchase_gaps", agg=Agg.MEAN, of="gap",
                phrase=lambda v: f"orders usually come every {days_text(v)}", missing="fewer than two orders so far"),
        Feature("ipi_std_days", "rhythm", "spread (standard deviation) of the days between orders", Dtype.FLOAT,
                Unit.DAYS, source="purchase_gaps", agg=Agg.STDDEV, of="gap",
                phrase=lambda v: f"days between orders vary by about {days_text(v)}",
                missing="fewer than three orders so far"),
        Feature("overdue_days", "rhythm", "recency_days − ipi_mean_days", Dtype.FLOAT, Unit.DAYS,
                expr="recency_days - ipi_mean_days",
                phrase=lambda v: (f"next order {days_text(v)} overdue at their usual pace" if v >= 0.5 else
                                  f"next order due in {days_text(v)} at their usual pace" if v <= -0.5 else
                                  "next order due now at their usual pace"),
                missing="fewer than two orders so far"),
        Feature("overdue_ratio", "rhythm", "recency_days / ipi_mean_days", Dtype.FLOAT, Unit.RATIO,
                expr=_ratio("recency_days", "ipi_mean_days"),
                phrase=lambda v: f"time since the last order is {v:,.1f} times their usual gap",
                missing="fewer than two orders so far"))

    # Returns: lines with a negative quantity.
    add(Feature("returns_count", "returns", "orders with a returned line", Dtype.INT, Unit.COUNT,
                source="returned_lines", agg=Agg.COUNT_DISTINCT, of=ORDER_ID, default=0,
                phrase=_count("return", "returns")),
        Feature("returned_value", "returns", "value returned", Dtype.FLOAT, Unit.MONEY, source="returned_lines",
                agg=Agg.SUM, of=f"-{QUANTITY} * {UNIT_PRICE}", default=0,
                phrase=_money("returned {} of goods", "returned nothing")),
        Feature("return_rate", "returns", "returned_value / revenue", Dtype.FLOAT, Unit.SHARE,
                expr=_ratio("returned_value", "revenue"), phrase=lambda v: f"returned {share_text(v)} of their spend",
                missing="no spend to compare returns with"))

    # Categories.
    add(Feature("top_category", "categories", "the category with the most spend (ties: first by name)", Dtype.TEXT,
                Unit.TEXT, source="category_spend", agg=Agg.TOP, of=CATEGORY, by="value", model_input=False,
                phrase=lambda v: f"buys most in {v}", missing="no purchases in a known category"),
        Feature("_top_category_value", "categories", "spend in the top category", Dtype.FLOAT, Unit.MONEY,
                source="category_spend", agg=Agg.MAX, of="value"),
        Feature("_category_total", "categories", "spend in any category", Dtype.FLOAT, Unit.MONEY,
                source="category_spend", agg=Agg.SUM, of="value"),
        Feature("top_category_share", "categories", "share of spend in the top category", Dtype.FLOAT, Unit.SHARE,
                expr=_ratio("_top_category_value", "_category_total"),
                phrase=lambda v: f"{share_text(v)} of their spend in one category",
                missing="no purchases in a known category"),
        Feature("categories_count", "categories", "categories bought from", Dtype.INT, Unit.COUNT,
                source="category_spend", agg=Agg.COUNT, default=0,
                phrase=lambda v: ("bought from no category yet" if round(v) == 0 else
                                  f"bought from {_plural(v, 'category', 'categories')}")))

    # Email and browsing: counts of one event type in each window of its group.
    event_counts = (
        ("email", config.email_windows_days, "emails_sent", (
            ("emails_sent", EventType.EMAIL_SENT, "emails sent", ("email sent", "emails sent")),
            ("email_opens", EventType.EMAIL_OPEN, "email opens", ("email open", "email opens")),
            ("email_clicks", EventType.EMAIL_CLICK, "email clicks", ("email click", "email clicks")))),
        ("browsing", config.browse_windows_days, "views", (
            ("views", EventType.PRODUCT_VIEW, "product views", ("product view", "product views")),
            ("cart_adds", EventType.ADD_TO_CART, "cart adds", ("cart add", "cart adds")),
            ("checkouts", EventType.CHECKOUT_START, "checkouts started", ("checkout started", "checkouts started")))),
    )
    for group, windows, signal_family, families in event_counts:
        for d in windows:
            for family, kind, what, (one, many) in families:
                add(Feature(f"{family}_{d}d", group, f"{what} in the last {d} days", Dtype.INT, Unit.COUNT,
                            source="events", agg=Agg.COUNT, where=_event(kind), window_days=d, default=0,
                            family=family, phrase=_count(one, many, f"in {window_text(d)}"),
                            signal=family == signal_family))
    add(Feature("days_since_last_open", "email", "days since the last email open", Dtype.FLOAT, Unit.DAYS,
                source="events", agg=Agg.DAYS_SINCE_LAST, where=_event(EventType.EMAIL_OPEN),
                phrase=_days_ago("last opened an email {} ago"), missing="never opened an email"),
        Feature("days_since_last_click", "email", "days since the last email click", Dtype.FLOAT, Unit.DAYS,
                source="events", agg=Agg.DAYS_SINCE_LAST, where=_event(EventType.EMAIL_CLICK),
                phrase=_days_ago("last clicked an email {} ago"), missing="never clicked an email"),
        Feature(UNSUBSCRIBED, "email", "an unsubscribe event before the as_of", Dtype.BOOL, Unit.FLAG,
                source="events", agg=Agg.ANY, where=_event(EventType.UNSUBSCRIBE), default=False, signal=True,
                phrase=_flag("unsubscribed from email", "still subscribed to email")))

    for d in config.abandoned_cart_days:
        add(Feature(f"cart_abandoned_{d}d", "browsing", f"a cart add in the last {d} days after the last order",
                    Dtype.BOOL, Unit.FLAG, source="abandoned_cart_adds", agg=Agg.ANY, window_days=d, default=False,
                    family="cart_abandoned", signal=True,
                    phrase=_flag(f"left items in the cart in {window_text(d)}",
                                 f"no items left in the cart in {window_text(d)}")))
    add(Feature("abandoned_cart_value", "browsing",
                f"prices of the products added in the last {max(config.abandoned_cart_days)} days after the last order",
                Dtype.FLOAT, Unit.MONEY, source="abandoned_cart_adds", agg=Agg.SUM, of=PRICE,
                where="first_of_product", default=0,
                phrase=_money("left {} of items in the cart", "no items left in the cart")))

    # Intent: weighted recent actions.
    iw, w = config.intent_window_days, config.intent_weights
    add(Feature("_intent_views", "intent", "product views in the intent window", Dtype.INT, Unit.COUNT,
                source="events", agg=Agg.COUNT, where=_event(EventType.PRODUCT_VIEW), window_days=iw, default=0),
        Feature("_intent_carts", "intent", "cart adds in the intent window", Dtype.INT, Unit.COUNT,
                source="events", agg=Agg.COUNT, where=_event(EventType.ADD_TO_CART), window_days=iw, default=0),
        Feature("_intent_orders", "intent", "orders in the intent window", Dtype.INT, Unit.COUNT,
                source="purchases", agg=Agg.COUNT, window_days=iw, default=0),
        Feature("intent_score", "intent",
                f"{w.view:g} per view + {w.add_to_cart:g} per cart add + {w.purchase:g} per order in the last {iw} days",
                Dtype.FLOAT, Unit.SCORE, default=0.0,
                expr=(f"{_double(w.view)} * _intent_views + {_double(w.add_to_cart)} * _intent_carts "
                      f"+ {_double(w.purchase)} * _intent_orders"),
                phrase=lambda v, iw=iw: (f"no views, cart adds or orders in {window_text(iw)}" if round(v) == 0 else
                                         f"activity score {v:,.0f} from views, cart adds and orders in "
                                         f"{window_text(iw)}")))
    for d in config.email_windows_days:
        add(Feature(f"open_rate_{d}d", "email", f"email opens / emails sent in the last {d} days (at most 1)",
                    Dtype.FLOAT, Unit.SHARE, expr=f"CASE WHEN emails_sent_{d}d > 0 THEN least(1, email_opens_{d}d / "
                                                  f"emails_sent_{d}d) END", family="open_rate",
                    phrase=lambda v, d=d: f"opened {share_text(v)} of emails in {window_text(d)}",
                    missing=f"no emails sent in {window_text(d)}"),
            Feature(f"click_rate_{d}d", "email", f"email clicks / emails sent in the last {d} days (at most 1)",
                    Dtype.FLOAT, Unit.SHARE, expr=f"CASE WHEN emails_sent_{d}d > 0 THEN least(1, email_clicks_{d}d / "
                                                  f"emails_sent_{d}d) END", family="click_rate",
                    phrase=lambda v, d=d: f"clicked {share_text(v)} of emails in {window_text(d)}",
                    missing=f"no emails sent in {window_text(d)}"))

    # RFM scores and segment; lifecycle stage.
    buyers = "orders_count > 0"
    add(Feature("rfm_recency", "RFM", "1-5: how recent the last order is among customers with an order",
                Dtype.INT, Unit.SCORE, score_of="recency_days", descending=True, population=buyers,
                phrase=lambda v: f"ranks {v:.0f} of 5 for how recently they ordered", missing="no orders yet"),
        Feature("rfm_frequency", "RFM", "1-5: how many orders, among customers with an order", Dtype.INT, Unit.SCORE,
                score_of="orders_count", population=buyers, phrase=lambda v: f"ranks {v:.0f} of 5 for number of orders",
                missing="no orders yet"),
        Feature("rfm_monetary", "RFM", "1-5: how much spend (rounded to 6 decimals), among customers with an order",
                Dtype.INT, Unit.SCORE, score_of="round(revenue, 6)", population=buyers,
                phrase=lambda v: f"ranks {v:.0f} of 5 for spend", missing="no orders yet"),
        Feature("rfm_segment", "RFM", "the first segment whose R and FM ranges match", Dtype.TEXT, Unit.LEVEL,
                expr=segment_sql("rfm_recency", f"CAST(ceil((rfm_frequency + rfm_monetary) / {_double(2)}) AS INTEGER)",
                                 "orders_count"),
                levels=SEGMENTS, level_phrases=tuple((f"in the {s} segment", f"not in the {s} segment")
                                                     for s in SEGMENTS),
                signal=True, missing="no orders yet"),
        Feature("_typical_gap", "lifecycle", "median ipi_mean_days over all customers at the as_of", Dtype.FLOAT,
                Unit.DAYS, population_median="ipi_mean_days"),
        Feature("lifecycle_stage", "lifecycle", "prospect, new, lapsed, at-risk, loyal or active (first match)",
                Dtype.TEXT, Unit.LEVEL, expr=_lifecycle_sql(config), levels=LIFECYCLE_STAGES,
                level_phrases=_stage_phrases(config), signal=True))
    return tuple(out)


# -- the registry of one configuration ----------------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    """The sources and features of one :class:`FeatureConfig`."""

    config: FeatureConfig
    sources: tuple[Source, ...]
    features: tuple[Feature, ...]
    by_name: dict[str, Feature] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.features})
        check(self)

    def source(self, name: str) -> Source:
        return next(s for s in self.sources if s.name == name)

    @property
    def outputs(self) -> list[str]:
        """The feature columns of a built frame, in order (after ``customer_id`` and ``as_of``)."""
        return [f.name for f in self.features if not f.internal]

    @property
    def columns(self) -> list[str]:
        return [CUSTOMER_ID, "as_of", *self.outputs]

    def model_inputs(self) -> list[str]:
        """The model's input columns: numeric and flag features, then one 0/1 column per level of each
        one-hot feature (``lifecycle_stage=loyal``)."""
        plain = [f.name for f in self.features if f.model_input and not f.internal and not f.levels]
        one_hot = [f"{f.name}={level}" for f in self.features if f.model_input and f.levels for level in f.levels]
        return plain + one_hot

    @property
    def one_hot(self) -> dict[str, tuple[str, ...]]:
        return {f.name: f.levels for f in self.features if f.model_input and f.levels}

    def signals(self) -> list[str]:
        """The features a next-best-action policy may name (with the model scores, see serving.policy)."""
        return [f.name for f in self.features if f.signal]


def registry(config: FeatureConfig | None = None) -> Registry:
    """The registry of ``config`` (default: :meth:`FeatureConfig.current`)."""
    return _registry(config or FeatureConfig.current())


@lru_cache(maxsize=32)
def _registry(config: FeatureConfig) -> Registry:
    return Registry(config, sources(config), features(config))


class RegistryError(ValueError):
    """A declaration that cannot be compiled (a bug in the registry, not in user input)."""


_NAME = re.compile(r"\b[a-z_][a-z0-9_]*\b")


def references(feature: Feature, names: Iterable[str]) -> set[str]:
    """The features (of ``names``) that ``feature``'s expression, score or median reads."""
    text = feature.expr or feature.score_of or feature.population_median or ""
    text = re.sub(r"'[^']*'", "", text)  # string literals name no feature
    known = set(names)
    return {n for n in _NAME.findall(text) if n in known and n != feature.name}


def check(reg: Registry) -> None:
    """Every declaration is complete: a known source, one way of computing, a phrase for every model input."""
    names = [f.name for f in reg.features]
    if len(set(names)) != len(names):
        raise RegistryError(f"feature names repeat: {sorted(n for n in names if names.count(n) > 1)}")
    source_names = {s.name for s in reg.sources}
    for f in reg.features:
        ways = [f.agg is not None, f.expr is not None, f.score_of is not None, f.population_median is not None]
        if sum(ways) != 1:
            raise RegistryError(f"{f.name}: declare exactly one of agg, expr, score_of, population_median")
        if f.agg is not None and f.source not in source_names:
            raise RegistryError(f"{f.name}: unknown source {f.source!r}")
        if f.window_days is not None and reg.source(f.source).time_column is None:
            raise RegistryError(f"{f.name}: source {f.source} has no timestamp for a window")
        if f.model_input and not f.internal:
            if f.levels and len(f.level_phrases) != len(f.levels):
                raise RegistryError(f"{f.name}: one (is, is not) phrase per level")
            if not f.levels and f.phrase is None:
                raise RegistryError(f"{f.name}: a model input needs a phrase for reasons")
            if not f.levels and f.default is None and f.missing is None:
                raise RegistryError(f"{f.name}: a model input that can be NULL needs a phrase for that (missing)")


# -- reasons in words -------------------------------------------------------------------------------

_WINDOWED = re.compile(r"^(?P<family>[a-z_]+?)_(?P<days>\d+)d$")


@lru_cache(maxsize=4096)
def _feature_for(column: str) -> Feature | None:
    """The declaration behind ``column``, for any window length (``orders_14d`` under a config with a
    14-day window, whatever the current one)."""
    default = registry(FeatureConfig())
    if column in default.by_name:
        return default.by_name[column]
    match = _WINDOWED.match(column)
    if match:
        days = int(match["days"])
        windows = FeatureConfig(order_windows_days=(days,), email_windows_days=(days,), browse_windows_days=(days,),
                                abandoned_cart_days=(days,))
        return registry(windows).by_name.get(column)
    return None


def describe(column: str, value: float | None, config: FeatureConfig | None = None) -> str:
    """One model input's value in words: ``describe("recency_days", 142) == "last order 142 days ago"``;
    ``describe("lifecycle_stage=loyal", 0) == "not a loyal customer"``. A column with no declaration is
    a KeyError (every model input has one, see :func:`check`)."""
    if "=" in column:
        name, level = column.split("=", 1)
        feature = (registry(config) if config else registry(FeatureConfig())).by_name.get(name) or _feature_for(name)
        if feature is None or level not in feature.levels:
            raise KeyError(f"no phrase for {column!r}")
        is_, is_not = feature.level_phrases[feature.levels.index(level)]
        return is_ if value else is_not
    feature = (registry(config).by_name.get(column) if config else None) or _feature_for(column)
    if feature is None or feature.phrase is None:
        raise KeyError(f"no phrase for {column!r}")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if feature.missing is None:
            raise KeyError(f"no phrase for a missing {column!r} (it has a default: {feature.default!r})")
        return feature.missing
    return feature.phrase(value)


# -- the README's table -----------------------------------------------------------------------------

_EXAMPLE = {Unit.DAYS: 142.0, Unit.COUNT: 3.0, Unit.MONEY: 120.5, Unit.SHARE: 0.4, Unit.RATIO: 2.1,
            Unit.SCORE: 4.0, Unit.FLAG: 1.0}


def _how(f: Feature, reg: Registry, windows: list[int] | None) -> str:
    if f.agg is None:
        if f.score_of is not None:
            return f"1-5 score by percent rank of `{f.score_of}` among `{f.population}`"
        return f.description
    of = f" of `{f.of}`" if f.of else ""
    if f.of == boolean_sql(VALUE):
        of = f" of `{VALUE}` read as true/false"
    how = {Agg.COUNT: "count", Agg.COUNT_DISTINCT: f"distinct count{of}", Agg.SUM: f"sum{of}",
           Agg.MEAN: f"mean{of}", Agg.STDDEV: f"standard deviation{of}", Agg.MAX: f"max{of}",
           Agg.ANY: "any row", Agg.DAYS_SINCE_FIRST: "days since the first row",
           Agg.DAYS_SINCE_LAST: "days since the last row",
           Agg.LATEST: f"latest value{of}", Agg.TOP: f"`{f.of}` with the largest `{f.by}`"}[f.agg]
    if f.where:
        how += f" where `{f.where}`"
    if windows:
        how += ", in the last N days"
    return how


def _example(f: Feature, reg: Registry, name: str) -> str:
    if f.levels:
        level = f.levels[0]
        return f"{describe(f'{f.name}={level}', 1.0, reg.config)} / {describe(f'{f.name}={level}', 0.0, reg.config)}"
    if f.phrase is None or f.unit is Unit.TEXT:
        return "-"
    if f.unit is Unit.FLAG:
        return f"{describe(name, 1.0, reg.config)} / {describe(name, 0.0, reg.config)}"
    return describe(name, _EXAMPLE[f.unit], reg.config)


def markdown_table(config: FeatureConfig | None = None) -> str:
    """The README's tables of sources and features ("Customer features"), generated from the
    declarations; windowed families on one row (``orders_{30,90,365}d``)."""
    reg = registry(config or FeatureConfig())
    lines = ["| source | rows | from | timestamp |", "|---|---|---|---|"]
    for src in reg.sources:
        origin = (f"`{src.table.value}`" if src.table else f"`{src.rollup_of}` by {', '.join(src.keys)}"
                  if src.rollup_of else f"`{src.rows_of}` where `{src.where}`" if src.rows_of else
                  f"`{src.intervals_of}`" if src.intervals_of else " + ".join(f"`{n}`" for n in src.union_of))
        if src.after_last_of:
            origin += f", after the customer's last `{src.after_last_of}` row"
        if src.window_days:
            origin += f", last {src.window_days} days"
        lines.append(f"| `{src.name}` | {src.description} | {origin} | {src.time_column or '-'} |")
    lines += ["", "| feature | group | source | computed as | type (when none) | used as | reason, e.g. |",
              "|---|---|---|---|---|---|---|"]
    families: dict[str, list] = {}
    entries: list[list] = []
    for f in reg.features:
        if f.internal:
            continue
        if f.family:
            if f.family in families:
                families[f.family][1].append(int(_WINDOWED.match(f.name)["days"]))
                continue
            families[f.family] = [f, [int(_WINDOWED.match(f.name)["days"])]]
            entries.append(families[f.family])
        else:
            entries.append([f, None])
    for f, windows in entries:
        name = f"`{f.family}_{{{','.join(map(str, windows))}}}d`" if windows else f"`{f.name}`"
        source = f"`{f.source}`" if f.source else "-"
        none = "NULL" if f.default is None else str(f.default).lower()
        used = ", ".join(u for u, on in (("model", f.model_input), ("signal", f.signal)) if on) or "-"
        how = _how(f, reg, windows).replace("|", "\\|")
        if windows:
            how = re.sub(rf"\b{windows[0]}\b", "N", how)
        lines.append(f"| {name} | {f.group} | {source} | {how} | {f.dtype.value} ({none}) | {used} | "
                     f"{_example(f, reg, f.name)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m features.registry [--readme]``: print the tables, or write them into README.md."""
    import sys
    from pathlib import Path

    args = sys.argv[1:] if argv is None else argv
    table = markdown_table(FeatureConfig())
    if "--readme" not in args:
        print(table)
        return 0
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_BEGIN}\n{table}\n{README_END}{tail}")
    return 0


README_BEGIN = "<!-- feature table: generated by `python -m features.registry` -->"
README_END = "<!-- end of feature table -->"


__all__ = ["Agg", "Dtype", "Feature", "Lookup", "Registry", "Source", "Unit", "describe", "markdown_table",
           "registry"]


if __name__ == "__main__":
    raise SystemExit(main())
