"""Top-k recommendations for every known customer, with business rules and cold-start fallbacks.

A customer the model knows gets the model's products (``source`` = the model's source: ``model`` or
``similar-to``). A customer it does not know (no history, or history newer than the model), and any
list the rules leave short, is filled with the products most bought in the last
``FALLBACK_DAYS`` by customers of the same country (``source`` = ``popular``), or over all
countries when fewer than ``MIN_COUNTRY_BUYERS`` of that country bought in that window.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.interactions import InteractionConfig, build_interactions, pairs_matrix, purchases, select_rows
from features.schema import (
    CATEGORY,
    COUNTRY,
    CUSTOMER_ID,
    OCCURRED_AT,
    ORDERED_AT,
    PRODUCT_ID,
    SIGNUP_AT,
    Table,
)
from features.tables import Tables
from training.recommenders.metrics import RANK, SCORE, SOURCE
from training.recommenders.models import Recommender
from training.recommenders.rules import BusinessRules, blocked_products, catalog, excluded_purchases

FALLBACK_DAYS = 90
MIN_COUNTRY_BUYERS = 30
CHUNK = 100_000
MAX_K = 100
OUTPUT_COLUMNS = [CUSTOMER_ID, RANK, PRODUCT_ID, SCORE, SOURCE]


def check_k(k: object) -> int:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an int in [1, {MAX_K}]; got {k!r}")
    return int(k)


def known_customers(tables: Tables, as_of: datetime) -> pd.DataFrame:
    """``customer_id`` and ``country`` of every customer signed up, ordering or active before ``as_of``."""
    return tables.con.sql(
        f"""WITH ids AS (
              SELECT {CUSTOMER_ID} FROM {Table.CUSTOMERS.value} WHERE {SIGNUP_AT} < $as_of OR {SIGNUP_AT} IS NULL
              UNION SELECT {CUSTOMER_ID} FROM {Table.ORDERS.value} WHERE {ORDERED_AT} < $as_of
              UNION SELECT {CUSTOMER_ID} FROM {Table.EVENTS.value} WHERE {OCCURRED_AT} < $as_of)
            SELECT ids.{CUSTOMER_ID}, any_value(c.{COUNTRY}) AS {COUNTRY}
            FROM ids LEFT JOIN {Table.CUSTOMERS.value} c USING ({CUSTOMER_ID})
            GROUP BY ALL ORDER BY ids.{CUSTOMER_ID}""", params={"as_of": as_of}).df()


def top_k_frame(model: Recommender, customer_ids: pd.Index, model_rows: np.ndarray, user_items: sp.csr_matrix,
                k: int, exclude: sp.csr_matrix | None = None, blocked: np.ndarray | None = None) -> pd.DataFrame:
    """The model's top ``k`` for the customers with ``model_rows >= 0``, as a long frame."""
    known = model_rows >= 0
    if not known.any():
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                             zip(OUTPUT_COLUMNS, ["str", "int64", "str", "float32", "str"], strict=True)})
    ids, scores = model.top_k(model_rows[known], user_items[known], k,
                              None if exclude is None else exclude[known], blocked)
    k_got = ids.shape[1]
    valid = ids.ravel() >= 0
    return pd.DataFrame({
        CUSTOMER_ID: np.repeat(customer_ids[known].to_numpy(), k_got)[valid],
        RANK: np.tile(np.arange(1, k_got + 1), int(known.sum()))[valid],
        PRODUCT_ID: model.product_ids_.to_numpy()[ids.ravel()[valid]],
        SCORE: scores.ravel()[valid],
        SOURCE: model.source,
    })


def _most_bought(recent: pd.DataFrame, length: int) -> pd.DataFrame:
    counts = recent.groupby(PRODUCT_ID)[CUSTOMER_ID].nunique().rename(SCORE).reset_index()
    counts = counts.sort_values([SCORE, PRODUCT_ID], ascending=[False, True], kind="stable")
    return counts.head(length).reset_index(drop=True)


def fallback_lists(tables: Tables, as_of: datetime, blocked_ids: pd.Index, length: int) -> dict[str | None, pd.DataFrame]:
    """Most-bought products (``product_id``, ``score`` = distinct buyers) per country, and over all
    countries under the key None; blocked products left out."""
    recent = purchases(tables, as_of - timedelta(days=FALLBACK_DAYS), as_of)
    if recent.empty:  # a quiet spell: use all history
        recent = purchases(tables, None, as_of)
    recent = recent[~recent[PRODUCT_ID].isin(blocked_ids)]
    countries = tables.frame(Table.CUSTOMERS)[[CUSTOMER_ID, COUNTRY]].drop_duplicates(CUSTOMER_ID)
    recent = recent.merge(countries, on=CUSTOMER_ID, how="left")
    lists: dict[str | None, pd.DataFrame] = {None: _most_bought(recent, length)}
    buyers = recent.groupby(COUNTRY)[CUSTOMER_ID].nunique()
    for country in buyers[buyers >= MIN_COUNTRY_BUYERS].index:
        lists[country] = _most_bought(recent[recent[COUNTRY] == country], length)
    return lists


def _fallback_candidates(customers: pd.DataFrame, lists: dict[str | None, pd.DataFrame]) -> pd.DataFrame:
    """Each customer's country list (or the all-countries list) as candidate rows."""
    key = customers[COUNTRY].where(customers[COUNTRY].isin([c for c in lists if c is not None]), None)
    parts = []
    for country, group in customers.groupby(key.fillna("\0"), sort=False):
        ranked = lists[None if country == "\0" else country]
        parts.append(pd.DataFrame({
            CUSTOMER_ID: np.repeat(group[CUSTOMER_ID].to_numpy(), len(ranked)),
            PRODUCT_ID: np.tile(ranked[PRODUCT_ID].to_numpy(), len(group)),
            SCORE: np.tile(ranked[SCORE].to_numpy(np.float32), len(group)),
            SOURCE: "popular",
        }))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[CUSTOMER_ID, PRODUCT_ID, SCORE, SOURCE])


def _cap_per_category(stream: pd.DataFrame, categories: pd.Series, cap: int | None) -> pd.DataFrame:
    """Keep at most ``cap`` products per (customer, category), in stream order; products without a
    category are not capped."""
    if cap is None or stream.empty:
        return stream
    category = stream[PRODUCT_ID].map(categories)
    nth = stream.assign(_category=category).groupby([CUSTOMER_ID, "_category"], dropna=False, sort=False).cumcount()
    return stream[(nth < cap).to_numpy() | category.isna().to_numpy()]


def _anti_join(frame: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    marked = frame.merge(pairs[[CUSTOMER_ID, PRODUCT_ID]].assign(_drop=True), on=[CUSTOMER_ID, PRODUCT_ID], how="left")
    return marked[marked["_drop"].isna()].drop(columns="_drop")


def recommend_all(tables: Tables, as_of: datetime, model: Recommender, k: int = 10,
                  rules: BusinessRules | None = None, base_config: InteractionConfig | None = None,
                  progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """``customer_id, rank, product_id, score, source`` for every customer known before ``as_of``,
    reading only rows before ``as_of``."""
    k, rules = check_k(k), rules or BusinessRules()
    customers = known_customers(tables, as_of)
    ids = pd.Index(customers[CUSTOMER_ID])
    products = catalog(tables, model.product_ids_)
    blocked = blocked_products(products, rules)
    excluded = excluded_purchases(tables, as_of, rules)
    interactions = build_interactions(tables, as_of, model.interaction_config(base_config),
                                      product_ids=model.product_ids_) if model.scores_from_history else None
    model_rows = model.rows_for(ids, interactions)
    exclude = pairs_matrix(excluded, ids, model.product_ids_)
    lists = fallback_lists(tables, as_of, model.product_ids_[blocked], 2 * k + 20)
    categories = products[CATEGORY]
    fetch = k * 3 if rules.max_per_category else k
    out = []
    for start in range(0, len(ids), CHUNK):
        chunk = slice(start, min(start + CHUNK, len(ids)))
        user_items = (select_rows(interactions.matrix, interactions.rows(ids[chunk])) if interactions is not None
                      else sp.csr_matrix((chunk.stop - chunk.start, len(model.product_ids_)), dtype=np.float32))
        recs = top_k_frame(model, ids[chunk], model_rows[chunk], user_items, fetch, exclude[chunk], blocked)
        recs = _cap_per_category(recs, categories, rules.max_per_category)
        counts = recs.groupby(CUSTOMER_ID).size().reindex(ids[chunk], fill_value=0)
        if rules.max_per_category or (counts < k).any():
            short = counts.index[counts < k]
            keep, fill = recs[~recs[CUSTOMER_ID].isin(short)], recs[recs[CUSTOMER_ID].isin(short)]
            candidates = _fallback_candidates(customers.iloc[chunk][customers[CUSTOMER_ID].iloc[chunk].isin(short)], lists)
            candidates = _anti_join(candidates, excluded[excluded[CUSTOMER_ID].isin(short)])
            stream = pd.concat([fill, candidates], ignore_index=True)
            stream["_order"] = np.arange(len(stream))
            stream = stream.drop_duplicates([CUSTOMER_ID, PRODUCT_ID]).sort_values([CUSTOMER_ID, "_order"], kind="stable")
            stream = _cap_per_category(stream.drop(columns="_order"), categories, rules.max_per_category)
            recs = pd.concat([keep, stream], ignore_index=True)
            recs[RANK] = recs.groupby(CUSTOMER_ID, sort=False).cumcount() + 1
            recs = recs[recs[RANK] <= k]
        out.append(recs[OUTPUT_COLUMNS])
        if progress:
            progress(chunk.stop, len(ids))
    result = pd.concat(out, ignore_index=True)
    result[RANK] = result[RANK].astype("int64")
    result[SCORE] = result[SCORE].astype("float32")
    return result
