"""Today's customer attributes (country, email consent): what the service checks at send time.

Features never read these: a feature sees an attribute as its history (``customer_changes``) says it
was at the as_of (:mod:`features.registry`). Serving, deciding now whether an email may go out, uses
today's value: the customers table's where it holds one, else the latest change on record.
"""

from __future__ import annotations

import pandas as pd

from features.schema import (
    ATTRIBUTE,
    CHANGED_AT,
    COUNTRY,
    CUSTOMER_ID,
    EMAIL_CONSENT,
    VALUE,
    Table,
    boolean_sql,
)
from features.tables import Tables

CURRENT_ATTRIBUTES = (COUNTRY, EMAIL_CONSENT)


def current_attributes(tables: Tables) -> pd.DataFrame:
    """One row per customer with a value on record: ``customer_id``, ``country``, ``email_consent``
    as of today (the customers table first, the latest change for what it leaves empty)."""
    latest = {name: f"arg_max_null({expr}, {CHANGED_AT}) FILTER (WHERE {ATTRIBUTE} = '{name}')"
              for name, expr in ((COUNTRY, VALUE), (EMAIL_CONSENT, boolean_sql(VALUE)))}
    return tables.con.sql(f"""
        WITH history AS (
          SELECT {CUSTOMER_ID}, {latest[COUNTRY]} AS {COUNTRY}, {latest[EMAIL_CONSENT]} AS {EMAIL_CONSENT}
          FROM {Table.CUSTOMER_CHANGES.value} GROUP BY {CUSTOMER_ID}),
        today AS (
          SELECT {CUSTOMER_ID}, any_value({COUNTRY}) AS {COUNTRY}, any_value({EMAIL_CONSENT}) AS {EMAIL_CONSENT}
          FROM {Table.CUSTOMERS.value} GROUP BY {CUSTOMER_ID})
        SELECT {CUSTOMER_ID}, coalesce(t.{COUNTRY}, h.{COUNTRY}) AS {COUNTRY},
               coalesce(t.{EMAIL_CONSENT}, h.{EMAIL_CONSENT}) AS {EMAIL_CONSENT}
        FROM today t FULL OUTER JOIN history h USING ({CUSTOMER_ID})
        ORDER BY {CUSTOMER_ID}""").df()


def with_current_attributes(signals: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """``signals`` (one row per customer, with ``customer_id``) whose attribute columns hold today's
    value where one is on record, and the as_of value of the features otherwise."""
    out = signals.copy()
    today = current.set_index(CUSTOMER_ID).reindex(out[CUSTOMER_ID])
    for name in CURRENT_ATTRIBUTES:
        if name in out and name in today:
            now = today[name].to_numpy(object)
            known = pd.notna(today[name]).to_numpy()
            out[name] = out[name].astype(object).where(~known, now)
    return out
