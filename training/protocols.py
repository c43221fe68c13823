"""The evaluation protocols in one place: how a shop's purchases split into what a model learns from
(the input) and what it must find (the truth).

* :func:`time_split` ``(tables, as_of, until)``: fitted on the rows before ``as_of``; the truth is
  what each customer who bought before ``as_of`` bought in ``[as_of, until)``. For shops whose
  customers come back over months.
* :func:`leave_latest_out` ``(tables, as_of)``: each customer's latest day of purchases (before
  ``as_of``) is held out as the truth, their earlier rows (and every other row before ``as_of``)
  are the input. For data where a customer's history is one short burst (MovieLens-like rating
  sessions), where few customers buy on both sides of any one date.
* :func:`choose_protocol` ``(tables, window_days)``: which of the two suits the data, with the reason.
* :func:`clv_holdout` ``(tables, as_of, horizon_days)``: lifetime value's protocol: the orders before
  ``as_of`` are the input, each of those customers' order days, orders and spend in the next
  ``horizon_days`` the truth (:mod:`training.clv`).

Both return a :class:`Holdout`; truth comes in two variants: *new items* (products the customer had
not bought in the input) and *all items* (repurchases count). A test customer bought something in
the input and something in the truth.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pandas as pd

from features.build import to_timestamp
from features.errors import InputError, NotFoundError
from features.interactions import purchases
from features.schema import (
    CUSTOMER_ID,
    OCCURRED_AT,
    ORDER_ID,
    ORDERED_AT,
    PRODUCT_ID,
    QUANTITY,
    UNIT_PRICE,
    Table,
)
from features.tables import Tables

NEW_ITEMS, ALL_ITEMS = "new items", "all items"
TIME_SPLIT, LEAVE_LATEST_OUT = "time split", "leave latest out"
_INSTANT = timedelta(microseconds=1)


class NoTestCustomersError(NotFoundError):
    """The evaluation window has no customer with history before it."""


@dataclass
class Holdout:
    """Truth pairs per variant and what was bought in the input.

    Models fit on ``inputs`` (None: the tables the holdout was cut from) at ``as_of`` and read each
    customer's history from it."""

    as_of: datetime
    until: datetime
    before: pd.DataFrame  # (customer_id, product_id) bought in the input
    truth: dict[str, pd.DataFrame]  # variant -> (customer_id, product_id) held out
    inputs: Tables | None = None
    protocol: str = TIME_SPLIT

    @property
    def customers(self) -> pd.Index:
        return pd.Index(sorted(set(self.truth[ALL_ITEMS][CUSTOMER_ID])), name=CUSTOMER_ID)


def _truth(before: pd.DataFrame, held: pd.DataFrame) -> dict[str, pd.DataFrame]:
    held = held[held[CUSTOMER_ID].isin(before[CUSTOMER_ID])][[CUSTOMER_ID, PRODUCT_ID]].reset_index(drop=True)
    seen = held.merge(before.assign(_seen=True), on=[CUSTOMER_ID, PRODUCT_ID], how="left")["_seen"].notna()
    return {ALL_ITEMS: held, NEW_ITEMS: held[~seen.to_numpy()].reset_index(drop=True)}


def time_split(tables: Tables, as_of: datetime, until: datetime | None = None) -> Holdout:
    """Input: the rows before ``as_of``; truth: purchases in ``[as_of, until)`` (``until`` None: to
    the end of the data, its last order included)."""
    end = until or tables.time_range()[1]
    if end is None or end <= as_of:
        raise NoTestCustomersError(f"the data has no order at or after {as_of:%Y-%m-%d} to evaluate on.")
    if until is None:  # the window is closed: include the last order
        end = pd.Timestamp(end) + pd.Timedelta(microseconds=1)
    before = purchases(tables, None, as_of)[[CUSTOMER_ID, PRODUCT_ID]]
    truth = _truth(before, purchases(tables, as_of, end))
    if truth[NEW_ITEMS].empty:
        raise NoTestCustomersError(
            f"no customer with orders before {as_of:%Y-%m-%d} bought a new product between then and {end}; "
            "pick an earlier --as-of.")
    return Holdout(as_of, end, before, truth)


def leave_latest_out(tables: Tables, as_of: datetime | None = None) -> Holdout:
    """Of the rows before ``as_of`` (None: every row), each customer's purchases on the calendar day
    of their latest purchase are the truth when they bought on an earlier day too; the input is
    every row before ``as_of`` but those customers' orders and events from that day on. Models fit
    at ``as_of`` (None: just after the last row) on the input."""
    end = as_of or tables.time_range()[1]
    if end is None:
        raise NoTestCustomersError("the data has no order to evaluate on.")
    end = end if as_of is not None else pd.Timestamp(end).to_pydatetime() + _INSTANT
    inputs = tables.before(end)
    con = inputs.con
    orders, events = Table.ORDERS.value, Table.EVENTS.value
    con.execute(f"""CREATE TEMP TABLE _held_from AS
        SELECT {CUSTOMER_ID}, date_trunc('day', max({ORDERED_AT}))::TIMESTAMP AS held_from
        FROM {orders} WHERE {QUANTITY} > 0 GROUP BY ALL
        HAVING min({ORDERED_AT}) < date_trunc('day', max({ORDERED_AT}))""")
    held = con.sql(f"""SELECT DISTINCT o.{CUSTOMER_ID}, o.{PRODUCT_ID} FROM {orders} o
        JOIN _held_from h USING ({CUSTOMER_ID}) WHERE o.{ORDERED_AT} >= h.held_from AND o.{QUANTITY} > 0""").df()
    for table, column in ((orders, ORDERED_AT), (events, OCCURRED_AT)):
        con.execute(f"""DELETE FROM {table} t USING _held_from h
                        WHERE t.{CUSTOMER_ID} = h.{CUSTOMER_ID} AND t.{column} >= h.held_from""")
    con.execute("DROP TABLE _held_from")
    before = purchases(inputs, None, end)[[CUSTOMER_ID, PRODUCT_ID]]
    truth = _truth(before, held)
    if truth[NEW_ITEMS].empty:
        raise NoTestCustomersError(
            "no customer bought on two different days a product new to them on the later one: leave-latest-out "
            "has nothing to hold out.")
    return Holdout(end, end, before, truth, inputs, LEAVE_LATEST_OUT)


def choose_protocol(tables: Tables, window_days: int = 90) -> tuple[str, str]:
    """(protocol, reason): the time split when the customers who buy on two or more days do so over
    a median span of at least ``window_days`` (they come back across a window, so a date splits
    their histories), else leave-latest-out (each history is a short burst)."""
    spans = tables.con.sql(f"""
        SELECT date_diff('day', min({ORDERED_AT})::DATE, max({ORDERED_AT})::DATE) AS span
        FROM {Table.ORDERS.value} WHERE {QUANTITY} > 0 GROUP BY {CUSTOMER_ID}
        HAVING count(DISTINCT {ORDERED_AT}::DATE) >= 2""").df()["span"]
    if spans.empty:
        return LEAVE_LATEST_OUT, "no customer bought on two different days: there is no history to split in time"
    median = float(spans.median())
    what = (f"the {len(spans):,} customers who bought on two or more days did so over a median of "
            f"{median:.0f} days")
    if median >= window_days:
        return TIME_SPLIT, f"{what}, at least the {window_days}-day window: they come back over months"
    return LEAVE_LATEST_OUT, (f"{what}, less than the {window_days}-day window: histories are short bursts, so "
                              "each customer's latest day is held out")


def validation_fold(tables: Tables, test: Holdout, window_days: int) -> Holdout:
    """The fold before ``test`` (``test`` cut from ``tables``) that models are chosen on, never
    touching its truth: for the time split, the ``window_days`` before ``test.as_of`` with the rows
    before them as the input; for leave-latest-out, each customer's latest day of ``test``'s input."""
    if test.protocol == LEAVE_LATEST_OUT:
        return leave_latest_out(test.inputs, test.as_of)
    cut = tables.before(test.as_of)
    return replace(time_split(cut, test.as_of - timedelta(days=window_days), test.as_of), inputs=cut)


HOLDOUT_COLUMNS = (CUSTOMER_ID, "actual_orders", "actual_orders_placed", "actual_spend")


def clv_holdout(tables: Tables, as_of: datetime | str | pd.Timestamp, horizon_days: int) -> pd.DataFrame:
    """The CLV evaluation protocol: calibration = orders before ``as_of``; holdout = the next
    ``horizon_days`` days. One row per calibration customer (an order before ``as_of``):
    ``actual_orders`` (days with an order in ``[as_of, as_of + horizon)``, the library summary's unit),
    ``actual_orders_placed`` (the orders themselves, the features' unit, which the served model counts)
    and ``actual_spend`` (those orders' value). An InputError when the data ends before the window."""
    when = to_timestamp(as_of)
    end = when + pd.Timedelta(days=int(horizon_days))
    _, last = tables.time_range()
    if last is None or last < end - pd.Timedelta(days=1):
        raise InputError(f"The CLV holdout [{when:%Y-%m-%d}, {end:%Y-%m-%d}) is not inside the data, whose last row "
                         f"is at {last}; use an earlier as_of or a shorter horizon.")
    sql = f"""
        WITH purchases AS (
            SELECT {CUSTOMER_ID}, min({ORDERED_AT}) AS placed, sum({QUANTITY} * {UNIT_PRICE}) AS value
            FROM {Table.ORDERS.value} WHERE {ORDERED_AT} < $end AND {QUANTITY} > 0
            GROUP BY {CUSTOMER_ID}, {ORDER_ID}),
        calibration AS (SELECT DISTINCT {CUSTOMER_ID} FROM purchases WHERE placed < $as_of)
        SELECT c.{CUSTOMER_ID},
               CAST(count(DISTINCT date_trunc('day', p.placed)) AS DOUBLE) AS actual_orders,
               CAST(count(p.placed) AS DOUBLE) AS actual_orders_placed,
               CAST(coalesce(sum(p.value), 0) AS DOUBLE) AS actual_spend
        FROM calibration c LEFT JOIN purchases p ON p.{CUSTOMER_ID} = c.{CUSTOMER_ID} AND p.placed >= $as_of
        GROUP BY c.{CUSTOMER_ID} ORDER BY c.{CUSTOMER_ID}"""
    return tables.con.sql(sql, params={"as_of": when, "end": end}).df()[list(HOLDOUT_COLUMNS)]
