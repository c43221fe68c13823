"""From the exposure log and the shop's data to one row of outcomes per recipient.

* **Recipients**: customers with an exposure of the experiment inside ``[start, end)`` whose action
  was not ``suppress`` (a suppressed customer got no email). A customer's first such exposure sets
  their variant and exposure time; a customer logged under two variants (weights or salt changed
  mid-flight) is left out and counted in :attr:`Recipients.conflicting`. Forgotten customers (logged
  as ``forgotten``, or pseudonymised by ``sendwise privacy forget``) are left out and counted in
  :attr:`Recipients.forgotten`: their orders and events are deleted, so their outcomes are unknown.
* **Outcomes** within ``[exposed_at, exposed_at + window)``: opened, clicked, unsubscribed (any such
  event), converted (an order with a positive line), revenue (sum of positive order lines) and orders.
  Events carry no campaign id in the data contract, so an open in the window counts whatever email
  it was for; randomisation makes that noise equal across variants.
* **Pre-exposure revenue** in ``[exposed_at - pre_period, exposed_at)``: the CUPED covariate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from features.errors import NotFoundError
from features.schema import (
    CUSTOMER_ID,
    EVENT_TYPE,
    OCCURRED_AT,
    ORDER_ID,
    ORDERED_AT,
    QUANTITY,
    UNIT_PRICE,
    EventType,
)
from features.tables import Tables
from serving.experiment_config import Experiment
from serving.exposures import is_forgotten_id

EXPERIMENT = "experiment"
VARIANT = "variant"
ACTION = "action"
TIME = "time"
EXPOSED_AT = "exposed_at"
SUPPRESS = "suppress"


@dataclass
class Recipients:
    frame: pd.DataFrame  # customer_id, variant, exposed_at
    suppressed: dict[str, int] = field(default_factory=dict)  # per variant
    conflicting: int = 0  # customers logged under more than one variant, left out
    unknown_variants: dict[str, int] = field(default_factory=dict)  # variant in the log, not in the config
    forgotten: int = 0  # forgotten customers' exposures, left out


class NoExposuresError(NotFoundError):
    """The exposure log holds nothing for the experiment."""


def experiment_exposures(records: list[dict], experiment: Experiment) -> pd.DataFrame:
    """The log records of ``experiment`` inside its window: customer_id, variant, action, time."""
    rows = [(r.get(CUSTOMER_ID), r.get(VARIANT), r.get(ACTION), r.get(TIME)) for r in records
            if r.get(EXPERIMENT) == experiment.name]
    frame = pd.DataFrame(rows, columns=[CUSTOMER_ID, VARIANT, ACTION, TIME])
    frame[TIME] = pd.to_datetime(frame[TIME], utc=True, format="ISO8601").dt.tz_localize(None)
    return frame[(frame[TIME] >= experiment.start) & (frame[TIME] < experiment.end)].reset_index(drop=True)


def recipients(exposures: pd.DataFrame, experiment: Experiment) -> Recipients:
    """First non-suppressed exposure per customer, with the bookkeeping of what was left out."""
    if exposures.empty:
        raise NoExposuresError(
            f"experiment '{experiment.name}' has no exposures between {experiment.start} and {experiment.end} in the "
            "log. Is the service running with SENDWISE_EXPERIMENTS pointing at the experiments file?")
    gone = exposures[CUSTOMER_ID].map(is_forgotten_id).astype(bool)
    forgotten, exposures = int(gone.sum()), exposures[~gone]
    known = {v.name for v in experiment.variants}
    unknown = exposures.loc[~exposures[VARIANT].isin(known), VARIANT].value_counts().to_dict()
    exposures = exposures[exposures[VARIANT].isin(known)]
    sent = exposures[exposures[ACTION] != SUPPRESS]
    variants_per_customer = sent.groupby(CUSTOMER_ID)[VARIANT].nunique()
    conflicting = variants_per_customer.index[variants_per_customer > 1]
    sent = sent[~sent[CUSTOMER_ID].isin(conflicting)]
    first = (sent.sort_values(TIME).groupby(CUSTOMER_ID, as_index=False).first()
             .rename(columns={TIME: EXPOSED_AT})[[CUSTOMER_ID, VARIANT, EXPOSED_AT]])
    suppressed_only = exposures[~exposures[CUSTOMER_ID].isin(sent[CUSTOMER_ID])
                                & ~exposures[CUSTOMER_ID].isin(conflicting)]
    suppressed = suppressed_only.groupby(VARIANT)[CUSTOMER_ID].nunique().to_dict()
    return Recipients(first, {v: int(suppressed.get(v, 0)) for v in known}, len(conflicting),
                      {str(k): int(v) for k, v in unknown.items()}, forgotten)


def attribute(recipients_frame: pd.DataFrame, tables: Tables, window_days: int,
              pre_period_days: int) -> pd.DataFrame:
    """Outcomes of every recipient (one row each, in DuckDB)."""
    con = tables.con
    con.register("_recipients", recipients_frame[[CUSTOMER_ID, VARIANT, EXPOSED_AT]])
    try:
        return con.execute(
            f"""
            WITH email AS (
                SELECT r.{CUSTOMER_ID},
                       bool_or(e.{EVENT_TYPE} = '{EventType.EMAIL_OPEN.value}') AS opened,
                       bool_or(e.{EVENT_TYPE} = '{EventType.EMAIL_CLICK.value}') AS clicked,
                       bool_or(e.{EVENT_TYPE} = '{EventType.UNSUBSCRIBE.value}') AS unsubscribed
                FROM _recipients r JOIN events e ON e.{CUSTOMER_ID} = r.{CUSTOMER_ID}
                 AND e.{OCCURRED_AT} >= r.{EXPOSED_AT} AND e.{OCCURRED_AT} < r.{EXPOSED_AT} + to_days($window)
                GROUP BY r.{CUSTOMER_ID}),
            bought AS (
                SELECT r.{CUSTOMER_ID},
                       count(DISTINCT o.{ORDER_ID}) FILTER (WHERE o.{ORDERED_AT} >= r.{EXPOSED_AT}) AS orders,
                       coalesce(sum(o.{QUANTITY} * o.{UNIT_PRICE}) FILTER (WHERE o.{ORDERED_AT} >= r.{EXPOSED_AT}), 0)
                           AS revenue,
                       coalesce(sum(o.{QUANTITY} * o.{UNIT_PRICE}) FILTER (WHERE o.{ORDERED_AT} < r.{EXPOSED_AT}), 0)
                           AS pre_revenue
                FROM _recipients r JOIN orders o ON o.{CUSTOMER_ID} = r.{CUSTOMER_ID} AND o.{QUANTITY} > 0
                 AND o.{ORDERED_AT} >= r.{EXPOSED_AT} - to_days($pre)
                 AND o.{ORDERED_AT} < r.{EXPOSED_AT} + to_days($window)
                GROUP BY r.{CUSTOMER_ID})
            SELECT r.{CUSTOMER_ID}, r.{VARIANT}, r.{EXPOSED_AT},
                   coalesce(email.opened, false) AS opened, coalesce(email.clicked, false) AS clicked,
                   coalesce(email.unsubscribed, false) AS unsubscribed,
                   coalesce(bought.orders, 0) > 0 AS converted, coalesce(bought.orders, 0) AS orders,
                   coalesce(bought.revenue, 0.0) AS revenue, coalesce(bought.pre_revenue, 0.0) AS pre_revenue
            FROM _recipients r
            LEFT JOIN email USING ({CUSTOMER_ID}) LEFT JOIN bought USING ({CUSTOMER_ID})
            ORDER BY r.{CUSTOMER_ID}""",
            {"window": window_days, "pre": pre_period_days},
        ).df()
    finally:
        con.unregister("_recipients")
