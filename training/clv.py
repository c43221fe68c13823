"""Customer lifetime value: expected orders, P(alive), predicted spend and the next order date.

Two buy-till-you-die models, fitted by maximum likelihood (PyMC-Marketing's MAP fit with flat priors)
on the orders before an as_of:

* **BG/NBD** (Fader, Hardie & Lee 2005): while alive a customer orders at a Poisson rate (rates across
  customers Gamma(r, alpha)); after each order they drop out with probability p (Beta(a, b) across
  customers). Gives P(alive) and the expected number of orders in the next t days.
* **Gamma-Gamma** (Fader & Hardie 2013, "The Gamma-Gamma model of monetary value"): the spend per
  order, fitted on repeat buyers (parameters p, q, v). A customer's expected spend per order is a
  weighted mean of the population mean ``p v / (q - 1)`` and their own mean repeat-order value; a
  customer with no repeat order gets the population mean.

:func:`fit_clv` maximises both models' closed-form log-likelihoods with scipy (well under a second on
Online Retail). PyMC-Marketing (``BetaGeoModel``, ``GammaGammaModel``: the field's library, the successor
of the unmaintained ``lifetimes``) is the reference: its MAP fit with flat priors is the same maximum
likelihood, and tests check that both give the same parameters and predictions. It is not what a run
fits with, because it compiles a new graph for every as_of (8 to 25 s each, 42 s the first time on a
machine, plus 3 to 9 s to import; docs/clv.md), which ``sendwise run`` and its tests cannot afford; it is
a test dependency only. Predictions are closed forms of the seven fitted numbers (:class:`ClvModel`).

Units, as ``pymc_marketing.clv.utils.rfm_summary`` defines them (time unit: a UTC day): an *order* is
an order id's lines with a positive quantity (value: the sum of quantity x unit_price), as the
``orders_count`` and ``revenue`` features count them. Returns (negative quantities) are neither orders
nor subtracted from spend: the models predict gross spend. Orders on the same day count as one
purchase occasion with their values summed. ``frequency`` is the number of days with an order after
the first, ``recency`` the days from the first to the last such day, ``T`` the days from the first to
the as_of's day, ``monetary_value`` the mean value of the repeat days (0 without one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, gammaln, hyp2f1
from scipy.stats import spearmanr

from features.build import to_timestamp
from features.errors import InputError
from features.schema import CUSTOMER_ID, ORDER_ID, ORDERED_AT, QUANTITY, UNIT_PRICE, Table
from features.tables import Tables

DEFAULT_HORIZON_DAYS = 365
SHORT_HORIZONS_DAYS = (180, 90)  # for a history before the as_of shorter than the asked horizon
MIN_REPEAT_BUYERS = 30  # customers with a second order day needed to fit either model
PARAMETERS = ("r", "alpha", "a", "b", "p", "q", "v")
SUMMARY_COLUMNS = (CUSTOMER_ID, "frequency", "recency", "T", "monetary_value", "spend")
PREDICTION_COLUMNS = (CUSTOMER_ID, "expected_orders", "p_alive", "predicted_clv", "next_order_date")
COMPILE_MODE = "FAST_COMPILE"


def _day_sql(column: str) -> str:
    return f"date_trunc('day', {column})"


def clv_summary(tables: Tables, as_of: datetime | str | pd.Timestamp) -> pd.DataFrame:
    """One row per customer with an order before ``as_of``: ``frequency``, ``recency``, ``T``,
    ``monetary_value`` (see the module docstring; equal to PyMC-Marketing's ``rfm_summary`` with its
    observation end at ``as_of``) and ``spend`` (every order's value before ``as_of``, the first
    included), sorted by customer id."""
    when = to_timestamp(as_of)
    sql = f"""
        WITH purchases AS (
            SELECT {CUSTOMER_ID}, {ORDER_ID}, min({ORDERED_AT}) AS placed, sum({QUANTITY} * {UNIT_PRICE}) AS value
            FROM {Table.ORDERS.value} WHERE {ORDERED_AT} < $as_of AND {QUANTITY} > 0
            GROUP BY {CUSTOMER_ID}, {ORDER_ID}),
        days AS (
            SELECT {CUSTOMER_ID}, {_day_sql('placed')} AS day, sum(value) AS value FROM purchases GROUP BY 1, 2),
        ranked AS (
            SELECT *, row_number() OVER (PARTITION BY {CUSTOMER_ID} ORDER BY day) AS k FROM days)
        SELECT {CUSTOMER_ID},
               CAST(count(*) - 1 AS DOUBLE) AS frequency,
               CAST(date_diff('day', min(day), max(day)) AS DOUBLE) AS recency,
               CAST(date_diff('day', min(day), {_day_sql('$as_of')}) AS DOUBLE) AS "T",
               CAST(coalesce(avg(value) FILTER (WHERE k > 1), 0) AS DOUBLE) AS monetary_value,
               CAST(sum(value) AS DOUBLE) AS spend
        FROM ranked GROUP BY {CUSTOMER_ID} ORDER BY {CUSTOMER_ID}"""
    return tables.con.sql(sql, params={"as_of": when}).df()[list(SUMMARY_COLUMNS)]


def choose_horizon(history_days: float, asked_days: int = DEFAULT_HORIZON_DAYS) -> tuple[int, str]:
    """The horizon to predict over and a sentence saying why: ``asked_days`` when the history before
    the as_of is at least that long, else the longest of :data:`SHORT_HORIZONS_DAYS` it covers (the
    shortest when it covers none)."""
    if asked_days < 1:
        raise InputError(f"The CLV horizon must be a whole number of days of at least 1. Got {asked_days} instead.")
    if history_days >= asked_days:
        return asked_days, f"horizon {asked_days} days"
    shorter = [h for h in SHORT_HORIZONS_DAYS if h < asked_days]
    if not shorter:
        return asked_days, f"horizon {asked_days} days"
    chosen = next((h for h in shorter if h <= history_days), shorter[-1])
    return chosen, (f"horizon {chosen} days: the history before the as_of is {history_days:.0f} days, "
                    f"shorter than the {asked_days} days asked")


_LOG_BOUNDS = (-25.0, 25.0)  # each parameter searched as its log, within e^-25 .. e^25 (a -> 0 happens)


def _bgnbd_loglik(log_params: np.ndarray, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> float:
    """BG/NBD log-likelihood of every customer (Fader, Hardie & Lee 2005, eq. 6)."""
    r, alpha, a, b = np.exp(log_params)
    head = (gammaln(r + x) - gammaln(r) + r * np.log(alpha)
            + gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x))
    alive = -(r + x) * np.log(alpha + T)
    dropped = np.where(x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + tx), -np.inf)
    return float(np.sum(head + np.logaddexp(alive, dropped)))


def _gamma_gamma_loglik(log_params: np.ndarray, x: np.ndarray, m: np.ndarray) -> float:
    """Gamma-Gamma log-likelihood of the repeat buyers' mean order values (Fader & Hardie 2013), of the
    logs of (p, q, v / q): the likelihood is flat along q, v -> infinity with v / q fixed (order values
    that hardly vary between customers), which the last coordinate keeps out of the search's way."""
    p, q, scale = np.exp(log_params)
    v = q * scale
    px = p * x
    return float(np.sum(gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(v) + (px - 1) * np.log(m)
                        + px * np.log(x) - (px + q) * np.log(x * m + v)))


def _maximise(loglik: Callable[[np.ndarray], float], n: int) -> np.ndarray:
    result = minimize(lambda theta: -loglik(theta), np.zeros(n), method="L-BFGS-B", bounds=[_LOG_BOUNDS] * n,
                      options={"ftol": 1e-14, "gtol": 1e-10, "maxiter": 10_000})
    if not np.isfinite(result.fun):
        raise InputError(f"the CLV fit did not converge ({result.message}); expected a finite likelihood")
    return np.exp(result.x)


def fit_bgnbd(summary: pd.DataFrame, min_repeat_buyers: int = MIN_REPEAT_BUYERS) -> dict[str, float]:
    """Maximum-likelihood BG/NBD (r, alpha, a, b) on every customer of ``summary`` (``frequency``,
    ``recency``, ``T``); an InputError with fewer than ``min_repeat_buyers`` repeat buyers."""
    _check_repeat_buyers(summary, min_repeat_buyers)
    x, tx, T = (summary[c].to_numpy(float) for c in ("frequency", "recency", "T"))
    r, alpha, a, b = _maximise(lambda theta: _bgnbd_loglik(theta, x, tx, T), 4)
    return {"r": float(r), "alpha": float(alpha), "a": float(a), "b": float(b)}


def fit_parameters(summary: pd.DataFrame) -> dict[str, float]:
    """Maximum-likelihood BG/NBD (r, alpha, a, b) on every customer of ``summary`` (:func:`fit_bgnbd`) and
    Gamma-Gamma (p, q, v) on the repeat buyers with a positive mean value: what PyMC-Marketing's MAP fit
    with flat priors gives (:func:`fit_library_models`), without compiling anything."""
    bgnbd = fit_bgnbd(summary)
    spenders = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
    p, q, scale = _maximise(lambda theta: _gamma_gamma_loglik(theta, spenders["frequency"].to_numpy(float),
                                                              spenders["monetary_value"].to_numpy(float)), 3)
    return {**bgnbd, "p": p, "q": q, "v": q * scale}


def dropout_log_odds(r: float, alpha: float, a: float, b: float, frequency: np.ndarray, recency: np.ndarray,
                     T: np.ndarray) -> np.ndarray:
    """BG/NBD log of P(dropped out) / P(alive) at T (Fader, Hardie & Lee 2008, "Computing P(alive)"):
    ``log(a / (b + x - 1)) + (r + x) log((alpha + T) / (alpha + t_x))``; -inf without a repeat order (a
    customer drops out only right after a repeat order)."""
    x, tx, T = np.asarray(frequency, float), np.asarray(recency, float), np.asarray(T, float)
    log_odds = (r + x) * np.log((alpha + T) / (alpha + tx)) + np.log(a / (b + np.maximum(x, 1) - 1))
    return np.where(x > 0, log_odds, -np.inf)


def no_order_log_odds(r: float, alpha: float, a: float, b: float, frequency: np.ndarray, recency: np.ndarray,
                      T: np.ndarray, t: float) -> np.ndarray:
    """BG/NBD log-odds that a customer places no order in the ``t`` days after T (Fader, Hardie & Lee,
    "Deriving the conditional PMF of the BG/NBD", the case of zero orders):

    P(none) = (1 - P_alive) + P_alive ((alpha + T) / (alpha + T + t))^(r + x)

    (alive at T, the purchase rate's posterior is Gamma(r + x, alpha + T), and nobody drops out without
    an order). With d the :func:`dropout_log_odds` and log s = (r + x) log((alpha + T) / (alpha + T + t)),
    the log-odds are ``logaddexp(d, log s) - log(1 - s)``, computed without forming P_alive."""
    x, T = np.asarray(frequency, float), np.asarray(T, float)
    log_s = -(r + x) * np.log1p(t / (alpha + T))
    return np.logaddexp(dropout_log_odds(r, alpha, a, b, x, recency, T), log_s) - np.log(-np.expm1(log_s))


def _check_repeat_buyers(summary: pd.DataFrame, minimum: int = MIN_REPEAT_BUYERS) -> pd.DataFrame:
    repeat = summary[summary["frequency"] > 0]
    if len(repeat) < minimum:
        raise InputError(f"Too few repeat buyers to fit the CLV models: {len(repeat)} customers ordered on more than "
                         f"one day before the as_of; at least {minimum} are needed. Use a later --as-of "
                         "or more history.")
    return repeat


def _flat_priors() -> dict[str, Any]:
    from pymc_extras.prior import Prior

    return {name: Prior("HalfFlat") for name in ("r", "alpha", "a", "b")}


def fit_library_models(summary: pd.DataFrame) -> tuple[Any, Any]:
    """PyMC-Marketing's BetaGeoModel (every customer) and GammaGammaModel (repeat buyers with a
    positive mean value), fitted by MAP with flat priors (maximum likelihood): the reference
    :func:`fit_parameters` is tested against (needs the ``test`` extra)."""
    import pytensor
    from pymc_marketing import clv

    _check_repeat_buyers(summary)
    bg, gg = clv.BetaGeoModel(model_config=_flat_priors()), clv.GammaGammaModel()
    spenders = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
    # The data are constants of the compiled graph, so every as_of compiles anew; pytensor's fast-compile
    # mode halves that and the optimisation itself stays a few seconds (docs/clv.md).
    with pytensor.config.change_flags(mode=COMPILE_MODE):
        bg.fit(data=summary[[CUSTOMER_ID, "frequency", "recency", "T"]], method="map", progressbar=False)
        gg.fit(data=spenders[[CUSTOMER_ID, "frequency", "monetary_value"]], method="map", progressbar=False)
    return bg, gg


def library_parameters(bg: Any, gg: Any) -> dict[str, float]:
    """The fitted BG/NBD (r, alpha, a, b) and Gamma-Gamma (p, q, v) point estimates."""
    return {name: float(np.asarray(model.fit_result[name]).reshape(-1)[0])
            for model, names in ((bg, ("r", "alpha", "a", "b")), (gg, ("p", "q", "v"))) for name in names}


@dataclass(frozen=True)
class ClvModel:
    """The fitted BG/NBD (r, alpha, a, b) and Gamma-Gamma (p, q, v) parameters, in days and the
    shop's currency, with the as_of they were fitted at and the horizon predictions default to."""

    r: float
    alpha: float
    a: float
    b: float
    p: float
    q: float
    v: float
    as_of: datetime
    horizon_days: int
    customers: int
    repeat_buyers: int
    report: Mapping[str, Any] = field(default_factory=dict)

    @property
    def mean_spend(self) -> float:
        """The population's expected spend per order (Gamma-Gamma: p v / (q - 1))."""
        return self.p * self.v / (self.q - 1)

    def expected_orders(self, frequency: np.ndarray, recency: np.ndarray, T: np.ndarray,
                        t: float | np.ndarray) -> np.ndarray:
        """BG/NBD expected orders in the next ``t`` days (Fader, Hardie & Lee 2005, eq. 10)."""
        x, tx, T = np.asarray(frequency, float), np.asarray(recency, float), np.asarray(T, float)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        t = np.asarray(t, float)
        head = (a + b + x - 1) / (a - 1)
        tail = 1 - np.exp((r + x) * np.log((alpha + T) / (alpha + T + t))) * hyp2f1(
            r + x, b + x, a + b + x - 1, t / (alpha + T + t))
        odds = np.where(x > 0, a / (b + np.maximum(x, 1) - 1) * np.exp((r + x) * np.log((alpha + T) / (alpha + tx))), 0)
        return head * tail / (1 + odds)

    def p_alive(self, frequency: np.ndarray, recency: np.ndarray, T: np.ndarray) -> np.ndarray:
        """BG/NBD P(alive) at the as_of (Fader, Hardie & Lee 2008): 1 without a repeat order."""
        return expit(-dropout_log_odds(self.r, self.alpha, self.a, self.b, frequency, recency, T))

    def spend_per_order(self, frequency: np.ndarray, monetary_value: np.ndarray) -> np.ndarray:
        """Gamma-Gamma expected spend per order (Fader & Hardie 2013, eq. 5): the population mean for a
        customer without a repeat order."""
        x, z = np.asarray(frequency, float), np.asarray(monetary_value, float)
        weight = self.p * x / (self.p * x + self.q - 1)
        return (1 - weight) * self.mean_spend + weight * z

    def predict(self, summary: pd.DataFrame, horizon_days: int | None = None,
                as_of: datetime | str | pd.Timestamp | None = None) -> pd.DataFrame:
        """``expected_orders`` (order days) and ``predicted_clv`` (spend, undiscounted) in the
        ``horizon_days`` after ``as_of`` (defaults: the model's horizon and as_of), ``p_alive`` at
        ``as_of`` and ``next_order_date``: the day on which the expected number of orders since
        ``as_of`` reaches one, NaT when fewer than one order is expected within the horizon.
        ``summary``: rows of :func:`clv_summary` taken at ``as_of`` (a later as_of than the fit's
        scores today's customers with the fitted parameters)."""
        h = self.horizon_days if horizon_days is None else int(horizon_days)
        if h < 1:
            raise InputError(f"horizon_days must be at least 1. Got {h} instead.")
        x, tx, T = (summary[c].to_numpy(float) for c in ("frequency", "recency", "T"))
        orders = self.expected_orders(x, tx, T, h)
        return pd.DataFrame({
            CUSTOMER_ID: summary[CUSTOMER_ID].to_numpy(),
            "expected_orders": orders,
            "p_alive": self.p_alive(x, tx, T),
            "predicted_clv": orders * self.spend_per_order(x, summary["monetary_value"].to_numpy(float)),
            "next_order_date": self._next_order_date(x, tx, T, orders >= 1, h,
                                                     to_timestamp(self.as_of if as_of is None else as_of)),
        })

    def predict_row(self, values: Mapping[str, Any], horizon_days: int | None = None,
                    as_of: datetime | str | pd.Timestamp | None = None) -> dict[str, Any]:
        """One customer's :meth:`predict` from their ``frequency``, ``recency``, ``T`` and
        ``monetary_value``; ``next_order_date`` a Timestamp or None. The same arithmetic on arrays of
        one, without a frame (the service predicts one customer right after an event)."""
        h = self.horizon_days if horizon_days is None else int(horizon_days)
        if h < 1:
            raise InputError(f"horizon_days must be at least 1. Got {h} instead.")
        x, tx, T, z = (np.array([float(values[c])]) for c in SUMMARY_COLUMNS[1:5])
        orders = self.expected_orders(x, tx, T, h)
        start, date = to_timestamp(self.as_of if as_of is None else as_of), None
        if orders[0] >= 1:  # else no date, without the bisection
            date = pd.Timestamp(self._next_order_date(x, tx, T, orders >= 1, h, start)[0])
        return {"expected_orders": float(orders[0]), "p_alive": float(self.p_alive(x, tx, T)[0]),
                "predicted_clv": float((orders * self.spend_per_order(x, z))[0]), "next_order_date": date}

    def _next_order_date(self, x: np.ndarray, tx: np.ndarray, T: np.ndarray, reached: np.ndarray,
                         h: int, as_of: datetime) -> np.ndarray:
        """The last whole day, counted from ``as_of``'s day (day 0), with fewer than one expected order by
        its start (the day they reach one), by bisection over whole days: about log2(h) steps, the
        expected orders increasing in t, none at t = 0 and at least one at ``h`` where ``reached``."""
        lo, hi = np.zeros(int(reached.sum())), np.full(int(reached.sum()), float(h))
        xs, txs, Ts = x[reached], tx[reached], T[reached]
        while (hi - lo > 1).any():
            mid = np.floor((lo + hi) / 2)
            below = self.expected_orders(xs, txs, Ts, mid) < 1
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        dates = np.full(len(x), np.datetime64("NaT"), dtype="datetime64[ns]")
        start = np.datetime64(pd.Timestamp(as_of).normalize().to_datetime64(), "ns")
        dates[reached] = start + (lo * 86_400e9).astype("timedelta64[ns]")
        return dates

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe parameters and fit facts, for saving with a registered model."""
        return {**asdict(self), "as_of": self.as_of.isoformat(), "report": dict(self.report)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClvModel:
        """The model :meth:`to_dict` gave; an InputError naming a missing key."""
        missing = sorted({*PARAMETERS, "as_of", "horizon_days", "customers", "repeat_buyers"} - set(data))
        if missing:
            raise InputError(f"The saved CLV model lacks {', '.join(missing)}; expected the keys of ClvModel.to_dict().")
        return cls(**{**{k: float(data[k]) for k in PARAMETERS}, "as_of": datetime.fromisoformat(data["as_of"]),
                      "horizon_days": int(data["horizon_days"]), "customers": int(data["customers"]),
                      "repeat_buyers": int(data["repeat_buyers"]), "report": dict(data.get("report", {}))})


def fit_clv(tables: Tables, as_of: datetime | str | pd.Timestamp,
            horizon_days: int = DEFAULT_HORIZON_DAYS) -> ClvModel:
    """Fit BG/NBD and Gamma-Gamma on the orders strictly before ``as_of`` as the library summarises them
    (:func:`clv_summary`, order days); the model's horizon is ``horizon_days`` or a shorter one when the
    history is short (:func:`choose_horizon`; its reason in ``report["horizon"]``). An InputError with
    too few repeat buyers or a spend model without a mean."""
    when = to_timestamp(as_of)
    summary = clv_summary(tables, when)
    first = tables.con.sql(f"SELECT min({ORDERED_AT}) FROM {Table.ORDERS.value} WHERE {ORDERED_AT} < $as_of",
                           params={"as_of": when}).fetchall()[0][0]
    history = 0.0 if first is None else (when - first).total_seconds() / 86_400
    return _fit(summary, when, history, horizon_days)


def features_summary(features: pd.DataFrame) -> pd.DataFrame:
    """The models' inputs from the feature registry's columns, for every customer with an order:
    ``frequency`` orders after the first, ``recency`` days from the first order to the last, ``T`` days
    since the first, ``monetary_value`` the mean order value (0 without a second order). Orders, not
    order days, and the first order's value is in the mean: what the features hold, so that the
    service computes a customer's values from their online features exactly as the batch does."""
    buyers = features[pd.to_numeric(features["orders_count"], errors="coerce").fillna(0) > 0]
    orders = buyers["orders_count"].to_numpy(float)
    first = buyers["days_since_first_order"].to_numpy(float)
    return pd.DataFrame({
        CUSTOMER_ID: buyers[CUSTOMER_ID].to_numpy(), "frequency": orders - 1,
        "recency": np.clip(first - buyers["recency_days"].to_numpy(float), 0, None), "T": first,
        "monetary_value": np.where(orders > 1, buyers["avg_order_value"].to_numpy(float), 0.0)})


def features_summary_row(values: Mapping[str, Any]) -> dict[str, float] | None:
    """:func:`features_summary` of one customer's feature ``values`` (a dict), None for a customer
    without an order: the same arithmetic, without a frame."""
    orders = _number(values.get("orders_count"))
    if not orders > 0:  # NaN (missing) is no order, as features_summary's fillna(0)
        return None
    first = np.array([_number(values.get("days_since_first_order"))])
    return {"frequency": orders - 1, "recency": float(np.clip(first - _number(values.get("recency_days")), 0, None)[0]),
            "T": float(first[0]), "monetary_value": _number(values.get("avg_order_value")) if orders > 1 else 0.0}


def bgnbd_inputs(orders: np.ndarray, recency_days: np.ndarray,
                 days_since_first_order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frequency, recency, T) of :func:`features_summary` from the three feature columns, for any row:
    equal to it for a customer with an order, and defined for every other row (a missing or zero order
    count is no order: frequency 0; a missing first order: T 0; a missing last order: recency 0;
    recency kept within [0, T])."""
    orders = np.nan_to_num(np.asarray(orders, float), nan=0.0)
    T = np.clip(np.nan_to_num(np.asarray(days_since_first_order, float), nan=0.0), 0, None)
    recency = np.clip(np.nan_to_num(T - np.asarray(recency_days, float), nan=0.0), 0, T)
    return np.maximum(orders - 1, 0), recency, T


def _number(value: object) -> float:
    """A feature value as features_summary reads a column: a float, NaN when missing or not a number."""
    try:
        return np.nan if value is None or value is pd.NA else float(value)
    except (TypeError, ValueError):
        return np.nan


def fit_clv_features(features: pd.DataFrame, as_of: datetime | str | pd.Timestamp,
                     horizon_days: int = DEFAULT_HORIZON_DAYS) -> ClvModel:
    """:func:`fit_clv` on the features of every customer at ``as_of`` (:func:`features_summary`): what
    ``sendwise run`` fits and the scores, the service and the segments predict with."""
    summary = features_summary(features)
    history = float(summary["T"].max()) if len(summary) else 0.0
    return _fit(summary, to_timestamp(as_of), history, horizon_days)


def _fit(summary: pd.DataFrame, when: datetime, history: float, horizon_days: int) -> ClvModel:
    horizon, why = choose_horizon(history, horizon_days)
    started = time.perf_counter()
    params = fit_parameters(summary)
    if not params["q"] > 1:
        raise InputError(f"The Gamma-Gamma spend model has no finite mean spend (q = {params['q']:.3g}, must be above "
                         "1): spend per order is too heavy-tailed before this as_of.")
    bad = [k for k, v in params.items() if not (math.isfinite(v) and v > 0)]
    if bad:
        raise InputError(f"The CLV fit did not converge: {', '.join(bad)} not a positive finite number ({params}).")
    report = {"history_days": round(history, 1), "horizon": why, "fit_seconds": round(time.perf_counter() - started, 2),
              "spend_customers": int(((summary["frequency"] > 0) & (summary["monetary_value"] > 0)).sum())}
    return ClvModel(**{k: float(v) for k, v in params.items()}, as_of=when, horizon_days=horizon,
                    customers=len(summary), repeat_buyers=int((summary["frequency"] > 0).sum()), report=report)


def historic_rate(summary: pd.DataFrame, horizon_days: int, history_days: float | None = None) -> pd.DataFrame:
    """The baseline: a customer's spend and order days before the as_of per day, times the horizon; per
    day since their own first order (at least one day), or per day of ``history_days`` when given
    (the shop's whole history before the as_of: then it ranks customers by their past spend)."""
    days = np.maximum(summary["T"].to_numpy(float), 1.0) if history_days is None else float(history_days)
    return pd.DataFrame({CUSTOMER_ID: summary[CUSTOMER_ID].to_numpy(),
                         "expected_orders": (summary["frequency"].to_numpy(float) + 1) / days * horizon_days,
                         "predicted_clv": summary["spend"].to_numpy(float) / days * horizon_days})


def top_decile_share(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Share of the total ``actual`` held by the ceil(n / 10) rows with the highest ``predicted``
    (ties broken by position, so the figure does not depend on luck in sorting)."""
    n = len(actual)
    top = np.argsort(-np.asarray(predicted, float), kind="stable")[: math.ceil(n / 10)]
    total = float(np.sum(actual))
    return float(np.sum(np.asarray(actual, float)[top]) / total) if total > 0 else float("nan")


def orders_calibration(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Mean expected and actual orders per decile (``bins`` equal-count groups, ties by position) of the
    expected orders: ``decile`` 1 is the lowest."""
    expected, actual = np.asarray(expected, float), np.asarray(actual, float)
    order = np.argsort(expected, kind="stable")
    group = np.empty(len(expected), dtype=int)
    group[order] = np.arange(len(expected)) * bins // max(len(expected), 1)
    frame = pd.DataFrame({"decile": group + 1, "expected_orders": expected, "actual_orders": actual})
    out = frame.groupby("decile").agg(customers=("expected_orders", "size"), expected_orders=("expected_orders", "mean"),
                                      actual_orders=("actual_orders", "mean"))
    return out.reset_index()


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


def evaluate_clv(holdout: pd.DataFrame, predictions: Mapping[str, pd.DataFrame],
                 orders: str = "actual_orders") -> dict[str, dict[str, Any]]:
    """Each named prediction frame (``customer_id``, ``expected_orders``, ``predicted_clv``) against the
    holdout of :func:`training.protocols.clv_holdout`: spend ``mae``, ``spearman``, ``top_decile_share`` of the holdout
    spend, ``total_ratio`` (predicted over actual total spend) and its two factors, ``orders_ratio``
    (expected over actual orders) times ``spend_per_order_ratio`` (predicted over actual spend per order),
    ``orders_mae`` and the ``calibration`` of expected orders (records of :func:`orders_calibration`).
    ``orders``: the holdout's column that expected orders are compared with (order days by default;
    ``actual_orders_placed`` for a model that counts orders)."""
    if orders not in holdout.columns:
        raise InputError(f"The holdout has no column {orders!r} to compare expected orders with; expected one of "
                         f"{', '.join(c for c in holdout.columns if c.startswith('actual_orders'))}.")
    results = {}
    for name, predicted in predictions.items():
        joined = holdout.merge(predicted, on=CUSTOMER_ID, how="left", validate="one_to_one")
        if joined["predicted_clv"].isna().any():
            missing = joined.loc[joined["predicted_clv"].isna(), CUSTOMER_ID].iloc[0]
            raise InputError(f"The {name} predictions lack holdout customers, e.g. {missing!r}: predict every "
                             "customer of clv_holdout.")
        spend, clv = joined["actual_spend"].to_numpy(float), joined["predicted_clv"].to_numpy(float)
        expected, actual_orders = joined["expected_orders"].to_numpy(float), joined[orders].to_numpy(float)
        results[name] = {
            "customers": len(joined),
            "mae": float(np.mean(np.abs(clv - spend))),
            "spearman": float(spearmanr(clv, spend).statistic),
            "top_decile_share": top_decile_share(clv, spend),
            "total_ratio": _ratio(clv.sum(), spend.sum()),
            "orders_ratio": _ratio(expected.sum(), actual_orders.sum()),
            "spend_per_order_ratio": _ratio(_ratio(clv.sum(), expected.sum()), _ratio(spend.sum(), actual_orders.sum())),
            "orders_mae": float(np.mean(np.abs(expected - actual_orders))),
            "calibration": orders_calibration(expected, actual_orders).to_dict("records"),
        }
    return results
