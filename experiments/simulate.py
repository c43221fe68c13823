"""Generated experiments with planted effects, for tests, the notebook and the demo.

Each customer has a latent activity (gamma, mean 1) that drives both their orders in the 90 days
before exposure and their chance to convert after it, so pre-exposure revenue is a useful CUPED
covariate, as in a real shop. Variants are assigned with the real hashing; each variant's planted
effects multiply the base rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.assignment import assign_many
from experiments.attribution import ACTION, EXPERIMENT, TIME, VARIANT
from experiments.config import Experiment
from features.io import write_parquet
from features.schema import (
    CUSTOMER_ID,
    EMAIL_CONSENT,
    EVENT_TYPE,
    OCCURRED_AT,
    ORDER_ID,
    ORDERED_AT,
    PRODUCT_ID,
    QUANTITY,
    SIGNUP_AT,
    UNIT_PRICE,
    EventType,
)


@dataclass(frozen=True)
class BaseRates:
    open_rate: float = 0.25
    click_given_open: float = 0.2
    conversion_rate: float = 0.04  # for a customer of average activity
    unsubscribe_rate: float = 0.004
    order_value: float = 40.0  # mean of a log-normal
    pre_orders_per_90d: float = 1.0


@dataclass(frozen=True)
class PlantedEffect:
    """Relative changes a variant causes (0.1 = +10 %)."""

    open_rate: float = 0.0
    click_rate: float = 0.0
    conversion_rate: float = 0.0
    unsubscribe_rate: float = 0.0
    order_value: float = 0.0


@dataclass
class SimulatedExperiment:
    exposures: list[dict]
    orders: pd.DataFrame
    events: pd.DataFrame
    customers: pd.DataFrame
    effects: dict[str, PlantedEffect] = field(default_factory=dict)

    def write(self, data_dir: Path | str, exposure_log: Path | str) -> None:
        """The shop's tables as contract Parquet files and the exposures as a JSON-lines log."""
        data_dir, exposure_log = Path(data_dir), Path(exposure_log)
        data_dir.mkdir(parents=True, exist_ok=True)
        write_parquet(self.orders, data_dir / "orders.parquet")
        write_parquet(self.events, data_dir / "events.parquet")
        write_parquet(self.customers, data_dir / "customers.parquet")
        exposure_log.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(self.exposures).to_json(exposure_log, orient="records", lines=True)


def _times(start: datetime, seconds: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.Timestamp(start) + pd.to_timedelta(np.round(seconds), unit="s"))


def simulate_experiment(experiment: Experiment, customers: int, effects: dict[str, PlantedEffect] | None = None,
                        base: BaseRates | None = None, seed: int = 0) -> SimulatedExperiment:
    """One send per customer, exposed during the first half of the experiment; outcomes over the
    attribution window. ``effects`` maps variant name to its planted effect (default: none, an A/A)."""
    rng = np.random.default_rng(seed)
    base = base or BaseRates()
    effects = {v.name: (effects or {}).get(v.name, PlantedEffect()) for v in experiment.variants}
    ids = np.array([f"c{i:07d}" for i in range(customers)])
    variants = np.array(assign_many(experiment, ids))
    effect = {name: np.array([getattr(effects[v], name) for v in variants]) for name in PlantedEffect.__annotations__}
    span = (experiment.end - experiment.start).total_seconds() / 2
    exposed = _times(experiment.start, rng.uniform(0, span, customers))
    activity = rng.gamma(0.5, 2.0, customers)
    window = experiment.attribution_window_days * 86_400.0

    sigma = 0.8  # log-normal order values with mean base.order_value
    def order_values(n: int, scale: np.ndarray | float = 1.0) -> np.ndarray:
        return np.round(base.order_value * scale * rng.lognormal(-sigma ** 2 / 2, sigma, n), 2)

    # before exposure: Poisson orders in the 90 days before
    pre_counts = rng.poisson(activity * base.pre_orders_per_90d)
    pre_owner = np.repeat(np.arange(customers), pre_counts)
    pre_at = exposed[pre_owner] - pd.to_timedelta(rng.uniform(1, 90 * 86_400, len(pre_owner)), unit="s")
    # after exposure: conversion, its order value, opens, clicks, unsubscribes
    converted = rng.random(customers) < np.minimum(1, base.conversion_rate * activity * (1 + effect["conversion_rate"]))
    opened = rng.random(customers) < np.minimum(1, base.open_rate * (1 + effect["open_rate"]))
    clicked = opened & (rng.random(customers) < np.minimum(1, base.click_given_open * (1 + effect["click_rate"])))
    unsubscribed = rng.random(customers) < np.minimum(1, base.unsubscribe_rate * (1 + effect["unsubscribe_rate"]))
    post_owner = np.flatnonzero(converted)
    post_at = exposed[post_owner] + pd.to_timedelta(rng.uniform(60, window - 60, len(post_owner)), unit="s")

    owners = np.concatenate([pre_owner, post_owner])
    orders = pd.DataFrame({
        ORDER_ID: [f"o{i:08d}" for i in range(len(owners))],
        CUSTOMER_ID: ids[owners],
        PRODUCT_ID: "p1",
        QUANTITY: 1.0,
        UNIT_PRICE: np.concatenate([order_values(len(pre_owner)),
                                    order_values(len(post_owner), 1 + effect["order_value"][post_owner])]),
        ORDERED_AT: np.concatenate([pre_at.to_numpy(), post_at.to_numpy()]),
    })
    event_frames = [pd.DataFrame({CUSTOMER_ID: ids, EVENT_TYPE: EventType.EMAIL_SENT.value, OCCURRED_AT: exposed})]
    for kind, mask, delay in ((EventType.EMAIL_OPEN, opened, 3_600.0), (EventType.EMAIL_CLICK, clicked, 7_200.0),
                              (EventType.UNSUBSCRIBE, unsubscribed, 10_800.0)):
        event_frames.append(pd.DataFrame({CUSTOMER_ID: ids[mask], EVENT_TYPE: kind.value,
                                          OCCURRED_AT: exposed[mask] + pd.to_timedelta(delay, unit="s")}))
    events = pd.concat(event_frames, ignore_index=True)
    events[PRODUCT_ID] = None
    customers_frame = pd.DataFrame({CUSTOMER_ID: ids, SIGNUP_AT: exposed - timedelta(days=365), EMAIL_CONSENT: True})
    iso = exposed.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    exposures = [{"request_id": f"sim{i}", TIME: t, CUSTOMER_ID: c, ACTION: "newsletter", EXPERIMENT: experiment.name,
                  VARIANT: v, "probability": 1.0, "products": [], "model_versions": {}}
                 for i, (t, c, v) in enumerate(zip(iso, ids, variants, strict=True))]
    return SimulatedExperiment(exposures, orders, events, customers_frame, effects)
