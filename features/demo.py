"""A synthetic shop with planted behaviour, so that models have something real to learn.

Every customer draws latent traits: a session rate (how often they visit), a lifetime after which
they churn (stop visiting; email engagement drops to a sixth), category preferences (a Dirichlet
draw), a buying propensity, and email open and click probabilities. From these:

* visits arrive as a Poisson process over the customer's active life, thinned by seasonality
  (weekly, with a December peak); a visit views 1+ products from preferred categories and popular
  products; a visit may add to cart, start checkout and buy; a cart without a purchase is abandoned;
* fortnightly campaign emails go to consenting customers from signup until they unsubscribe; opens and
  clicks follow the customer's engagement; a click starts a visit that converts more often;
* about 5 % of order lines are returned 3-20 days later (negative quantity, order id ``R<order>``);
* ``customer_changes`` records each customer's country and consent at signup (their history; the
  customers table holds the same values as today's).

Output is deterministic for ``(customers, seed, products, start, end)``; customers are simulated in
chunks so that a million fits in a few GB.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features import schema as s
from features.errors import InputError
from features.io import atomic_write

CATEGORIES = ("apparel", "shoes", "home", "kitchen", "beauty", "toys", "garden", "books", "electronics", "sports")
COUNTRIES = ("United Kingdom", "United States", "Germany", "France", "Netherlands")
COUNTRY_WEIGHTS = (0.4, 0.25, 0.15, 0.1, 0.1)
EVENT_CODES = tuple(e.value for e in s.EventType)
MINUTE = 1 / 1440


@dataclass(frozen=True)
class DemoShop:
    """Size and time span of the generated shop."""

    customers: int = 10_000
    seed: int = 0
    products: int = 1_000
    start: str = "2024-07-01"
    end: str = "2026-01-01"
    chunk_size: int = 50_000

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise InputError(f"customers must be at least 1; got {self.customers}")
        if self.products < len(CATEGORIES):
            raise InputError(f"products must be at least {len(CATEGORIES)}; got {self.products}")
        if pd.Timestamp(self.end) - pd.Timestamp(self.start) < pd.Timedelta(days=60):
            raise InputError(f"end must be at least 60 days after start; got {self.start} .. {self.end}")

    @property
    def days(self) -> float:
        return (pd.Timestamp(self.end) - pd.Timestamp(self.start)) / pd.Timedelta(days=1)


def _ids(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers, pa.int64()), pa.string()), "")


def _timestamps(shop: DemoShop, days: np.ndarray) -> pa.Array:
    base = pd.Timestamp(shop.start).value // 1000
    micros = base + np.round(days * 86_400e6).astype(np.int64)
    return pa.array(micros, pa.timestamp("us"))


def _seasonality(days: np.ndarray, start: pd.Timestamp) -> np.ndarray:
    """Relative visit intensity in (0, 1]: a December peak and busier weekends."""
    t = start + pd.to_timedelta(days, unit="D")
    doy = np.asarray(t.day_of_year, dtype=float)
    weekend = np.asarray(t.day_of_week >= 5)
    yearly = 1 + 0.35 * np.cos(2 * np.pi * (doy - 350) / 365.25)
    return yearly * np.where(weekend, 1.2, 1.0) / (1.35 * 1.2)


def _catalog(shop: DemoShop, rng: np.random.Generator) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The product table, the cumulative popularity used to draw products, and the prices."""
    n = shop.products
    category = np.sort(rng.integers(0, len(CATEGORIES), n))
    category[: len(CATEGORIES)] = np.arange(len(CATEGORIES))  # every category has a product
    category = np.sort(category)
    base_price = np.exp(rng.normal(3.0, 0.4, len(CATEGORIES)))
    price = np.round(base_price[category] * np.exp(rng.normal(0, 0.5, n)), 2) + 0.99
    popularity = rng.pareto(1.2, n) + 0.05
    # cumulative popularity within each category, offset by the category index: category c's
    # products occupy (c, c + 1], so searchsorted(c + u) draws a product of category c.
    cum = np.empty(n)
    for c in range(len(CATEGORIES)):
        idx = np.flatnonzero(category == c)
        cum[idx] = c + np.cumsum(popularity[idx]) / popularity[idx].sum()
    pid = _ids("P", np.arange(n))
    has_image = rng.random(n) < 0.97
    table = pa.table({
        s.PRODUCT_ID: pid,
        s.NAME: pc.binary_join_element_wise(pa.array(np.array(CATEGORIES)[category]), _ids("item ", np.arange(n)), " "),
        s.CATEGORY: pa.array(np.array(CATEGORIES)[category]),
        s.PRICE: pa.array(price),
        s.IMAGE_URL: pa.array(np.where(has_image, np.char.add("https://shop.example/img/", np.arange(n).astype(str)), None)),
        s.URL: pc.binary_join_element_wise("https://shop.example/p/", pid, ""),
        s.IN_STOCK: pa.array(rng.random(n) < 0.95),
    })
    return table, cum, price


def _simulate_chunk(shop: DemoShop, first: int, n: int, rng: np.random.Generator, cum: np.ndarray,
                    price: np.ndarray) -> dict[str, pa.Table]:
    horizon = shop.days
    k = len(CATEGORIES)
    start = pd.Timestamp(shop.start)
    # Latent traits.
    signup = rng.uniform(0, horizon - 14, n)
    lifetime = rng.exponential(1 / rng.gamma(1.5, (1 / 300) / 1.5, n))
    churn_at = signup + lifetime
    visit_rate = rng.gamma(1.2, 0.12 / 1.2, n)
    buy_p = rng.beta(5, 3, n)
    prefs = rng.dirichlet(np.full(k, 0.3), n).cumsum(axis=1)
    open_p = rng.beta(2, 5, n)
    click_p = rng.beta(2, 8, n)
    unsub_p = rng.beta(1, 250, n)
    consent = rng.random(n) < 0.85
    cust = np.arange(first, first + n)

    country = np.array(COUNTRIES)[rng.choice(len(COUNTRIES), n, p=COUNTRY_WEIGHTS)]
    customers = pa.table({
        s.CUSTOMER_ID: _ids("C", cust),
        s.SIGNUP_AT: _timestamps(shop, signup),
        s.COUNTRY: pa.array(country),
        s.EMAIL_CONSENT: pa.array(consent),
    })
    # Their history: country and consent as given at signup (today's values above are the same).
    customer_changes = pa.table({
        s.CUSTOMER_ID: pa.concat_arrays([_ids("C", cust), _ids("C", cust)]),
        s.CHANGED_AT: pa.concat_arrays([_timestamps(shop, signup), _timestamps(shop, signup)]),
        s.ATTRIBUTE: pa.array([s.COUNTRY] * n + [s.EMAIL_CONSENT] * n),
        s.VALUE: pa.array(np.concatenate([country, np.where(consent, "true", "false")])),
    })

    # Emails: fortnightly campaigns, Tuesdays 09:00, from signup until unsubscribe.
    first_campaign = (1 - start.day_of_week) % 7 + 9 / 24
    campaigns = np.arange(first_campaign, horizon, 14.0)
    j0 = np.searchsorted(campaigns, signup)
    eligible = np.where(consent, len(campaigns) - j0, 0)
    until_unsub = rng.geometric(unsub_p)
    n_sends = np.minimum(eligible, until_unsub)
    unsubscribes = until_unsub <= eligible
    send_owner = np.repeat(np.arange(n), n_sends)
    send_rank = np.arange(len(send_owner)) - np.repeat(np.cumsum(n_sends) - n_sends, n_sends)
    sent_at = campaigns[j0[send_owner] + send_rank] + rng.uniform(0, 30 * MINUTE, len(send_owner))
    engaged = np.where(sent_at < churn_at[send_owner], 1.0, 1 / 6)
    opened = rng.random(len(send_owner)) < open_p[send_owner] * engaged
    opened_at = sent_at + rng.exponential(3 / 24, len(send_owner))
    clicked = opened & (rng.random(len(send_owner)) < click_p[send_owner] * engaged)
    clicked_at = opened_at + rng.exponential(5 * MINUTE, len(send_owner))
    last_send = np.flatnonzero(unsubscribes[send_owner] & (send_rank == n_sends[send_owner] - 1))
    unsub_at = opened_at[last_send] + rng.exponential(1 / 24, len(last_send))

    # Visits: organic (Poisson over the active life, thinned by season) and from email clicks.
    active_end = np.minimum(churn_at, horizon)
    span = np.maximum(active_end - signup, 0)
    n_visits = rng.poisson(visit_rate * span)
    v_owner = np.repeat(np.arange(n), n_visits)
    v_at = signup[v_owner] + rng.random(len(v_owner)) * span[v_owner]
    keep = rng.random(len(v_owner)) < _seasonality(v_at, start)
    v_owner, v_at = v_owner[keep], v_at[keep]
    click_idx = np.flatnonzero(clicked)
    v_owner = np.concatenate([v_owner, send_owner[click_idx]])
    v_at = np.concatenate([v_at, clicked_at[click_idx] + MINUTE])
    from_email = np.concatenate([np.zeros(keep.sum(), bool), np.ones(len(click_idx), bool)])
    inside = v_at < horizon
    v_owner, v_at, from_email = v_owner[inside], v_at[inside], from_email[inside]
    still_active = v_at < churn_at[v_owner]

    n_views = 1 + rng.poisson(1.2, len(v_owner))
    view_visit = np.repeat(np.arange(len(v_owner)), n_views)
    view_rank = np.arange(len(view_visit)) - np.repeat(np.cumsum(n_views) - n_views, n_views)
    view_owner = v_owner[view_visit]
    category = (rng.random(len(view_visit))[:, None] > prefs[view_owner]).sum(axis=1)
    category = np.minimum(category, k - 1)
    product = np.minimum(np.searchsorted(cum, category + rng.random(len(view_visit))), len(cum) - 1)
    view_at = v_at[view_visit] + view_rank * rng.exponential(1.5 * MINUTE, len(view_visit))

    cart_p = np.where(from_email, 0.45, 0.3) * np.where(still_active, 1.0, 0.3)
    carted_visit = rng.random(len(v_owner)) < cart_p
    cart_size = np.minimum(n_views, 1 + rng.poisson(0.4, len(v_owner)))
    in_cart = carted_visit[view_visit] & (view_rank < cart_size[view_visit])
    checkout = carted_visit & (rng.random(len(v_owner)) < 0.7)
    bought = checkout & (rng.random(len(v_owner)) < buy_p[v_owner] * np.where(from_email, 1.2, 1.0))
    visit_end = v_at + n_views * 2 * MINUTE
    line_idx = np.flatnonzero(in_cart & bought[view_visit])
    # one line per (visit, product): a product viewed twice is bought once
    _, first_of_pair = np.unique(view_visit[line_idx] * len(cum) + product[line_idx], return_index=True)
    line_idx = line_idx[np.sort(first_of_pair)]
    order_visit = view_visit[line_idx]
    order_no = np.cumsum(np.r_[0, np.diff(order_visit) != 0]) if len(order_visit) else order_visit
    quantity = 1 + rng.poisson(0.3, len(line_idx))
    ordered_at = visit_end[order_visit] + 2 * MINUTE
    ret = rng.random(len(line_idx)) < 0.05
    ret_at = ordered_at[ret] + rng.uniform(3, 20, ret.sum())
    ret_ok = ret_at < horizon

    orders = pa.table({
        s.ORDER_ID: pa.concat_arrays([_ids(f"O{first}-", order_no), _ids(f"RO{first}-", order_no[ret][ret_ok])]),
        s.CUSTOMER_ID: _ids("C", np.concatenate([cust[view_owner[line_idx]], cust[view_owner[line_idx]][ret][ret_ok]])),
        s.PRODUCT_ID: _ids("P", np.concatenate([product[line_idx], product[line_idx][ret][ret_ok]])),
        s.QUANTITY: pa.array(np.concatenate([quantity, -quantity[ret][ret_ok]]).astype(float)),
        s.UNIT_PRICE: pa.array(np.concatenate([price[product[line_idx]], price[product[line_idx]][ret][ret_ok]])),
        s.ORDERED_AT: _timestamps(shop, np.concatenate([ordered_at, ret_at[ret_ok]])),
    })

    cart_idx = np.flatnonzero(in_cart)
    checkout_visits = np.flatnonzero(checkout)
    parts = [  # (event type, owner index, product or -1, time)
        (s.EventType.PRODUCT_VIEW, view_owner, product, view_at),
        (s.EventType.ADD_TO_CART, view_owner[cart_idx], product[cart_idx], view_at[cart_idx] + 0.5 * MINUTE),
        (s.EventType.CHECKOUT_START, v_owner[checkout_visits], np.full(len(checkout_visits), -1),
         visit_end[checkout_visits]),
        (s.EventType.EMAIL_SENT, send_owner, np.full(len(send_owner), -1), sent_at),
        (s.EventType.EMAIL_OPEN, send_owner[opened], np.full(opened.sum(), -1), opened_at[opened]),
        (s.EventType.EMAIL_CLICK, send_owner[clicked], np.full(clicked.sum(), -1), clicked_at[clicked]),
        (s.EventType.UNSUBSCRIBE, send_owner[last_send], np.full(len(last_send), -1), unsub_at),
    ]
    owner = np.concatenate([p[1] for p in parts])
    prod = np.concatenate([p[2] for p in parts])
    at = np.concatenate([p[3] for p in parts])
    code = np.concatenate([np.full(len(p[1]), EVENT_CODES.index(p[0].value), np.int32) for p in parts])
    inside = at < horizon
    owner, prod, at, code = owner[inside], prod[inside], at[inside], code[inside]
    product_ids = _ids("P", np.maximum(prod, 0))
    events = pa.table({
        s.CUSTOMER_ID: _ids("C", cust[owner]),
        s.EVENT_TYPE: pc.cast(pa.DictionaryArray.from_arrays(pa.array(code), pa.array(EVENT_CODES)), pa.string()),
        s.PRODUCT_ID: pc.if_else(pa.array(prod >= 0), product_ids, pa.nulls(len(prod), pa.string())),
        s.OCCURRED_AT: _timestamps(shop, at),
    })
    return {s.Table.CUSTOMERS.value: customers, s.Table.ORDERS.value: orders, s.Table.EVENTS.value: events,
            s.Table.CUSTOMER_CHANGES.value: customer_changes}


def generate_demo(shop: DemoShop, out_dir: Path | str,
                  progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Write ``orders``, ``customers``, ``events``, ``products`` and ``customer_changes`` parquet files
    to ``out_dir``.

    ``progress`` is called with the number of customers done after each chunk. Returns row counts.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = np.random.SeedSequence(shop.seed)
    catalog_seed, chunk_seed = seeds.spawn(2)
    catalog, cum, price = _catalog(shop, np.random.default_rng(catalog_seed))
    counts = {s.Table.PRODUCTS.value: catalog.num_rows}
    atomic_write(out_dir / "products.parquet", lambda tmp: pq.write_table(catalog, tmp))

    names = (s.Table.CUSTOMERS.value, s.Table.ORDERS.value, s.Table.EVENTS.value, s.Table.CUSTOMER_CHANGES.value)
    tmp_paths = {name: out_dir / f".{name}.parquet.partial" for name in names}
    writers: dict[str, pq.ParquetWriter] = {}
    try:
        starts = range(0, shop.customers, shop.chunk_size)
        for start_idx, rng_seed in zip(starts, chunk_seed.spawn(len(starts)), strict=True):
            n = min(shop.chunk_size, shop.customers - start_idx)
            tables = _simulate_chunk(shop, start_idx, n, np.random.default_rng(rng_seed), cum, price)
            for name, table in tables.items():
                if name not in writers:
                    writers[name] = pq.ParquetWriter(tmp_paths[name], table.schema, compression="zstd")
                writers[name].write_table(table)
                counts[name] = counts.get(name, 0) + table.num_rows
            if progress:
                progress(start_idx + n)
    finally:
        for writer in writers.values():
            writer.close()
    for name in names:
        tmp_paths[name].replace(out_dir / f"{name}.parquet")
    return counts
