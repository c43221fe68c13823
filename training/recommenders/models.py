"""Recommender models behind one factory: implicit ALS and BPR, item-item neighbours, EASE, a
two-stage reranker, popularity and recently-popular baselines.

Every model follows one contract (scikit-learn style: the constructor only stores parameters,
``fit`` returns ``self``, fitted state ends in ``_``):

* ``fit_tables(tables, as_of)`` learns from the rows before ``as_of``; every model but the reranker
  does so through ``fit(interactions)``, which learns from an
  :class:`~features.interactions.Interactions` matrix;
* ``rows_for(customer_ids, interactions)`` gives each customer's row for ``top_k``: :data:`UNKNOWN`
  for a customer the model cannot score, :data:`FOLD_IN` for one a factor model was not fitted on but
  folds in from their current interactions (ALS);
* ``top_k(rows, user_items, k, exclude, blocked)`` returns the ``k`` best product columns and scores
  for the given customer rows, never a product in ``exclude`` (a 0/1 matrix, one row per customer)
  or ``blocked`` (product columns nobody may get); -1 pads a row with fewer candidates.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import stat
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
import xgboost as xgb
from implicit.cpu.topk import topk
from threadpoolctl import threadpool_limits

from features.errors import InputError
from features.interactions import (
    InteractionConfig,
    Interactions,
    apply_weighting,
    build_interactions,
    catalog_ids,
    select_rows,
)
from features.io import atomic_write
from features.schema import CUSTOMER_ID, PRODUCT_ID
from features.tables import Tables
from training.recommenders import reranking

MODEL_FILE = "recommender.json"
ARRAYS_FILE = "recommender.npz"
SCORE_CHUNK = 2048  # customers scored at once by models without factors
FILTERED_SCORE = np.finfo(np.float32).min
EXCLUDE_SLACK = 64  # see _factor_top_k
# implicit's topk threads (0: one per core) hold the GIL outside BLAS and its BLAS calls start threads of their
# own; one topk thread with multi-threaded BLAS gives the same scores bit for bit, and was faster on 2 cores
TOPK_THREADS = 1
UNKNOWN = -1  # rows_for: a customer the model cannot score (they get the fallback)
FOLD_IN = -2  # rows_for: a customer the model was not fitted on, scored from their current interactions


class Recommender:
    """Base class; see the module docstring for the contract."""

    kind: ClassVar[str]
    source: ClassVar[str] = "model"  # what the ``source`` column says for its recommendations
    scores_from_history: ClassVar[bool] = False  # top_k reads the customers' current interactions
    defaults: ClassVar[dict] = {}

    def __init__(self, **params: object) -> None:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise InputError(f"unknown parameter(s) for the {self.kind} recommender: {sorted(unknown)}; "
                             f"expected some of {sorted(self.defaults)}")
        self.params = self.defaults | params
        self.customer_ids_: pd.Index | None = None
        self.product_ids_: pd.Index | None = None

    def interaction_config(self, base: InteractionConfig | None = None) -> InteractionConfig:
        """``base`` with this model's ``half_life_days`` (when it has one)."""
        base = base or InteractionConfig()
        if "half_life_days" not in self.params:
            return base
        return base.model_copy(update={"half_life_days": self.params["half_life_days"]})

    def fit_tables(self, tables: Tables, as_of, base: InteractionConfig | None = None) -> Recommender:
        """Fit on the interactions before ``as_of`` built with :meth:`interaction_config`."""
        return self.fit(build_interactions(tables, as_of, self.interaction_config(base)))

    def fit(self, interactions: Interactions) -> Recommender:
        self.customer_ids_, self.product_ids_ = interactions.customer_ids, interactions.product_ids
        self._fit(interactions.matrix)
        return self

    def _fit(self, matrix: sp.csr_matrix) -> None:
        raise NotImplementedError

    @property
    def reads_interactions(self) -> bool:
        """Whether :meth:`rows_for` and :meth:`top_k` need the customers' current interactions (to
        score from them, or to fold in customers the model was not fitted on)."""
        return self.scores_from_history

    @property
    def serves_customers_outside_fit(self) -> bool:
        """Whether a customer the model was not fitted on gets its list (from their interactions, or
        the same list as everyone) rather than the fallback: what a model fitted on a sample needs."""
        return self.reads_interactions

    def rows_for(self, customer_ids: pd.Index, interactions: Interactions | None) -> np.ndarray:
        """Each customer's row for :meth:`top_k` (:data:`UNKNOWN`: none): by default the row of
        the current ``interactions``, which these models score directly."""
        return interactions.rows(customer_ids)

    def most_similar(self, items: np.ndarray, candidates: np.ndarray) -> np.ndarray | None:
        """For each product column in ``items``, the position in ``candidates`` of the most similar
        product, or None when the model has no notion of product similarity."""
        return None

    def history(self, rows: np.ndarray) -> sp.csr_matrix:
        """The training interactions of model rows ``rows`` (kept only by models that score from
        them; others return empty rows)."""
        return sp.csr_matrix((len(rows), len(self.product_ids_)), dtype=np.float32)

    def _vectors(self, rows: np.ndarray, user_items: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray] | None:
        """(query, item) factor matrices whose dot products are the scores, or None."""
        return None

    def _dense_scores(self, rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        raise NotImplementedError

    def top_k(self, rows: np.ndarray, user_items: sp.csr_matrix, k: int, exclude: sp.csr_matrix | None = None,
              blocked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` product columns (and scores) per row of ``rows``; -1 / -inf pad."""
        if self.product_ids_ is None:
            raise RuntimeError(f"the {self.kind} recommender is not fitted; call fit() first")
        rows = np.asarray(rows)
        k = min(k, len(self.product_ids_))
        vectors = self._vectors(rows, user_items)
        if vectors is not None:
            return _factor_top_k(*vectors, k, exclude, _as_ids(blocked))
        ids = np.full((len(rows), k), -1, np.int64)
        scores = np.full((len(rows), k), -np.inf, np.float32)
        for start in range(0, len(rows), SCORE_CHUNK):
            stop = min(start + SCORE_CHUNK, len(rows))
            block = self._dense_scores(rows[start:stop], user_items[start:stop]).astype(np.float32)
            if exclude is not None:
                block[exclude[start:stop].nonzero()] = -np.inf
            if blocked is not None and len(blocked):
                block[:, _as_ids(blocked)] = -np.inf
            best = np.argpartition(-block, k - 1, axis=1)[:, :k]
            best_scores = np.take_along_axis(block, best, 1)
            order = np.argsort(-best_scores, axis=1, kind="stable")
            ids[start:stop] = np.take_along_axis(best, order, 1)
            scores[start:stop] = np.take_along_axis(best_scores, order, 1)
        ids[~np.isfinite(scores)] = -1
        return ids, scores

    # customers' own rows ------------------------------------------------------------------------
    def customer_data(self, customer_id: str) -> dict[str, list]:
        """What the fitted model holds about one customer (its row of each per-customer array)."""
        row = self.customer_ids_.get_indexer([customer_id])[0] if self.customer_ids_ is not None else -1
        if row < 0:
            return {}
        return {name: _row_values(values, row) for name, values in self._customer_arrays().items()}

    def without_customers(self, customer_ids: Collection[str]) -> int:
        """Drop these customers' rows (ids and per-customer arrays) in place; returns how many went.
        What they contributed to shared parameters (item factors, similarities) stays until the
        next fit."""
        if self.customer_ids_ is None:
            return 0
        keep = ~self.customer_ids_.isin(list(customer_ids))
        dropped = int((~keep).sum())
        if dropped:
            self.customer_ids_ = self.customer_ids_[keep]
            self._keep_customer_rows(np.flatnonzero(keep))
        return dropped

    def _customer_arrays(self) -> dict[str, np.ndarray | sp.csr_matrix]:
        """Fitted arrays with one row per customer (none for models that keep nothing per customer)."""
        return {}

    def _keep_customer_rows(self, rows: np.ndarray) -> None:
        """Keep only ``rows`` of every per-customer array."""

    # persistence ------------------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def save(self, directory: Path | str) -> Path:
        """Write the model into ``directory`` and return the descriptor's path; a save over an
        earlier model replaces it as a whole (see :func:`save_files` for what a crash leaves)."""
        arrays = {"customer_ids": self.customer_ids_.to_numpy(str), "product_ids": self.product_ids_.to_numpy(str),
                  **self._arrays()}
        return save_files(directory, arrays, {"kind": self.kind, "params": self.params})


def save_files(directory: Path | str, arrays: dict[str, np.ndarray], descriptor: dict) -> Path:
    """Write ``arrays`` (``recommender.npz``) and ``descriptor`` (``recommender.json``) into
    ``directory`` as one unit; returns the descriptor's path.

    Into a directory that holds no model yet, each file is written atomically, the descriptor
    last: a crash leaves no descriptor (no model) or a whole model.

    Over a saved model, the files (and anything else the directory holds) go into a fresh sibling
    ``.<name>.new-<random>`` and are flushed to disk; then the old directory is renamed to
    ``.<name>.old-<random>``, the new one to ``<name>``, and the old one is removed. A crash or an
    error at any step leaves a whole model to load:

    * before the first rename: the old model at ``directory``, untouched;
    * between the two renames: nothing at ``directory``, the complete new model in the ``.new-``
      sibling and the old one in ``.old-``: :func:`load_recommender` reads the new one;
    * after the second rename: the new model at ``directory`` (the old one may linger in ``.old-``).

    The next save finishes an interrupted swap and removes what a crash left; an error (as opposed
    to a crash) cleans up at once. One writer at a time. A symlink is followed: its target is
    replaced and the link stays. The directory and the files keep their permissions.
    """
    directory = Path(os.path.realpath(directory))
    if directory.exists() and not directory.is_dir():
        raise InputError(f"cannot save a recommender at {directory}: it is a file, not a directory")
    _settle(directory)
    if not (directory / MODEL_FILE).exists():  # no model to keep whole: write in place
        _write_files(directory, arrays, descriptor)
        return directory / MODEL_FILE
    new = _sibling(directory, "new")
    os.mkdir(new)
    old = None
    try:
        os.chmod(new, stat.S_IMODE(directory.stat().st_mode))
        for entry in directory.iterdir():  # whatever else the directory holds comes along
            if _ours(entry.name):
                continue
            if entry.is_symlink():
                os.symlink(os.readlink(entry), new / entry.name)
            elif entry.is_dir():
                shutil.copytree(entry, new / entry.name, symlinks=True)
            else:
                shutil.copy2(entry, new / entry.name)
        _write_files(new, arrays, descriptor)
        for name in (ARRAYS_FILE, MODEL_FILE):
            if (directory / name).exists():
                shutil.copymode(directory / name, new / name)
        _fsync_dir(new)
        old = _sibling(directory, "old")
        os.rename(directory, old)
        os.rename(new, directory)
    except BaseException:
        if old is not None and old.exists() and not directory.exists():
            os.rename(old, directory)  # put the old model back
        shutil.rmtree(new, ignore_errors=True)
        raise
    _fsync_dir(directory.parent)
    shutil.rmtree(old)
    return directory / MODEL_FILE


def _write_files(directory: Path, arrays: dict[str, np.ndarray], descriptor: dict) -> None:
    """Each file atomically (temporary file, fsync, rename), the descriptor last."""

    def write_arrays(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(directory / ARRAYS_FILE, write_arrays)
    atomic_write(directory / MODEL_FILE, lambda tmp: Path(tmp).write_text(json.dumps(descriptor, indent=1)))
    _fsync_dir(directory)


def _ours(name: str) -> bool:
    """A file a save writes into a model directory (or a crashed in-place write left there)."""
    return name in (MODEL_FILE, ARRAYS_FILE) or name.startswith((f".{MODEL_FILE}.", f".{ARRAYS_FILE}."))


def _sibling(directory: Path, kind: str) -> Path:
    return directory.with_name(f".{directory.name}.{kind}-{secrets.token_hex(4)}")


def _leftovers(directory: Path, kind: str) -> list[Path]:
    """``directory``'s ``.new-`` or ``.old-`` siblings, newest first."""
    found = [p for p in directory.parent.glob(f".{glob.escape(directory.name)}.{kind}-*") if p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def _complete(directory: Path) -> bool:
    try:
        spec = json.loads((directory / MODEL_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(spec, dict) and "kind" in spec and (directory / ARRAYS_FILE).is_file()


def _readable(directory: Path) -> Path:
    """Where the model saved at ``directory`` is: ``directory`` itself, or after a crash between
    the two renames of :func:`save_files`, the complete new copy beside it (else the old one)."""
    if (directory / MODEL_FILE).exists() or not directory.parent.is_dir():
        return directory
    for kind in ("new", "old"):
        for candidate in _leftovers(directory, kind):
            if _complete(candidate):
                return candidate
    return directory


def _settle(directory: Path) -> None:
    """Finish a save that a crash interrupted between its renames, then remove the siblings that
    crashed saves left (partial new copies, old copies)."""
    if not directory.parent.is_dir():
        return
    if not directory.exists():
        source = _readable(directory)
        if source != directory:
            os.rename(source, directory)
    for kind in ("new", "old"):
        for leftover in _leftovers(directory, kind):
            shutil.rmtree(leftover)
    if directory.is_dir():  # temporary files of a crashed in-place write
        for name in (ARRAYS_FILE, MODEL_FILE):
            for partial in directory.glob(f".{name}.*.tmp"):
                partial.unlink()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _RowIndices:
    """A CSR matrix as implicit's ``topk`` reads ``filter_query_items`` (``matrix[row].indices`` for one
    row at a time), without scipy building a one-row matrix per customer."""

    def __init__(self, matrix: sp.csr_matrix) -> None:
        self._indptr, self._indices = matrix.indptr, matrix.indices

    def __getitem__(self, row: int) -> SimpleNamespace:
        return SimpleNamespace(indices=self._indices[self._indptr[row]:self._indptr[row + 1]])


def _implicit_top_k(items: np.ndarray, query: np.ndarray, k: int, exclude: sp.csr_matrix | None,
                    blocked: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    ids, scores = topk(items, np.ascontiguousarray(query, dtype=np.float32), k,
                       filter_query_items=None if exclude is None else _RowIndices(exclude), filter_items=blocked,
                       num_threads=TOPK_THREADS)
    filtered = scores <= FILTERED_SCORE  # implicit pads with filtered items at -FLT_MAX
    ids, scores = ids.astype(np.int64), scores.astype(np.float32)
    ids[filtered], scores[filtered] = -1, -np.inf
    return ids, scores


def _factor_top_k(query: np.ndarray, items: np.ndarray, k: int, exclude: sp.csr_matrix | None,
                  blocked: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """implicit's top-k, with per-customer exclusions applied here in bulk: implicit filters them
    one row at a time in Python, which costs more than the scoring itself on a million customers.

    Most customers (those with at most the 90th percentile of exclusions, capped at
    ``EXCLUDE_SLACK``) get that many extra candidates, and the excluded ones are dropped with one
    sorted lookup; the rest go through implicit's own filter."""
    if exclude is None or exclude.nnz == 0:
        return _implicit_top_k(items, query, k, None, blocked)
    counts = np.diff(exclude.indptr)
    slack = int(min(EXCLUDE_SLACK, np.percentile(counts, 90)))
    ids = np.full((len(query), k), -1, np.int64)
    scores = np.full((len(query), k), -np.inf, np.float32)
    heavy = np.flatnonzero(counts > slack)
    if len(heavy):
        ids[heavy], scores[heavy] = _implicit_top_k(items, query[heavy], k, exclude[heavy], blocked)
    light = np.flatnonzero(counts <= slack)
    if len(light):
        cand, cand_scores = _implicit_top_k(items, query[light], min(k + slack, len(items)), None, blocked)
        sub = exclude[light]
        excluded = np.repeat(np.arange(len(light), dtype=np.int64), np.diff(sub.indptr)) * len(items) + sub.indices
        keys = np.arange(len(light), dtype=np.int64)[:, None] * len(items) + cand  # csr keys are sorted
        at = np.searchsorted(excluded, keys).clip(max=max(len(excluded) - 1, 0))
        drop = (cand < 0) | (excluded[at] == keys if len(excluded) else np.zeros(keys.shape, bool))
        order = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept candidates first, in score order
        picked, picked_scores = np.take_along_axis(cand, order, 1), np.take_along_axis(cand_scores, order, 1)
        dropped = np.take_along_axis(drop, order, 1)
        picked[dropped], picked_scores[dropped] = -1, -np.inf
        ids[light], scores[light] = picked, picked_scores
    return ids, scores


def _as_ids(blocked: np.ndarray | None) -> np.ndarray | None:
    if blocked is None or len(blocked) == 0:
        return None
    return np.asarray(blocked, dtype=np.int32)


def _row_values(values: np.ndarray | sp.csr_matrix, row: int) -> list:
    if sp.issparse(values):
        one = values[row]
        return [[int(c), float(v)] for c, v in zip(one.indices, one.data, strict=True)]  # (product column, value)
    return values[row].tolist()


def _csr_arrays(prefix: str, matrix: sp.csr_matrix) -> dict[str, np.ndarray]:
    return {f"{prefix}_data": matrix.data, f"{prefix}_indices": matrix.indices, f"{prefix}_indptr": matrix.indptr,
            f"{prefix}_shape": np.array(matrix.shape)}


def _csr_from(prefix: str, arrays: dict[str, np.ndarray]) -> sp.csr_matrix:
    return sp.csr_matrix((arrays[f"{prefix}_data"], arrays[f"{prefix}_indices"], arrays[f"{prefix}_indptr"]),
                         shape=tuple(arrays[f"{prefix}_shape"]))


class _Factors(Recommender):
    """A matrix-factorisation model of implicit: scores are user . item factor dot products."""

    def _implicit_model(self):
        raise NotImplementedError

    def _fit(self, matrix: sp.csr_matrix) -> None:
        weighted = apply_weighting(matrix, self.params["weighting"])
        with threadpool_limits(1, "blas"):  # implicit runs its own threads; BLAS threads fight them
            model = self._implicit_model()
            model.fit(weighted, show_progress=False)
        self.user_factors_ = np.asarray(model.user_factors, np.float32)
        self.item_factors_ = np.asarray(model.item_factors, np.float32)

    def most_similar(self, items, candidates):
        """Cosine similarity of the item factors."""
        if getattr(self, "_unit_items", None) is None:
            norms = np.linalg.norm(self.item_factors_, axis=1, keepdims=True)
            self._unit_items = self.item_factors_ / np.maximum(norms, 1e-12)
        f = self._unit_items
        return np.argmax(f[items] @ f[candidates].T, axis=1)

    def rows_for(self, customer_ids, interactions):
        """The customer's row of the fitted user factors."""
        return self.customer_ids_.get_indexer(customer_ids)

    def _vectors(self, rows, user_items):
        return self.user_factors_[rows], self.item_factors_

    def _customer_arrays(self):
        return {"user_factors": self.user_factors_}

    def _keep_customer_rows(self, rows):
        self.user_factors_ = self.user_factors_[rows]

    def _arrays(self):
        return {"user_factors": self.user_factors_, "item_factors": self.item_factors_}

    def _restore(self, arrays):
        self.user_factors_, self.item_factors_ = arrays["user_factors"], arrays["item_factors"]


class ALSRecommender(_Factors):
    """implicit's ALS. A customer it was not fitted on (fitted on a sample of customers, or new since
    the fit) is folded in from their current interactions with the plain weighting: their factors are
    solved against the fitted item factors (implicit's ``recalculate_user``, the least-squares step of
    the fit itself), so they get the model's list rather than the fallback. With ``bm25`` or ``tfidf``
    a row's weights depend on the whole matrix, which the model does not keep: no fold-in."""

    kind = "als"
    defaults: ClassVar[dict] = {"factors": 100, "regularization": 0.01, "alpha": 1.0, "iterations": 15,
                                "weighting": "plain", "half_life_days": None, "random_state": 0}

    @property
    def reads_interactions(self) -> bool:
        return self.params["weighting"] == "plain"

    def rows_for(self, customer_ids, interactions):
        """The customer's row of the fitted user factors, else :data:`FOLD_IN` when they have
        interactions to fold in."""
        rows = super().rows_for(customer_ids, interactions)
        if interactions is not None and self.reads_interactions:
            current = interactions.rows(customer_ids)
            has_pairs = current >= 0
            has_pairs[has_pairs] = np.diff(interactions.matrix.indptr)[current[has_pairs]] > 0
            rows[(rows == UNKNOWN) & has_pairs] = FOLD_IN
        return rows

    def _vectors(self, rows, user_items):
        fold = rows == FOLD_IN
        query = np.empty((len(rows), self.item_factors_.shape[1]), np.float32)
        query[~fold] = self.user_factors_[rows[~fold]]
        if fold.any():
            query[fold] = self.fold_in(user_items[fold])
        return query, self.item_factors_

    def fold_in(self, user_items: sp.csr_matrix) -> np.ndarray:
        """User factors for interaction rows (on this model's products) the model was not fitted on."""
        solver = getattr(self, "_solver", None)
        if solver is None or solver.item_factors is not self.item_factors_:  # made once per item factors
            solver = self._implicit_model()
            solver.item_factors = self.item_factors_
            solver.YtY  # noqa: B018  (computed now, once, not on the first request)
            self._solver = solver
        factors = solver.recalculate_user(np.arange(user_items.shape[0]), sp.csr_matrix(user_items, dtype=np.float32))
        return np.asarray(factors, np.float32)

    def __getstate__(self) -> dict:
        """Pickled (a Spark broadcast) without the cached solver, which each worker makes again."""
        return {k: v for k, v in self.__dict__.items() if k != "_solver"}

    def _implicit_model(self):
        from implicit.cpu.als import AlternatingLeastSquares
        p = self.params
        return AlternatingLeastSquares(factors=int(p["factors"]), regularization=float(p["regularization"]),
                                       alpha=float(p["alpha"]), iterations=int(p["iterations"]),
                                       random_state=p["random_state"])


class BPRRecommender(_Factors):
    kind = "bpr"
    defaults: ClassVar[dict] = {"factors": 100, "learning_rate": 0.01, "regularization": 0.01, "iterations": 100,
                                "weighting": "plain", "half_life_days": None, "random_state": 0}

    def _implicit_model(self):
        from implicit.cpu.bpr import BayesianPersonalizedRanking
        p = self.params
        return BayesianPersonalizedRanking(factors=int(p["factors"]), learning_rate=float(p["learning_rate"]),
                                           regularization=float(p["regularization"]),
                                           iterations=int(p["iterations"]), random_state=p["random_state"])


class ItemKNNRecommender(Recommender):
    """Item-item nearest neighbours: a customer's score for a product sums the similarities of the
    products they interacted with (cosine, BM25 or TF-IDF similarity, ``neighbours`` per product)."""

    kind = "itemknn"
    source = "similar-to"
    scores_from_history = True
    defaults: ClassVar[dict] = {"neighbours": 20, "similarity": "cosine", "weighting": "plain",
                                "half_life_days": None}

    def _fit(self, matrix: sp.csr_matrix) -> None:
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender
        kinds = {"cosine": CosineRecommender, "bm25": BM25Recommender, "tfidf": TFIDFRecommender}
        if self.params["similarity"] not in kinds:
            raise InputError(f"similarity must be one of {sorted(kinds)}; got {self.params['similarity']!r}")
        model = kinds[self.params["similarity"]](K=int(self.params["neighbours"]))
        weighted = apply_weighting(matrix, self.params["weighting"]).astype(np.float64)  # implicit needs doubles
        model.fit(weighted, show_progress=False)
        self.similarity_ = model.similarity.tocsr().astype(np.float32)
        self.user_items_ = matrix

    def history(self, rows):
        return select_rows(self.user_items_, rows)

    def most_similar(self, items, candidates):
        return np.asarray(self.similarity_[items][:, candidates].todense()).argmax(axis=1)

    def _dense_scores(self, rows, user_items):
        return (user_items.astype(np.float32) @ self.similarity_).toarray()

    def _customer_arrays(self):
        return {"history": self.user_items_}

    def _keep_customer_rows(self, rows):
        self.user_items_ = self.user_items_[rows]

    def _arrays(self):
        return {**_csr_arrays("sim", self.similarity_), **_csr_arrays("hist", self.user_items_)}

    def _restore(self, arrays):
        self.similarity_ = _csr_from("sim", arrays)
        self.user_items_ = _csr_from("hist", arrays)


class CatalogTooLargeError(InputError):
    """A model that keeps a dense products x products matrix was given more products than its cap."""


class EASERecommender(Recommender):
    """EASE (Steck 2019): the closed-form item-item linear model with a zero diagonal; a customer's
    score for a product sums the weights from the products they bought (0/1). It covers the
    products with at least one customer and keeps their dense weight matrix (4 bytes per pair);
    fitting inverts a dense matrix of that size, so more than ``max_products`` such products is
    a :class:`CatalogTooLargeError` (10,000 products: 400 MB of weights, about 2 GB while fitting)."""

    kind = "ease"
    source = "similar-to"
    scores_from_history = True
    defaults: ClassVar[dict] = {"regularization": 300.0, "max_products": 10_000, "half_life_days": None}

    def _fit(self, matrix: sp.csr_matrix) -> None:
        binary = (matrix > 0).astype(np.float32).tocsr()
        columns = np.flatnonzero(np.asarray(binary.sum(axis=0)).ravel() > 0)
        if len(columns) > int(self.params["max_products"]):
            gigabytes = 3 * 8 * len(columns) ** 2 / 1e9
            raise CatalogTooLargeError(
                f"EASE keeps a dense products x products matrix: {len(columns):,} products with customers need "
                f"about {gigabytes:,.1f} GB to fit, beyond its cap of max_products={self.params['max_products']:,}")
        self.columns_ = columns
        self.weights_ = reranking.ease_weights(binary[:, columns], float(self.params["regularization"]))
        self.user_items_ = matrix

    def history(self, rows):
        return select_rows(self.user_items_, rows)

    def most_similar(self, items, candidates):
        position = np.full(len(self.product_ids_), -1)
        position[self.columns_] = np.arange(len(self.columns_))
        weights = np.zeros((len(items), len(candidates)), np.float32)
        known = (position[items] >= 0)[:, None] & (position[candidates] >= 0)[None, :]
        weights[known] = self.weights_[np.ix_(np.maximum(position[items], 0), np.maximum(position[candidates], 0))][known]
        return weights.argmax(axis=1)

    def _dense_scores(self, rows, user_items):
        scores = np.full((user_items.shape[0], len(self.product_ids_)), -np.inf, np.float32)
        bought = (user_items[:, self.columns_] > 0).astype(np.float32)
        scores[:, self.columns_] = np.asarray(bought @ self.weights_)
        return scores

    def _customer_arrays(self):
        return {"history": self.user_items_}

    def _keep_customer_rows(self, rows):
        self.user_items_ = self.user_items_[rows]

    def _arrays(self):
        return {"weights": self.weights_, "columns": self.columns_, **_csr_arrays("hist", self.user_items_)}

    def _restore(self, arrays):
        self.weights_, self.columns_ = arrays["weights"], arrays["columns"]
        self.user_items_ = _csr_from("hist", arrays)


class PopularRecommender(Recommender):
    """Baseline: the products with the most distinct customers, the same list for everyone."""

    kind = "popular"
    source = "popular"

    def _fit(self, matrix: sp.csr_matrix) -> None:
        self.item_scores_ = np.asarray((matrix > 0).sum(axis=0), np.float32).ravel()

    @property
    def serves_customers_outside_fit(self) -> bool:
        return True

    def rows_for(self, customer_ids, interactions):
        """Everybody gets the same list: no customer is unknown."""
        return np.zeros(len(customer_ids), np.int64)

    def _vectors(self, rows, user_items):
        return np.ones((len(rows), 1), np.float32), self.item_scores_[:, None].copy()

    def _arrays(self):
        return {"item_scores": self.item_scores_}

    def _restore(self, arrays):
        self.item_scores_ = arrays["item_scores"]


class TrendingRecommender(PopularRecommender):
    """Baseline: recently popular products: summed interaction weights with a short half-life, so
    interest fades with its age."""

    kind = "trending"
    defaults: ClassVar[dict] = {"half_life_days": 14.0}

    def _fit(self, matrix: sp.csr_matrix) -> None:
        self.item_scores_ = np.asarray(matrix.sum(axis=0), np.float32).ravel()


class RerankerRecommender(Recommender):
    """Two stages (``reranking.py``): item-kNN and EASE propose ``candidates`` products per
    customer, an XGBoost ranker trained on the ``windows`` windows before the as_of orders them
    with purchase-time signals. Like ALS's factors, what it knows of a customer is fixed at fit."""

    kind = "reranker"
    defaults: ClassVar[dict] = {"neighbours": 14, "half_life_days": 30.0, "ease_lambda": 300.0,
                                "ease_products": 5000, "candidates": 100, "windows": 3, "window_days": 90,
                                "step_days": 30, "trees": 200, "depth": 4, "learning_rate": 0.05,
                                "random_state": 0}

    def fit(self, interactions: Interactions) -> Recommender:
        raise TypeError("the reranker learns from purchases over time, which one interaction matrix does not "
                        "hold; fit it with fit_tables(tables, as_of)")

    def fit_tables(self, tables: Tables, as_of, base: InteractionConfig | None = None) -> Recommender:
        """Train the ranker on the windows before ``as_of``, then fit stage 1 at ``as_of``."""
        config, p = self.interaction_config(base), self.params
        products = catalog_ids(tables)
        features, labels = reranking.training_set(tables, as_of, products, p, config)
        self.booster_ = reranking.train_ranker(features, labels, p)
        self.stage_ = reranking.Stage1.build(tables, as_of, products, p, config)
        self.customer_ids_, self.product_ids_ = self.stage_.customer_ids, products
        return self

    def rows_for(self, customer_ids, interactions):
        """The customer's row at fit time."""
        return self.customer_ids_.get_indexer(customer_ids)

    def most_similar(self, items, candidates):
        """The stage-1 item-kNN similarity."""
        return np.asarray(self.stage_.similarity[items][:, candidates].todense()).argmax(axis=1)

    def top_k(self, rows, user_items, k, exclude=None, blocked=None):
        """The ranker's best ``k`` of each customer's candidates (``user_items`` is not read)."""
        if self.product_ids_ is None:
            raise RuntimeError(f"the {self.kind} recommender is not fitted; call fit_tables() first")
        rows = np.asarray(rows)
        k = min(k, len(self.product_ids_))
        ids = np.full((len(rows), k), -1, np.int64)
        scores = np.full((len(rows), k), -np.inf, np.float32)
        wanted = max(int(self.params["candidates"]), k)
        for start in range(0, len(rows), reranking.CHUNK):
            part = slice(start, start + reranking.CHUNK)
            excluded = None if exclude is None else exclude[part]
            cand, features = self.stage_.candidates(rows[part], wanted, excluded, _as_ids(blocked))
            ranked = self.booster_.inplace_predict(features).reshape(cand.shape).astype(np.float32)
            ranked[cand < 0] = -np.inf
            order = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
            ids[part], scores[part] = np.take_along_axis(cand, order, 1), np.take_along_axis(ranked, order, 1)
        ids[~np.isfinite(scores)] = -1
        return ids, scores

    def _customer_arrays(self):
        stage = self.stage_
        return {"profile": stage.profile, "last_order": stage.last, "signals": stage.customers,
                "country": stage.country}

    def _keep_customer_rows(self, rows):
        stage = self.stage_
        self.stage_ = replace(stage, customer_ids=self.customer_ids_, profile=stage.profile[rows],
                              last=stage.last[rows], customers=stage.customers[rows], country=stage.country[rows])

    def _arrays(self):
        return {**self.stage_.arrays(), "booster": np.frombuffer(self.booster_.save_raw("ubj"), np.uint8)}

    def _restore(self, arrays):
        self.booster_ = xgb.Booster()
        self.booster_.load_model(bytearray(arrays.pop("booster").tobytes()))
        self.stage_ = reranking.Stage1.from_arrays(self.customer_ids_, arrays)


MODELS: dict[str, type[Recommender]] = {
    cls.kind: cls for cls in (ALSRecommender, BPRRecommender, ItemKNNRecommender, EASERecommender,
                              RerankerRecommender, PopularRecommender, TrendingRecommender)
}
TUNABLE = ("als", "bpr", "itemknn", "reranker")  # what --trials can tune


def make_recommender(kind: str, **params: object) -> Recommender:
    """The recommender called ``kind`` (als, bpr, itemknn, ease, reranker, popular, trending) with ``params``."""
    if kind not in MODELS:
        raise InputError(f"model must be one of {', '.join(MODELS)}; got {kind!r}")
    return MODELS[kind](**params)


def load_recommender(directory: Path | str) -> Recommender:
    """The model saved at ``directory`` (after a crash mid-save: the whole copy beside it, see
    :func:`save_files`)."""
    directory = _readable(Path(os.path.realpath(directory)))
    spec = json.loads((directory / MODEL_FILE).read_text())
    model = make_recommender(spec["kind"], **spec["params"])
    with np.load(directory / ARRAYS_FILE, allow_pickle=False) as arrays:
        loaded = {k: arrays[k] for k in arrays.files}
    model.customer_ids_ = pd.Index(loaded.pop("customer_ids"), name=CUSTOMER_ID)
    model.product_ids_ = pd.Index(loaded.pop("product_ids"), name=PRODUCT_ID)
    model._restore(loaded)
    return model

