"""Top-k ranking metrics as plain functions on frames.

``recs``: one row per recommendation with ``customer_id``, ``rank`` (1 = best) and ``product_id``.
``truth``: the relevant ``(customer_id, product_id)`` pairs. Relevance is binary. Every customer in
``truth`` counts, with zero when they got no recommendation; customers only in ``recs`` are ignored.

* precision@k = hits in the top k / k
* recall@k = hits in the top k / relevant products
* NDCG@k = sum over hits of 1 / log2(rank + 1), divided by the same sum for a perfect top k
* MAP@k = mean over hits of (hits so far / rank), divided by min(k, relevant)
* hit rate@k = share of customers with at least one hit
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.errors import InputError
from features.schema import CUSTOMER_ID, PRODUCT_ID

RANK = "rank"
SCORE = "score"
SOURCE = "source"
METRICS = ("precision", "recall", "ndcg", "map", "hit_rate")


def per_customer(recs: pd.DataFrame, truth: pd.DataFrame, k: int) -> pd.DataFrame:
    """One row per customer in ``truth`` with every metric at ``k``."""
    if not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"k must be a positive int; got {k!r}")
    truth = truth[[CUSTOMER_ID, PRODUCT_ID]].drop_duplicates()
    top = recs.loc[recs[RANK] <= k, [CUSTOMER_ID, PRODUCT_ID, RANK]]
    hits = top.merge(truth, on=[CUSTOMER_ID, PRODUCT_ID]).sort_values([CUSTOMER_ID, RANK])
    hits["gain"] = 1.0 / np.log2(hits[RANK] + 1.0)
    hits["precision_at_hit"] = (hits.groupby(CUSTOMER_ID).cumcount() + 1) / hits[RANK]
    by_customer = hits.groupby(CUSTOMER_ID)
    out = pd.DataFrame({"relevant": truth.groupby(CUSTOMER_ID).size()})
    out["hits"] = by_customer.size().reindex(out.index, fill_value=0)
    ideal_hits = np.minimum(out["relevant"].to_numpy(), k)
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    out["precision"] = out["hits"] / k
    out["recall"] = out["hits"] / out["relevant"]
    out["ndcg"] = by_customer["gain"].sum().reindex(out.index, fill_value=0.0) / ideal[ideal_hits]
    out["map"] = by_customer["precision_at_hit"].sum().reindex(out.index, fill_value=0.0) / ideal_hits
    out["hit_rate"] = (out["hits"] > 0).astype(float)
    return out


def ranking_metrics(recs: pd.DataFrame, truth: pd.DataFrame, k: int) -> dict[str, float]:
    """Mean of every metric over the customers in ``truth``."""
    table = per_customer(recs, truth, k)
    return {name: float(table[name].mean()) if len(table) else float("nan") for name in METRICS}


def precision_at_k(recs: pd.DataFrame, truth: pd.DataFrame, k: int) -> float:
    return ranking_metrics(recs, truth, k)["precision"]


def recall_at_k(recs: pd.DataFrame, truth: pd.DataFrame, k: int) -> float:
    return ranking_metrics(recs, truth, k)["recall"]


def ndcg_at_k(recs: pd.DataFrame, truth: pd.DataFrame, k: int) -> float:
    return ranking_metrics(recs, truth, k)["ndcg"]


def map_at_k(recs: pd.DataFrame, truth: pd.DataFrame, k: int) -> float:
    return ranking_metrics(recs, truth, k)["map"]


def hit_rate_at_k(recs: pd.DataFrame, truth: pd.DataFrame, k: int) -> float:
    return ranking_metrics(recs, truth, k)["hit_rate"]


def catalog_coverage(recs: pd.DataFrame, catalog_size: int, k: int) -> float:
    """Share of the catalog that appears in at least one top-k list."""
    if catalog_size <= 0:
        raise InputError(f"catalog_size must be positive; got {catalog_size}")
    return recs.loc[recs[RANK] <= k, PRODUCT_ID].nunique() / catalog_size
