"""The two stages of the ``reranker`` recommender (the model class is in ``models.py``).

Stage 1, candidates: item-kNN (implicit's BM25 similarity, ``neighbours`` per product, on the
time-decayed interactions) and EASE (Steck 2019: the closed-form item-item linear model
``B = I - P / diag(P)``, ``P = (X'X + lambda I)^-1`` on 0/1 interactions; a dense matrix, so
over the ``ease_products`` products with the most customers) score every product twice: from the
customer's whole history and from their last order. The ``candidates`` products best ranked by
any of the four, or by recent buyers (at half the rank), go on; products nobody has bought,
excluded and blocked ones never do.

Stage 2, ranking: an XGBoost classifier scores each candidate from :data:`FEATURES`: the four
stage-1 scores (raw, rank, share of the customer's best), the recent-buyers rank, the product's
and the customer's purchase signals (``features/purchase_signals.py``) and their crossings
(price ratio, product launched or last sold since the customer's last purchase, buyers from the
customer's country). Its training set (:func:`training_set`) repeats, over ``windows`` windows of
``window_days`` ending ``step_days`` apart at the as_of, what the recommender is asked to do:
each window's stage 1 sees only rows before the window, labels are the products each customer
bought in the window for the first time.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import scipy.sparse as sp
import xgboost as xgb
from implicit.nearest_neighbours import BM25Recommender

from features.errors import InputError
from features.interactions import InteractionConfig, build_interactions, pairs_matrix, purchases
from features.purchase_signals import (
    CUSTOMER_SIGNALS,
    PRODUCT_SIGNALS,
    country_buyers,
    customer_countries,
    customer_signals,
    last_order_pairs,
    product_signals,
)
from features.schema import COUNTRY, CUSTOMER_ID, PRODUCT_ID
from features.tables import Tables

SCORES = ("knn", "knn_last", "ease", "ease_last")
FEATURES = (
    *(f"{s}{suffix}" for s in SCORES for suffix in ("", "_rank", "_share")), "popular_rank",
    *(f"product_{name}" for name in PRODUCT_SIGNALS), *(f"customer_{name}" for name in CUSTOMER_SIGNALS),
    "price_ratio", "launched_since_visit", "sold_since_visit", "country_buyers", "country_share",
)
POPULAR_SIGNAL = "buyers_30"  # the product signal that ranks recent popularity
CHUNK = 1024  # customers whose candidates are built at once
_CSR_PARTS = ("data", "indices", "indptr")
_PRODUCT = {name: i for i, name in enumerate(PRODUCT_SIGNALS)}
_CUSTOMER = {name: i for i, name in enumerate(CUSTOMER_SIGNALS)}


def ease_weights(binary: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE's item-item weights (zero diagonal) for a 0/1 customers x products matrix."""
    gram = (binary.T @ binary).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    inverse = np.linalg.inv(gram)
    weights = inverse / -np.diag(inverse)
    weights[np.diag_indices_from(weights)] = 0.0
    return weights.astype(np.float32)


@dataclass
class Stage1:
    """What the reranker knows at one as_of: the stage-1 models and every customer's inputs."""

    customer_ids: pd.Index
    similarity: sp.csr_matrix  # products x products, item-kNN
    ease: np.ndarray  # EASE weights among the ease_columns products
    ease_columns: np.ndarray  # product columns EASE covers
    profile: sp.csr_matrix  # customers x products, time-decayed interactions
    last: sp.csr_matrix  # customers x products, 0/1 last order
    customers: np.ndarray  # customers x CUSTOMER_SIGNALS
    products: np.ndarray  # products x PRODUCT_SIGNALS
    country: np.ndarray  # customers, country code (-1: unknown)
    country_buyers: sp.csr_matrix  # countries x products, distinct recent buyers

    @classmethod
    def build(cls, tables: Tables, as_of: datetime, product_ids: pd.Index, params: dict,
              config: InteractionConfig) -> Stage1:
        """Fit both stage-1 models (the reranker's ``params``) on the rows before ``as_of`` and
        gather the signals."""
        interactions = build_interactions(tables, as_of, config, product_ids=product_ids)
        customers = interactions.customer_ids
        knn = BM25Recommender(K=int(params["neighbours"]))
        knn.fit(interactions.matrix.astype(np.float64), show_progress=False)  # implicit needs doubles
        countries, names = pd.factorize(customer_countries(tables, customers))
        recent = country_buyers(tables, as_of)
        rows = pd.Index(names).get_indexer(recent[COUNTRY])
        cols = product_ids.get_indexer(recent[PRODUCT_ID])
        keep = (rows >= 0) & (cols >= 0)
        binary = (interactions.matrix > 0).astype(np.float64).tocsr()
        reach = np.asarray(binary.sum(axis=0)).ravel()
        covered = np.argsort(-reach, kind="stable")[:np.count_nonzero(reach)][:int(params["ease_products"])]
        covered = np.sort(covered)
        return cls(
            customer_ids=customers,
            similarity=knn.similarity.tocsr().astype(np.float32),
            ease=ease_weights(binary[:, covered], float(params["ease_lambda"])),
            ease_columns=covered,
            profile=interactions.matrix,
            last=pairs_matrix(last_order_pairs(tables, as_of), customers, product_ids),
            customers=customer_signals(tables, as_of, customers).to_numpy(),
            products=product_signals(tables, as_of, product_ids).to_numpy(),
            country=countries.astype(np.int64),
            country_buyers=sp.csr_matrix(
                (recent["buyers"].to_numpy(np.float32)[keep], (rows[keep], cols[keep])),
                shape=(len(names), len(product_ids))),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "customer_ids":
                continue
            if sp.issparse(value):
                out |= {f"{field.name}_{part}": getattr(value, part) for part in _CSR_PARTS}
                out[f"{field.name}_shape"] = np.array(value.shape)
            else:
                out[field.name] = value
        return out

    @classmethod
    def from_arrays(cls, customer_ids: pd.Index, arrays: dict[str, np.ndarray]) -> Stage1:
        values = {}
        for field in fields(cls):
            if field.name == "customer_ids":
                continue
            if f"{field.name}_shape" in arrays:
                parts = [arrays[f"{field.name}_{part}"] for part in _CSR_PARTS]
                values[field.name] = sp.csr_matrix(tuple(parts), shape=tuple(arrays[f"{field.name}_shape"]))
            else:
                values[field.name] = arrays[field.name]
        return cls(customer_ids=customer_ids, **values)

    def candidates(self, rows: np.ndarray, n: int, exclude: sp.csr_matrix | None = None,
                   blocked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` candidate product columns per customer row (-1 pads) and their
        :data:`FEATURES` (float32, one row per candidate, in row-major order)."""
        shape = (len(rows), self.products.shape[0])
        invalid = np.broadcast_to(self.products[:, _PRODUCT["buyers_all"]] <= 0, shape).copy()  # never bought
        if exclude is not None:
            invalid[exclude.nonzero()] = True
        if blocked is not None and len(blocked):
            invalid[:, blocked] = True
        last = self.last[rows].astype(np.float32)
        scores = {"knn": (self.profile[rows] @ self.similarity).toarray(),
                  "knn_last": (last @ self.similarity).toarray(),
                  "ease": self._ease_scores((self.profile[rows] > 0).astype(np.float32)),
                  "ease_last": self._ease_scores(last)}
        popular = np.broadcast_to(self.products[:, _PRODUCT[POPULAR_SIGNAL]].astype(np.float32), shape).copy()
        ranks = {}
        for name, score in [*scores.items(), ("popular", popular)]:
            score[invalid] = -np.inf
            ranks[name] = _ranks(score)
        best = 2 * ranks["popular"]
        for name in SCORES:
            np.minimum(best, ranks[name], out=best)
        best[invalid] = np.iinfo(best.dtype).max
        n = min(n, shape[1])
        cand = np.argpartition(best, n - 1, axis=1)[:, :n] if n < shape[1] else np.argsort(best, axis=1)
        cand = np.where(np.take_along_axis(invalid, cand, 1), -1, cand)
        return cand, self._features(rows, cand, scores, ranks)

    def _ease_scores(self, profile: sp.csr_matrix) -> np.ndarray:
        scores = np.zeros(profile.shape, np.float32)
        scores[:, self.ease_columns] = profile[:, self.ease_columns] @ self.ease
        return scores

    def _features(self, rows: np.ndarray, cand: np.ndarray, scores: dict[str, np.ndarray],
                  ranks: dict[str, np.ndarray]) -> np.ndarray:
        at = np.maximum(cand, 0)
        columns: dict[str, np.ndarray] = {}  # by name; stacked in the order of FEATURES
        for name in SCORES:
            score = scores[name]
            best = score.max(axis=1, keepdims=True)
            value = np.take_along_axis(score, at, 1)
            columns[name] = value
            columns[f"{name}_rank"] = np.take_along_axis(ranks[name], at, 1)
            columns[f"{name}_share"] = value / np.maximum(np.where(np.isfinite(best), best, 0.0), 1e-12)
        columns["popular_rank"] = np.take_along_axis(ranks["popular"], at, 1)
        product = self.products[at]  # rows x candidates x signals
        customer = np.broadcast_to(self.customers[rows][:, None, :], (*cand.shape, len(CUSTOMER_SIGNALS)))
        columns |= {f"product_{name}": product[..., _PRODUCT[name]] for name in PRODUCT_SIGNALS}
        columns |= {f"customer_{name}": customer[..., _CUSTOMER[name]] for name in CUSTOMER_SIGNALS}
        product_price, customer_price = columns["product_price"], columns["customer_price"]
        with np.errstate(divide="ignore", invalid="ignore"):
            columns["price_ratio"] = np.where(customer_price > 0, product_price / customer_price, np.nan)
        columns["launched_since_visit"] = columns["product_first_age"] - columns["customer_last_age"]
        columns["sold_since_visit"] = columns["product_last_age"] - columns["customer_last_age"]
        country = self.country[rows]
        known = country >= 0
        buyers = np.zeros(cand.shape, np.float32)
        if known.any():
            buyers[known] = np.take_along_axis(self.country_buyers[country[known]].toarray(), at[known], 1)
        columns["country_buyers"] = buyers
        columns["country_share"] = buyers / np.maximum(columns["product_buyers_90"], 1.0)
        if list(columns) != list(FEATURES):
            raise AssertionError(f"ranker columns {sorted(set(columns) ^ set(FEATURES))} differ from FEATURES")
        return np.stack([np.asarray(columns[name], np.float32).ravel() for name in FEATURES], axis=1)


def _ranks(score: np.ndarray) -> np.ndarray:
    """Each column's rank in its row by descending score, ties by column order (0 = best): the
    inverse of one stable argsort, scattered rather than sorted again."""
    order = np.argsort(-score, axis=1, kind="stable")
    ranks = np.empty(order.shape, order.dtype)
    positions = np.broadcast_to(np.arange(order.shape[1], dtype=order.dtype), order.shape)
    np.put_along_axis(ranks, order, positions, axis=1)
    return ranks


def training_set(tables: Tables, as_of: datetime, product_ids: pd.Index, params: dict,
                 config: InteractionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Features and 0/1 labels of every candidate in the ``windows`` windows before ``as_of``
    (see the module docstring). Raises ValueError when no window has a customer to learn from."""
    features, labels = [], []
    for j in range(int(params["windows"])):
        end = as_of - timedelta(days=int(params["step_days"]) * j)
        start = end - timedelta(days=int(params["window_days"]))
        before = purchases(tables, None, start)[[CUSTOMER_ID, PRODUCT_ID]]
        bought = purchases(tables, start, end)[[CUSTOMER_ID, PRODUCT_ID]]
        seen = bought.merge(before.assign(_seen=True), on=[CUSTOMER_ID, PRODUCT_ID], how="left")["_seen"]
        new = bought[seen.isna().to_numpy()]
        if before.empty or new.empty:
            continue
        stage = Stage1.build(tables, start, product_ids, params, config)
        customers = stage.customer_ids.intersection(pd.Index(new[CUSTOMER_ID].unique())).sort_values()
        rows = stage.customer_ids.get_indexer(customers)
        exclude = pairs_matrix(before, customers, product_ids)
        truth = pairs_matrix(new, customers, product_ids)
        for at in range(0, len(rows), CHUNK):
            part = slice(at, at + CHUNK)
            cand, x = stage.candidates(rows[part], int(params["candidates"]), exclude[part])
            y = np.take_along_axis(truth[part].toarray(), np.maximum(cand, 0), 1).ravel() > 0
            keep = cand.ravel() >= 0
            features.append(x[keep])
            labels.append(y[keep])
    if not features:
        raise InputError(
            f"the reranker learns from customers who bought something new in the {params['window_days']} "
            f"days after some history, and the data before {as_of:%Y-%m-%d} has none; use more history "
            "or another model.")
    return np.concatenate(features), np.concatenate(labels).astype(np.float32)


def train_ranker(features: np.ndarray, labels: np.ndarray, params: dict) -> xgb.Booster:
    """The stage-2 classifier: gradient-boosted trees with the logistic loss."""
    settings = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": int(params["depth"]),
                "eta": float(params["learning_rate"]), "subsample": 0.8, "colsample_bytree": 0.8,
                "min_child_weight": 5, "seed": int(params["random_state"])}
    return xgb.train(settings, xgb.DMatrix(features, label=labels), num_boost_round=int(params["trees"]))
