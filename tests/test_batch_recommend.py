"""The batch path (``recommend_all``: customers in chunks, purchases looked up by code, fold-in of the
customers outside the fit in bulk) gives exactly what the service's path gives one customer at a time."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import SERVE_AS_OF
from implicit.cpu.topk import topk

from features.interactions import Interactions, build_interactions
from features.schema import CUSTOMER_ID
from features.tables import Tables
from training.recommenders import batch, models
from training.recommenders.batch import RecommendationContext, recommend_all
from training.recommenders.metrics import SCORE, SOURCE
from training.recommenders.models import ALSRecommender, make_recommender
from training.recommenders.rules import BusinessRules

AS_OF = datetime.fromisoformat(SERVE_AS_OF)
RULES = [BusinessRules(), BusinessRules(max_per_category=1), BusinessRules(repurchase_after_days=30),
         BusinessRules(exclude_purchased=False)]


@pytest.fixture(scope="module")
def half_als(demo_tables: Tables) -> ALSRecommender:
    """ALS fitted on every other customer: the rest are folded in (or get the fallback)."""
    interactions = build_interactions(demo_tables, AS_OF)
    even = np.arange(interactions.matrix.shape[0]) % 2 == 0
    fitted = interactions.matrix[even]
    part = Interactions(fitted, interactions.customer_ids[even], interactions.product_ids, AS_OF)
    return make_recommender("als", factors=8, iterations=5, regularization=0.05, alpha=2.0).fit(part)


@pytest.mark.parametrize("rules", RULES, ids=["default", "one-per-category", "repurchase-30d", "no-exclusion"])
def test_chunked_batch_equals_one_customer_at_a_time(demo_tables: Tables, half_als: ALSRecommender,
                                                     rules: BusinessRules, monkeypatch: pytest.MonkeyPatch) -> None:
    context = RecommendationContext(demo_tables, AS_OF, half_als)
    ids = context.customers.index
    one_by_one = pd.concat([context.recommend(ids[i:i + 1], 5, rules) for i in range(len(ids))], ignore_index=True)
    monkeypatch.setattr(batch, "CHUNK", 97)  # several chunks, the last one short
    monkeypatch.setattr(batch, "FEW_CUSTOMERS", 10)  # chunks take the lookup path, single customers the slice
    chunked = recommend_all(demo_tables, AS_OF, half_als, 5, rules)
    assert set(chunked[SOURCE]) == {"model", "popular"}
    assert chunked[CUSTOMER_ID].nunique() == len(ids)
    order = [CUSTOMER_ID, "rank"]  # a chunk lists its customers with model lists before those filled
    chunked = chunked.sort_values(order, ignore_index=True)
    # the same products in the same ranks; scores to float32 rounding (BLAS sums a batch of customers
    # in another order than one customer's)
    pd.testing.assert_frame_equal(chunked.drop(columns=SCORE), one_by_one.drop(columns=SCORE), check_dtype=False)
    np.testing.assert_allclose(chunked[SCORE], one_by_one[SCORE], rtol=1e-5)


def test_many_customers_purchases_are_the_slices_of_each(demo_tables: Tables, half_als: ALSRecommender,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    context = RecommendationContext(demo_tables, AS_OF, half_als)
    ids = pd.Index(list(context.customers.index[::3]) + ["nobody"])
    rules = BusinessRules()
    each = pd.concat([context.excluded(ids[i:i + 1], rules) for i in range(len(ids))])
    monkeypatch.setattr(batch, "FEW_CUSTOMERS", 10)
    many = context.excluded(ids, rules)
    assert len(many) > 100
    key = [CUSTOMER_ID, "product_id"]
    pd.testing.assert_frame_equal(many.sort_values(key, ignore_index=True), each.sort_values(key, ignore_index=True),
                                  check_exact=True)


def test_per_customer_exclusions_filter_exactly_what_implicit_filters_with_the_matrix() -> None:
    """The one-by-one path hands implicit the exclusions' rows without scipy slicing: same lists, same
    scores, bit for bit."""
    rng = np.random.default_rng(0)
    items, query = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(250, 8)).astype(np.float32)
    exclude = sp.random(250, 300, density=0.2, format="csr", random_state=1, dtype=np.float32)
    blocked = np.array([3, 5], np.int32)
    want_ids, want_scores = topk(items, query, 12, filter_query_items=exclude, filter_items=blocked)
    ids, scores = models._implicit_top_k(items, query, 12, exclude, blocked)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores)
    assert not any(set(ids[i]) & set(exclude[i].indices) for i in range(250))
