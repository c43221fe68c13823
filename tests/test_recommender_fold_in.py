"""ALS folds in customers it was not fitted on (fitted on a sample, or new since the fit): their factors
are the least-squares step of the fit, solved against the fitted item factors, so they get the model's
list instead of the popular fallback."""

from __future__ import annotations

import pickle
from dataclasses import replace
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import SERVE_AS_OF

from features.interactions import Interactions, build_interactions, select_rows
from features.schema import CUSTOMER_ID
from features.tables import Tables
from training.recommenders.batch import recommend_all
from training.recommenders.metrics import SOURCE
from training.recommenders.models import FOLD_IN, UNKNOWN, ALSRecommender, make_recommender
from training.recommenders.train import serving_candidates

AS_OF = datetime.fromisoformat(SERVE_AS_OF)
PARAMS = {"factors": 8, "iterations": 5, "regularization": 0.05, "alpha": 2.0}


def subset(interactions: Interactions, keep: np.ndarray) -> Interactions:
    return replace(interactions, matrix=interactions.matrix[keep], customer_ids=interactions.customer_ids[keep])


@pytest.fixture(scope="module")
def interactions(demo_tables: Tables) -> Interactions:
    return build_interactions(demo_tables, AS_OF)


@pytest.fixture(scope="module")
def half(interactions: Interactions) -> tuple[ALSRecommender, np.ndarray]:
    """ALS fitted on the even rows' customers; the odd rows' are left out."""
    even = np.arange(interactions.matrix.shape[0]) % 2 == 0
    return make_recommender("als", **PARAMS).fit(subset(interactions, even)), ~even


def least_squares(model: ALSRecommender, weights: np.ndarray) -> np.ndarray:
    """One customer's ALS step written out (Hu, Koren and Volinsky 2008, implicit's form): confidence
    alpha * weight on the products they touched, preference 1 there, regularised."""
    items, alpha = model.item_factors_.astype(np.float64), PARAMS["alpha"]
    touched = np.flatnonzero(weights)
    confidence = alpha * weights[touched]
    a = items.T @ items + PARAMS["regularization"] * np.eye(items.shape[1])
    a += (items[touched].T * (confidence - 1)) @ items[touched]
    return np.linalg.solve(a, items[touched].T @ confidence)


def test_a_customer_outside_the_fit_is_folded_in_by_the_als_step(
        interactions: Interactions, half: tuple[ALSRecommender, np.ndarray]) -> None:
    model, left_out = half
    ids = interactions.customer_ids[left_out][:20]
    rows = model.rows_for(ids, interactions)
    assert (rows == FOLD_IN).all()
    user_items = select_rows(interactions.matrix, interactions.rows(ids))
    folded = model.fold_in(user_items)
    for i in range(len(ids)):
        want = least_squares(model, user_items[i].toarray().ravel())
        np.testing.assert_allclose(folded[i], want, rtol=2e-3, atol=2e-4)
    top, scores = model.top_k(rows, user_items, 5)
    np.testing.assert_array_equal(top, np.argsort(-(folded @ model.item_factors_.T), axis=1, kind="stable")[:, :5])
    assert np.isfinite(scores).all()


def test_customers_it_was_fitted_on_keep_their_factors_and_unknown_ones_stay_unknown(
        interactions: Interactions, half: tuple[ALSRecommender, np.ndarray]) -> None:
    model, _ = half
    fitted = model.customer_ids_[:10]
    np.testing.assert_array_equal(model.rows_for(fitted, interactions), np.arange(10))
    assert (model.rows_for(pd.Index(["nobody"]), interactions) == UNKNOWN).all()
    assert (model.rows_for(interactions.customer_ids[:5], None) != FOLD_IN).all()  # nothing to fold in from


def test_recommend_all_gives_the_model_list_to_customers_outside_the_fit(
        demo_tables: Tables, interactions: Interactions, half: tuple[ALSRecommender, np.ndarray]) -> None:
    model, left_out = half
    outside = set(interactions.customer_ids[left_out])
    recs = recommend_all(demo_tables, AS_OF, model, 5)
    sources = recs[recs[CUSTOMER_ID].isin(outside)].groupby(CUSTOMER_ID)[SOURCE].agg(set)
    assert len(sources) == len(outside)
    assert all(s == {model.source} for s in sources), sources[sources != {model.source}].head()


def test_bm25_weighted_als_does_not_fold_in(interactions: Interactions) -> None:
    """A BM25 row's weights depend on the whole matrix, which the model does not keep."""
    even = np.arange(interactions.matrix.shape[0]) % 2 == 0
    model = make_recommender("als", **PARAMS, weighting="bm25").fit(subset(interactions, even))
    assert not model.reads_interactions
    assert (model.rows_for(interactions.customer_ids[~even][:5], interactions) == UNKNOWN).all()


def test_interactions_of_only_some_customers_are_their_rows_of_the_whole_matrix(
        demo_tables: Tables, interactions: Interactions) -> None:
    some = interactions.customer_ids[::3]
    demo_tables.con.register("_some", pd.DataFrame({CUSTOMER_ID: list(some) + ["nobody"]}))
    try:
        only = build_interactions(demo_tables, AS_OF, product_ids=interactions.product_ids, only="_some")
    finally:
        demo_tables.con.unregister("_some")
    assert list(only.customer_ids) == list(some)
    want = select_rows(interactions.matrix, interactions.rows(some))
    assert (only.matrix != want).nnz == 0


def test_a_customer_with_an_empty_row_is_not_folded_in(interactions: Interactions,
                                                       half: tuple[ALSRecommender, np.ndarray]) -> None:
    model, left_out = half
    ids = interactions.customer_ids[left_out][:2]
    empty = Interactions(sp.csr_matrix((2, len(interactions.product_ids)), dtype=np.float32), ids,
                         interactions.product_ids, AS_OF)
    assert (model.rows_for(ids, empty) == UNKNOWN).all()


def test_the_solver_is_made_once_and_left_out_of_a_pickle(interactions: Interactions,
                                                           half: tuple[ALSRecommender, np.ndarray]) -> None:
    model, left_out = half
    rows = select_rows(interactions.matrix, interactions.rows(interactions.customer_ids[left_out][:5]))
    first = model.fold_in(rows)
    solver = model._solver
    np.testing.assert_array_equal(model.fold_in(rows), first)
    assert model._solver is solver
    copy = pickle.loads(pickle.dumps(model))  # a Spark broadcast
    assert not hasattr(copy, "_solver")
    np.testing.assert_array_equal(copy.fold_in(rows), first)


def test_a_sample_fitted_auto_compares_only_models_that_serve_the_rest() -> None:
    names = [c.name for c in serving_candidates(90)]
    assert names[0] == "popular" and "als" in names and "ease" in names and "itemknn-cosine" in names
    assert "bpr" not in names and "reranker" not in names
