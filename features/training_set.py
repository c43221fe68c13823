"""Labelled, point-in-time training sets: features at several as_of dates stacked, each labelled
from the window ``[as_of, as_of + horizon)``.

* ``churned``: no order in the window; only customers with at least one order before as_of.
* ``purchased``: at least one order in the window; every known customer.

An as_of is used only when its whole label window lies inside the data (ends at or before the
last timestamp seen); the rest are returned as ``skipped``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

import pandas as pd

from features.build import build_features, to_timestamp
from features.config import FeatureConfig
from features.engines import engine
from features.errors import InputError
from features.schema import AS_OF, CUSTOMER_ID, ORDERED_AT, QUANTITY
from features.tables import Tables
from features.validate import ContractError

if TYPE_CHECKING:
    from features.spark import SparkTables


class Target(StrEnum):
    CHURNED = "churned"
    PURCHASED = "purchased"


DEFAULT_HORIZON_DAYS = {Target.CHURNED: 90, Target.PURCHASED: 30}


@dataclass
class TrainingSet:
    frame: pd.DataFrame  # features + the target column
    target: Target
    horizon_days: int
    as_of_dates: list[datetime]
    skipped: list[datetime]


def data_end(tables: Tables | SparkTables) -> datetime:
    """The last timestamp in orders and events."""
    end = tables.time_range()[1]
    if end is None:
        raise ContractError("the data has no orders or events; nothing to build features from.")
    return end


def monthly_as_of_dates(tables: Tables, horizon_days: int, periods: int = 12, last: object | None = None,
                        min_history_days: int = 60, observed_until: datetime | None = None) -> list[datetime]:
    """Up to ``periods`` as_of dates a month apart, ending at ``last`` (default: the latest midnight
    whose label window is fully observed), none earlier than ``min_history_days`` into the data."""
    start, end = tables.time_range()
    if end is None:
        raise ContractError("the data has no orders or events; nothing to build features from.")
    if last is None:
        last = pd.Timestamp((observed_until or end) - timedelta(days=horizon_days)).floor("D")
    last = pd.Timestamp(to_timestamp(last))
    earliest = pd.Timestamp(start) + pd.Timedelta(days=min_history_days)
    dates = [last - pd.DateOffset(months=i) for i in range(periods)]
    return sorted(d.to_pydatetime() for d in dates if d >= earliest)


def label_sql(engine_name: str, horizon_days: int) -> str:
    """The customers with an order (a positive quantity) in ``[as_of, as_of + horizon_days)``, in an
    engine's dialect; its one parameter is the as_of."""
    e = engine(engine_name)
    return (f"SELECT DISTINCT {CUSTOMER_ID} FROM orders WHERE {QUANTITY} > 0 "
            f"AND {ORDERED_AT} >= {e.as_of()} AND {ORDERED_AT} < {e.days_after(horizon_days)}")


def _labelled_customers(tables: Tables | SparkTables, as_of: datetime, horizon_days: int) -> set[str]:
    rows = tables.query(label_sql(tables.engine, horizon_days), engine(tables.engine).parameters(as_of))
    return set(rows[CUSTOMER_ID])


def usable_dates(as_of_dates: Sequence[object], horizon_days: int, end: datetime) -> tuple[list[datetime], list[datetime]]:
    """(used, skipped): the as_of dates whose whole label window ends by ``end``, and the others; a
    ContractError when none is usable."""
    if horizon_days <= 0:
        raise InputError(f"horizon_days must be positive; got {horizon_days}")
    dates = sorted({to_timestamp(d) for d in as_of_dates})
    used = [d for d in dates if d + timedelta(days=horizon_days) <= end]
    skipped = [d for d in dates if d not in used]
    if not used:
        raise ContractError(
            f"no as_of date has a fully observed {horizon_days}-day label window: the data is complete until {end}, "
            f"so the latest usable as_of is {end - timedelta(days=horizon_days)}; got {', '.join(map(str, dates))}."
        )
    return used, skipped


def build_training_set(
    tables: Tables | SparkTables,
    as_of_dates: Sequence[object],
    target: Target | str,
    horizon_days: int | None = None,
    config: FeatureConfig | None = None,
    progress: Callable[[datetime], None] | None = None,
    observed_until: datetime | None = None,
) -> TrainingSet:
    """Stack features at each fully observed as_of with the ``target`` label.

    ``observed_until``: the moment up to which the data is complete (default: its last timestamp;
    for data cut at a date, that date).
    """
    target = Target(target)
    horizon = horizon_days if horizon_days is not None else DEFAULT_HORIZON_DAYS[target]
    used, skipped = usable_dates(as_of_dates, horizon, observed_until or data_end(tables))
    frames = []
    for as_of in used:
        features = build_features(tables, as_of, config)
        buyers = _labelled_customers(tables, as_of, horizon)
        bought = features[CUSTOMER_ID].isin(buyers)
        if target is Target.CHURNED:
            features = features[features["orders_count"] > 0].copy()
            features[target.value] = ~bought[features.index]
        else:
            features[target.value] = bought
        frames.append(features)
        if progress:
            progress(as_of)
    frame = pd.concat(frames, ignore_index=True).sort_values([AS_OF, CUSTOMER_ID], ignore_index=True)
    frame[target.value] = frame[target.value].astype(bool)
    return TrainingSet(frame, target, horizon, used, skipped)
