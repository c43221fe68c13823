"""Fast lookups for send time: recommendations under the default rules precomputed for every known
customer at startup, catalog fields and purchase histories as arrays.

A request with the default rules and ``k <= PRECOMPUTED_K`` is a row lookup; any other request
goes through :class:`~training.recommenders.batch.RecommendationContext` (tens of milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.schema import CATEGORY, CUSTOMER_ID, IMAGE_URL, NAME, PRICE, PRODUCT_ID, URL
from training.recommenders.batch import RecommendationContext
from training.recommenders.metrics import RANK, SCORE, SOURCE
from training.recommenders.rules import BusinessRules

PRECOMPUTED_K = 20
SOURCES = ("model", "similar-to", "popular")
UNKNOWN = "\x00unknown customer"  # an id no shop uses: its list is the all-countries fallback
CHUNK = 100_000


@dataclass
class Pick:
    product: int  # column of the recommender's product index
    score: float
    source: str


def _as_arrays(recs: pd.DataFrame, rows: pd.Index, products: pd.Index, k: int) -> tuple[np.ndarray, ...]:
    ids = np.full((len(rows), k), -1, np.int32)
    scores = np.zeros((len(rows), k), np.float32)
    sources = np.zeros((len(rows), k), np.int8)
    r, c = rows.get_indexer(recs[CUSTOMER_ID]), recs[RANK].to_numpy() - 1
    ids[r, c] = products.get_indexer(recs[PRODUCT_ID])
    scores[r, c] = recs[SCORE].to_numpy()
    sources[r, c] = pd.Index(SOURCES).get_indexer(recs[SOURCE])
    return ids, scores, sources


class Lookup:
    """Precomputed default recommendations, catalog columns and purchase histories."""

    def __init__(self, context: RecommendationContext) -> None:
        self.context = context
        model = context.model
        self.product_ids = model.product_ids_.to_numpy(object)
        self.column = {pid: i for i, pid in enumerate(self.product_ids)}
        catalog = context.products
        self.catalog = {c: catalog[c].astype(object).where(catalog[c].notna(), None).to_numpy()
                        for c in (NAME, CATEGORY, PRICE, IMAGE_URL, URL)}
        customers = context.customers.index
        self.row = {cid: i for i, cid in enumerate(customers)}
        parts = [context.recommend(customers[s:s + CHUNK], PRECOMPUTED_K, BusinessRules())
                 for s in range(0, len(customers), CHUNK)]
        recs = pd.concat(parts, ignore_index=True) if parts else context.recommend(customers, PRECOMPUTED_K, BusinessRules())
        self.ids, self.scores, self.sources = _as_arrays(recs, customers, model.product_ids_, PRECOMPUTED_K)
        cold = context.recommend(pd.Index([UNKNOWN]), PRECOMPUTED_K, BusinessRules())
        self.cold = _as_arrays(cold, pd.Index([UNKNOWN]), model.product_ids_, PRECOMPUTED_K)
        bought = context.excluded(customers, BusinessRules())
        self._bought_customers = bought[CUSTOMER_ID].to_numpy()
        self._bought_products = model.product_ids_.get_indexer(bought[PRODUCT_ID]).astype(np.int64)

    def default_picks(self, customer_id: str, k: int) -> list[Pick]:
        row = self.row.get(customer_id)
        ids, scores, sources = ((self.ids[row], self.scores[row], self.sources[row]) if row is not None
                                else (self.cold[0][0], self.cold[1][0], self.cold[2][0]))
        return [Pick(int(p), float(s), SOURCES[src]) for p, s, src in zip(ids[:k], scores[:k], sources[:k], strict=True)
                if p >= 0]

    def frame_picks(self, recs: pd.DataFrame) -> dict[str, list[Pick]]:
        """Picks per customer from a recommendation frame (the dynamic path)."""
        columns = self.context.model.product_ids_.get_indexer(recs[PRODUCT_ID])
        out: dict[str, list[Pick]] = {}
        for cid, col, score, source in zip(recs[CUSTOMER_ID], columns, recs[SCORE], recs[SOURCE], strict=True):
            out.setdefault(cid, []).append(Pick(int(col), float(score), source))
        return out

    def bought(self, customer_id: str) -> np.ndarray:
        """Product columns the customer bought (sorted purchases, sliced)."""
        lo = np.searchsorted(self._bought_customers, customer_id, "left")
        hi = np.searchsorted(self._bought_customers, customer_id, "right")
        products = self._bought_products[lo:hi]
        return products[products >= 0]
