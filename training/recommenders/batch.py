"""Top-k recommendations for every known customer, with business rules and cold-start fallbacks.

A customer the model knows gets the model's products (``source`` = the model's source: ``model`` or
``similar-to``). A customer it does not know (no history, or history newer than the model), and any
list the rules leave short, is filled with the products most bought in the last
``FALLBACK_DAYS`` by customers of the same country (``source`` = ``popular``), or over all
countries when fewer than ``MIN_COUNTRY_BUYERS`` of that country bought in that window.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.errors import InputError
from features.interactions import (
    InteractionConfig,
    Interactions,
    build_interactions,
    pairs_matrix,
    purchases,
    select_rows,
)
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
from training.recommenders.models import UNKNOWN, Recommender
from training.recommenders.rules import BusinessRules, blocked_products, catalog

FALLBACK_DAYS = 90
MIN_COUNTRY_BUYERS = 30
CHUNK = 100_000
FEW_CUSTOMERS = 1000  # up to this many (a service request), a customer's purchases are sliced, not looked up
MAX_K = 100
OUTPUT_COLUMNS = [CUSTOMER_ID, RANK, PRODUCT_ID, SCORE, SOURCE]
AT = "_at"


def check_k(k: object) -> int:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise InputError(f"k must be an int in [1, {MAX_K}]; got {k!r}")
    return int(k)


def fallback_length(k: int) -> int:
    """How many popular products a fallback list holds for top ``k`` (room for the ones rules take out)."""
    return 2 * k + 20


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
    """The model's top ``k`` for the customers it can score (``model_rows`` not :data:`UNKNOWN`), as a
    long frame."""
    return _model_lists(model, customer_ids, model_rows, user_items, k, exclude, blocked)[OUTPUT_COLUMNS]


def _model_lists(model: Recommender, customer_ids: pd.Index, model_rows: np.ndarray, user_items: sp.csr_matrix,
                 k: int, exclude: sp.csr_matrix | None, blocked: np.ndarray | None) -> pd.DataFrame:
    """:func:`top_k_frame` and, in column ``_at``, the position of each row's customer in ``customer_ids``
    (for counting and picking customers by number rather than by string id)."""
    known = model_rows != UNKNOWN
    if not known.any():
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                             zip([*OUTPUT_COLUMNS, AT], ["str", "int64", "str", "float32", "str", "int64"], strict=True)})
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
        AT: np.repeat(np.flatnonzero(known), k_got)[valid],
    })


def _most_bought(recent: pd.DataFrame, length: int) -> pd.DataFrame:
    counts = recent.groupby(PRODUCT_ID)[CUSTOMER_ID].nunique().rename(SCORE).reset_index()
    counts = counts.sort_values([SCORE, PRODUCT_ID], ascending=[False, True], kind="stable")
    return counts.head(length).reset_index(drop=True)


def _fallback_candidates(customers: pd.DataFrame, lists: dict[str | None, pd.DataFrame]) -> pd.DataFrame:
    """Each customer's country list (or the all-countries list) as candidate rows."""
    country = customers[COUNTRY].astype(object)
    key = country.where(country.isin([c for c in lists if c is not None]), None)
    parts = []
    for name, group in customers.groupby(key, dropna=False, sort=False):
        ranked = lists[None if pd.isna(name) else name]
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


def _fold_in_interactions(tables: Tables, as_of: datetime, model: Recommender, known: pd.DataFrame,
                          base_config: InteractionConfig | None, asked: pd.Index | None) -> Interactions:
    """The interactions of the known customers (of ``asked``, when given) ``model`` was not fitted on
    (a million-customer shop fitted on every customer reads next to nothing here)."""
    ids = pd.Index(known[CUSTOMER_ID])
    wanted = model.customer_ids_.get_indexer(ids) < 0  # a hash lookup: isin on Arrow strings is 10x slower
    if asked is not None:
        wanted &= pd.Index(asked).unique().get_indexer(ids) >= 0
    outside = known.loc[wanted, [CUSTOMER_ID]]
    view = f"_fold_in_{uuid.uuid4().hex}"
    tables.con.register(view, outside)
    try:
        return build_interactions(tables, as_of, model.interaction_config(base_config),
                                  product_ids=model.product_ids_, only=view)
    finally:
        tables.con.unregister(view)


class RecommendationContext:
    """Everything recommending at one as_of needs, prepared once: known customers and countries,
    catalog, purchases, fallback lists and (for models that read them: scoring from history, folding in) interactions.
    ``sendwise recommend`` uses one for all customers; the service keeps one for its lifetime."""

    def __init__(self, tables: Tables, as_of: datetime, model: Recommender,
                 base_config: InteractionConfig | None = None, customer_ids: pd.Index | None = None) -> None:
        """``customer_ids``: the only customers it will be asked about, when known (a privacy export:
        one), so that a model folding customers in reads only theirs."""
        known = known_customers(tables, as_of)
        interactions = None
        if model.scores_from_history:
            interactions = build_interactions(tables, as_of, model.interaction_config(base_config),
                                              product_ids=model.product_ids_)
        elif model.reads_interactions:  # folds in: only the customers the model was not fitted on
            interactions = _fold_in_interactions(tables, as_of, model, known, base_config, customer_ids)
        self._set(model, as_of, known, catalog(tables, model.product_ids_), purchases(tables, None, as_of),
                  interactions)
        since = as_of - timedelta(days=FALLBACK_DAYS)
        recent = self._bought[self._bought[ORDERED_AT] >= since]
        if recent.empty:  # a quiet spell: use all history
            recent = self._bought
        self._recent = recent.merge(self.customers[[COUNTRY]], left_on=CUSTOMER_ID, right_index=True, how="left")

    @classmethod
    def from_parts(cls, model: Recommender, as_of: datetime, customers: pd.DataFrame, products: pd.DataFrame,
                   bought: pd.DataFrame, interactions: Interactions | None, rules: BusinessRules, k: int,
                   lists: dict[str | None, pd.DataFrame]) -> RecommendationContext:
        """A context from inputs read elsewhere (Spark: one partition's customers with their purchases
        and interactions, and the fallback ``lists`` computed once for ``rules`` and ``k``): as
        :meth:`__init__` reads them, ``customers`` (``customer_id``, ``country``), ``products`` from
        :func:`catalog`, ``bought`` from :func:`purchases`. It recommends with ``rules`` and ``k`` only."""
        context = cls.__new__(cls)
        context._set(model, as_of, customers, products, bought, interactions)
        key = (blocked_products(products, rules).tobytes(), fallback_length(k))
        context._recent, context._lists = None, {key: lists}
        return context

    def _set(self, model: Recommender, as_of: datetime, customers: pd.DataFrame, products: pd.DataFrame,
             bought: pd.DataFrame, interactions: Interactions | None) -> None:
        self.model, self.as_of, self.products, self.interactions = model, as_of, products, interactions
        self.customers = customers.set_index(CUSTOMER_ID)
        bought = bought.sort_values(CUSTOMER_ID, kind="stable", ignore_index=True)
        self._bought, self._bought_ids = bought, bought[CUSTOMER_ID].to_numpy()
        # integer codes of the buyers, so that a chunk's purchases are a numeric lookup, not a string isin
        codes, buyers = pd.factorize(bought[CUSTOMER_ID])
        self._buyer_codes, self._buyers = codes, pd.Index(buyers)
        self._lists: dict[tuple, dict[str | None, pd.DataFrame]] = {}

    def excluded(self, customer_ids: pd.Index, rules: BusinessRules) -> pd.DataFrame:
        """(customer_id, product_id) pairs the purchase rules exclude for these customers."""
        if not rules.exclude_purchased:
            return self._bought.iloc[:0]
        if len(customer_ids) > FEW_CUSTOMERS:
            wanted = self._buyers.get_indexer(customer_ids)
            pairs = self._bought[np.isin(self._buyer_codes, wanted[wanted >= 0])]
        else:  # a few customers (a service request): slice the sorted purchases
            lo = np.searchsorted(self._bought_ids, customer_ids.to_numpy(), "left")
            hi = np.searchsorted(self._bought_ids, customer_ids.to_numpy(), "right")
            pairs = self._bought.iloc[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)] or [[]]).astype(int)]
        if rules.repurchase_after_days is not None:
            pairs = pairs[pairs[ORDERED_AT] >= self.as_of - timedelta(days=rules.repurchase_after_days)]
        return pairs

    def fallback_lists(self, blocked: np.ndarray, length: int) -> dict[str | None, pd.DataFrame]:
        """Most-bought products (``product_id``, ``score`` = distinct buyers) per country, and over
        all countries under the key None; blocked products left out."""
        key = (blocked.tobytes(), length)
        if key not in self._lists:
            if self._recent is None:
                raise ValueError("this context was made from parts for other rules or another k; "
                                 "make one for these")
            recent = self._recent[~self._recent[PRODUCT_ID].isin(self.model.product_ids_[blocked])]
            lists: dict[str | None, pd.DataFrame] = {None: _most_bought(recent, length)}
            buyers = recent.groupby(COUNTRY)[CUSTOMER_ID].nunique()
            for country in buyers[buyers >= MIN_COUNTRY_BUYERS].index:
                lists[country] = _most_bought(recent[recent[COUNTRY] == country], length)
            self._lists = {key: lists}  # one rule set at a time is cached
        return self._lists[key]

    def recommend(self, customer_ids: pd.Index, k: int, rules: BusinessRules) -> pd.DataFrame:
        """Top ``k`` for ``customer_ids`` (customers it does not know get the fallback)."""
        model, ids = self.model, pd.Index(customer_ids)
        blocked = blocked_products(self.products, rules)
        excluded = self.excluded(ids, rules)
        exclude = pairs_matrix(excluded, ids, model.product_ids_)
        lists = self.fallback_lists(blocked, fallback_length(k))
        categories = self.products[CATEGORY]
        if self.interactions is not None:
            user_items = select_rows(self.interactions.matrix, self.interactions.rows(ids))
        else:
            user_items = sp.csr_matrix((len(ids), len(model.product_ids_)), dtype=np.float32)
        fetch = k * 3 if rules.max_per_category else k
        recs = _model_lists(model, ids, model.rows_for(ids, self.interactions), user_items, fetch, exclude, blocked)
        recs = _cap_per_category(recs, categories, rules.max_per_category)
        at = recs.pop(AT).to_numpy()
        is_short = np.bincount(at, minlength=len(ids)) < k  # ids are unique (pairs_matrix needs them so)
        if rules.max_per_category or is_short.any():
            short, in_short = ids[is_short], is_short[at]
            keep, fill = recs[~in_short], recs[in_short]
            countries = self.customers[COUNTRY].reindex(short)
            candidates = _fallback_candidates(pd.DataFrame({CUSTOMER_ID: short, COUNTRY: countries.to_numpy()}), lists)
            candidates = _anti_join(candidates, excluded[excluded[CUSTOMER_ID].isin(short)])
            stream = pd.concat([fill, candidates], ignore_index=True)
            stream["_order"] = np.arange(len(stream))
            stream = stream.drop_duplicates([CUSTOMER_ID, PRODUCT_ID]).sort_values([CUSTOMER_ID, "_order"], kind="stable")
            stream = _cap_per_category(stream.drop(columns="_order"), categories, rules.max_per_category)
            recs = pd.concat([keep, stream], ignore_index=True)
            recs[RANK] = recs.groupby(CUSTOMER_ID, sort=False).cumcount() + 1
            recs = recs[recs[RANK] <= k]
        recs = recs[OUTPUT_COLUMNS].reset_index(drop=True)
        recs[RANK] = recs[RANK].astype("int64")
        recs[SCORE] = recs[SCORE].astype("float32")
        return recs


def recommend_all(tables: Tables, as_of: datetime, model: Recommender, k: int = 10,
                  rules: BusinessRules | None = None, base_config: InteractionConfig | None = None,
                  progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """``customer_id, rank, product_id, score, source`` for every customer known before ``as_of``,
    reading only rows before ``as_of``."""
    k, rules = check_k(k), rules or BusinessRules()
    context = RecommendationContext(tables, as_of, model, base_config)
    ids = context.customers.index
    out = []
    for start in range(0, len(ids), CHUNK):
        out.append(context.recommend(ids[start:start + CHUNK], k, rules))
        if progress:
            progress(min(start + CHUNK, len(ids)), len(ids))
    return pd.concat(out, ignore_index=True)
