"""Generated experiments with planted effects, for tests, the notebook and the demo.

Each customer has a latent activity (gamma, mean 1) that drives both their orders in the 90 days
before exposure and their chance to convert after it, so pre-exposure revenue is a useful CUPED
covariate, as in a real shop. Variants are assigned with the real hashing; each variant's planted
effects multiply the base rates. :func:`simulate_responses` alone adds responses to the exposures of
a real run (e.g. the service's log over the demo shop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.attribution import ACTION, EXPERIMENT, EXPOSED_AT, TIME, VARIANT
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
from serving.assignment import assign_many
from serving.experiment_config import Experiment


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


def simulate_responses(exposed: pd.DataFrame, experiment: Experiment, effects: dict[str, PlantedEffect] | None = None,
                       base: BaseRates | None = None, activity: np.ndarray | None = None,
                       seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Orders and events that recipients produce after exposure, with each variant's planted effect.

    ``exposed``: one row per recipient with customer_id, variant, exposed_at. ``activity``: each
    recipient's latent activity (default 1), which scales their chance to convert."""
    rng = np.random.default_rng(seed)
    base = base or BaseRates()
    effects = {v.name: (effects or {}).get(v.name, PlantedEffect()) for v in experiment.variants}
    n = len(exposed)
    ids = exposed[CUSTOMER_ID].to_numpy()
    at = pd.DatetimeIndex(exposed[EXPOSED_AT])
    variants = exposed[VARIANT].to_numpy()
    effect = {name: np.array([getattr(effects[v], name) for v in variants]) for name in PlantedEffect.__annotations__}
    activity = np.ones(n) if activity is None else activity
    window = experiment.attribution_window_days * 86_400.0
    converted = rng.random(n) < np.minimum(1, base.conversion_rate * activity * (1 + effect["conversion_rate"]))
    opened = rng.random(n) < np.minimum(1, base.open_rate * (1 + effect["open_rate"]))
    clicked = opened & (rng.random(n) < np.minimum(1, base.click_given_open * (1 + effect["click_rate"])))
    unsubscribed = rng.random(n) < np.minimum(1, base.unsubscribe_rate * (1 + effect["unsubscribe_rate"]))
    buyers = np.flatnonzero(converted)
    orders = pd.DataFrame({
        ORDER_ID: [f"sim-{seed}-{i:08d}" for i in range(len(buyers))],
        CUSTOMER_ID: ids[buyers], PRODUCT_ID: "p1", QUANTITY: 1.0,
        UNIT_PRICE: _order_values(rng, base, len(buyers), 1 + effect["order_value"][buyers]),
        ORDERED_AT: at[buyers] + pd.to_timedelta(rng.uniform(60, window - 60, len(buyers)), unit="s"),
    })
    event_frames = [pd.DataFrame({CUSTOMER_ID: ids, EVENT_TYPE: EventType.EMAIL_SENT.value, OCCURRED_AT: at})]
    for kind, mask, delay in ((EventType.EMAIL_OPEN, opened, 3_600.0), (EventType.EMAIL_CLICK, clicked, 7_200.0),
                              (EventType.UNSUBSCRIBE, unsubscribed, 10_800.0)):
        event_frames.append(pd.DataFrame({CUSTOMER_ID: ids[mask], EVENT_TYPE: kind.value,
                                          OCCURRED_AT: at[mask] + pd.to_timedelta(delay, unit="s")}))
    events = pd.concat(event_frames, ignore_index=True)
    events[PRODUCT_ID] = None
    return orders, events


SIGMA = 0.8  # spread of the log-normal order values


def _order_values(rng: np.random.Generator, base: BaseRates, n: int, scale: np.ndarray | float = 1.0) -> np.ndarray:
    """Log-normal order values with mean ``base.order_value * scale``."""
    return np.round(base.order_value * scale * rng.lognormal(-SIGMA ** 2 / 2, SIGMA, n), 2)


def simulate_experiment(experiment: Experiment, customers: int, effects: dict[str, PlantedEffect] | None = None,
                        base: BaseRates | None = None, seed: int = 0) -> SimulatedExperiment:
    """One send per customer, exposed during the first half of the experiment, with their orders
    in the 90 days before and their responses after (:func:`simulate_responses`). ``effects`` maps
    variant name to its planted effect (default: none, an A/A test)."""
    rng = np.random.default_rng(seed)
    base = base or BaseRates()
    ids = np.array([f"c{i:07d}" for i in range(customers)])
    variants = np.array(assign_many(experiment, ids))
    span = (experiment.end - experiment.start).total_seconds() / 2
    exposed_at = _times(experiment.start, rng.uniform(0, span, customers))
    activity = rng.gamma(0.5, 2.0, customers)
    pre_counts = rng.poisson(activity * base.pre_orders_per_90d)
    pre_owner = np.repeat(np.arange(customers), pre_counts)
    pre_orders = pd.DataFrame({
        ORDER_ID: [f"pre-{i:08d}" for i in range(len(pre_owner))], CUSTOMER_ID: ids[pre_owner], PRODUCT_ID: "p1",
        QUANTITY: 1.0, UNIT_PRICE: _order_values(rng, base, len(pre_owner)),
        ORDERED_AT: exposed_at[pre_owner] - pd.to_timedelta(rng.uniform(1, 90 * 86_400, len(pre_owner)), unit="s"),
    })
    exposed = pd.DataFrame({CUSTOMER_ID: ids, VARIANT: variants, EXPOSED_AT: exposed_at})
    post_orders, events = simulate_responses(exposed, experiment, effects, base, activity, seed + 1)
    customers_frame = pd.DataFrame({CUSTOMER_ID: ids, SIGNUP_AT: exposed_at - timedelta(days=365), EMAIL_CONSENT: True})
    iso = exposed_at.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    exposures = [{"request_id": f"sim{i}", TIME: t, CUSTOMER_ID: c, ACTION: "newsletter", EXPERIMENT: experiment.name,
                  VARIANT: v, "probability": 1.0, "products": [], "model_versions": {}}
                 for i, (t, c, v) in enumerate(zip(iso, ids, variants, strict=True))]
    return SimulatedExperiment(exposures, pd.concat([pre_orders, post_orders], ignore_index=True), events,
                               customers_frame, {v.name: (effects or {}).get(v.name, PlantedEffect())
                                                 for v in experiment.variants})
