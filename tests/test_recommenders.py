"""Recommenders: the model contract (every model), metrics, interactions, rules and evaluation."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from features.interactions import InteractionConfig, Interactions, build_interactions
from features.tables import Tables
from training.recommenders import models
from training.recommenders.batch import check_k, recommend_all
from training.recommenders.evaluation import ALL_ITEMS, NEW_ITEMS, evaluate, holdout
from training.recommenders.metrics import catalog_coverage, per_customer, ranking_metrics
from training.recommenders.models import MODELS, load_recommender, make_recommender
from training.recommenders.rules import BusinessRules

# Parameters that make the small checkerboard easy for every personalised model (as in implicit's tests).
# ALS keeps its default regularization: with none, 4 factors for rank-2 data leave directions the fit
# does not pin down, which scramble item-factor similarity and, for some seeds, the lists themselves.
CHECKERBOARD_PARAMS = {
    "als": {"factors": 4, "regularization": 0.01, "iterations": 15},
    "bpr": {"factors": 4, "learning_rate": 0.05, "regularization": 0.0, "iterations": 200},
    "itemknn": {"neighbours": 20},
    "ease": {"regularization": 10.0},
    "reranker": {"trees": 30, "window_days": 60},
    "popular": {},
    "trending": {},
}


# Every model of the factory, and item-kNN with each of its similarities: name -> (kind, parameters).
VARIANTS = {kind: (kind, params) for kind, params in CHECKERBOARD_PARAMS.items()} | {
    "itemknn-bm25": ("itemknn", {"neighbours": 20, "similarity": "bm25"}),
    "itemknn-tfidf": ("itemknn", {"neighbours": 20, "similarity": "tfidf"}),
}
PERSONALISED = sorted(v for v, (kind, _) in VARIANTS.items() if kind not in ("popular", "trending"))
CHECKERBOARD_AS_OF = datetime(2024, 1, 1)


def checkerboard_tables(n: int = 20) -> Tables:
    """Customer i buys product j once when i + j is even; each customer buys their products in
    their own random order, one every 400 / (n / 2) days over the 400 days before the as_of, so
    every window has customers buying products new to them."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        own = rng.permutation([j for j in range(n) if (i + j) % 2 == 0])
        for step, j in enumerate(own):
            day = CHECKERBOARD_AS_OF - timedelta(days=400 - step * 400 / len(own) - i / n)
            lines.append((f"o{i:02d}-{j:02d}", f"c{i:02d}", f"p{j:02d}", day))
    orders = pd.DataFrame(lines, columns=["order_id", "customer_id", "product_id", "ordered_at"])
    return Tables.from_frames(orders.assign(quantity=1.0, unit_price=1.0))


def checkerboard(n: int = 20) -> tuple[Tables, Interactions]:
    """The checkerboard's tables and interactions at the as_of: row i, column j is customer i, product j."""
    tables = checkerboard_tables(n)
    return tables, build_interactions(tables, CHECKERBOARD_AS_OF)


class TestEveryModelHonoursTheContract:
    """The shared contract, run against every model of the factory."""

    @pytest.fixture(params=sorted(VARIANTS))
    def fitted(self, request: pytest.FixtureRequest):
        tables, data = checkerboard()
        kind, params = VARIANTS[request.param]
        return make_recommender(kind, **params).fit_tables(tables, CHECKERBOARD_AS_OF), data

    def test_every_kind_of_the_factory_is_covered(self) -> None:
        assert {kind for kind, _ in VARIANTS.values()} == set(MODELS)

    def test_most_similar_is_a_product_bought_by_the_same_customers(self, fitted) -> None:
        """On the checkerboard, products of one parity are bought by exactly the same customers:
        the most similar of [p00, p01, p02, p03] to any product is one of its own parity. Product
        blocks use this for "Because you bought X"; popular and trending know no similarity."""
        model, data = fitted
        items, candidates = np.arange(data.shape[1]), np.array([0, 1, 2, 3])
        best = model.most_similar(items, candidates)
        if model.kind in ("popular", "trending"):
            assert best is None
            return
        assert best.shape == items.shape and set(best) <= {0, 1, 2, 3}
        assert (candidates[best] % 2 == items % 2).all(), f"{model.kind}: {candidates[best]}"

    def test_lists_are_distinct_sorted_and_respect_exclusions(self, fitted) -> None:
        model, data = fitted
        rows = np.arange(data.shape[0])
        blocked = np.array([0, 1])
        ids, scores = model.top_k(rows, data.matrix, 5, exclude=data.matrix, blocked=blocked)
        assert ids.shape == (len(rows), 5)
        for i in rows:
            got = ids[i][ids[i] >= 0]
            assert len(set(got)) == len(got)
            assert not set(got) & set(data.matrix[i].indices), "recommended a product the customer bought"
            assert not set(got) & {0, 1}, "recommended a blocked product"
            assert np.all(np.diff(scores[i][ids[i] >= 0]) <= 1e-6)

    def test_bulk_and_per_customer_exclusion_agree(self, fitted, monkeypatch: pytest.MonkeyPatch) -> None:
        model, data = fitted
        rows = np.arange(data.shape[0])
        _, bulk_scores = model.top_k(rows, data.matrix, 5, exclude=data.matrix)
        monkeypatch.setattr(models, "EXCLUDE_SLACK", 2)  # every customer (10 exclusions) goes one by one
        ids, scores = model.top_k(rows, data.matrix, 5, exclude=data.matrix)
        np.testing.assert_allclose(scores, bulk_scores, rtol=1e-5)  # ties may swap ids, never scores
        for i in rows:
            assert not set(ids[i]) & set(data.matrix[i].indices)

    def test_runs_out_of_candidates_with_padding(self, fitted) -> None:
        model, data = fitted
        everything_but_one = np.arange(1, data.shape[1])
        ids, _ = model.top_k(np.arange(3), data.matrix, 4, blocked=everything_but_one)
        assert (ids[:, 0] == 0).all() and (ids[:, 1:] == -1).all()

    def test_save_and_load_give_the_same_lists_scores_and_similarities(self, fitted, tmp_path) -> None:
        model, data = fitted
        model.save(tmp_path)
        again = load_recommender(tmp_path)
        rows = np.arange(data.shape[0])
        assert type(again) is type(model) and again.params == model.params
        for before, after in zip(model.top_k(rows, data.matrix, 5), again.top_k(rows, data.matrix, 5), strict=True):
            np.testing.assert_array_equal(after, before)  # ids, then scores: bit for bit
        items, candidates = np.arange(data.shape[1]), np.arange(4)
        np.testing.assert_array_equal(np.asarray(again.most_similar(items, candidates)),
                                      np.asarray(model.most_similar(items, candidates)))


@pytest.mark.parametrize("variant", PERSONALISED)
def test_personalised_models_get_the_checkerboard_right(variant: str) -> None:
    tables, data = checkerboard()
    kind, params = VARIANTS[variant]
    model = make_recommender(kind, **params).fit_tables(tables, CHECKERBOARD_AS_OF)
    ids, _ = model.top_k(np.arange(data.shape[0]), data.matrix, 5)
    for i, row in enumerate(ids):
        assert (row % 2 == i % 2).all(), f"customer {i} got {row}"


def test_unfitted_and_misconfigured_models_fail_clearly() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        make_recommender("als").top_k(np.arange(2), sp.csr_matrix((2, 2)), 1)
    with pytest.raises(ValueError, match=r"unknown parameter.*'factor'"):
        make_recommender("als", factor=3)
    with pytest.raises(ValueError, match="model must be one of"):
        make_recommender("svd")
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 100\]; got 500"):
        check_k(500)


def test_popular_and_trending_rank_as_their_definitions_say() -> None:
    t = pd.Timestamp
    orders = pd.DataFrame({
        "order_id": ["o1", "o2", "o3", "o4", "o5"],
        "customer_id": ["a", "b", "c", "d", "d"],
        "product_id": ["old", "old", "old", "new", "new"],
        "quantity": 1.0, "unit_price": 1.0,
        "ordered_at": [t("2024-01-01"), t("2024-01-02"), t("2024-01-03"), t("2024-04-29"), t("2024-04-30")],
    })
    tables = Tables.from_frames(orders)
    as_of = datetime(2024, 5, 1)
    popular = make_recommender("popular").fit_tables(tables, as_of)
    trending = make_recommender("trending").fit_tables(tables, as_of)
    rows = np.array([0])
    user_items = sp.csr_matrix((1, 2))
    assert list(popular.product_ids_[popular.top_k(rows, user_items, 2)[0][0]]) == ["old", "new"]
    assert list(trending.product_ids_[trending.top_k(rows, user_items, 2)[0][0]]) == ["new", "old"]


# metrics -----------------------------------------------------------------------------------------
def test_metrics_match_hand_computed_values() -> None:
    recs = pd.DataFrame({"customer_id": ["u1"] * 3 + ["u2"] * 3, "rank": [1, 2, 3] * 2,
                         "product_id": ["A", "B", "C", "D", "E", "F"]})
    truth = pd.DataFrame({"customer_id": ["u1", "u1", "u2", "u3"], "product_id": ["A", "C", "G", "A"]})
    # u1: hits at ranks 1 and 3 of 2 relevant; u2 and u3 (no list) hit nothing.
    ndcg_u1 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    got = ranking_metrics(recs, truth, 3)
    assert got["precision"] == pytest.approx((2 / 3) / 3)
    assert got["recall"] == pytest.approx(1 / 3)
    assert got["ndcg"] == pytest.approx(ndcg_u1 / 3)
    assert got["map"] == pytest.approx(((1 + 2 / 3) / 2) / 3)
    assert got["hit_rate"] == pytest.approx(1 / 3)
    assert catalog_coverage(recs, 12, 3) == pytest.approx(0.5)
    assert per_customer(recs, truth, 1).loc["u1", "ndcg"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="k must be a positive int"):
        ranking_metrics(recs, truth, 0)


# interactions ------------------------------------------------------------------------------------
def test_interactions_add_weights_subtract_returns_and_ignore_the_future(tiny_tables: Tables) -> None:
    got = build_interactions(tiny_tables, datetime(2024, 2, 1))
    dense = pd.DataFrame(got.matrix.toarray(), index=got.customer_ids, columns=got.product_ids)
    # a: p1 in o1 and o2 (10 + 10) minus the return (10); p2 in o1. b: p2 bought (10) + cart (5).
    # c: views p1 (3) and adds it to the cart (5).
    expected = pd.DataFrame({"p1": [10.0, 0.0, 8.0], "p2": [10.0, 15.0, 0.0]}, index=["a", "b", "c"])
    pd.testing.assert_frame_equal(dense, expected, check_names=False, check_dtype=False)
    early = build_interactions(tiny_tables, datetime(2024, 1, 12))
    assert list(early.customer_ids) == ["a"] and early.matrix.toarray().tolist() == [[20.0, 10.0]]
    kept = build_interactions(tiny_tables, datetime(2024, 2, 1), InteractionConfig(subtract_returns=False))
    assert kept.matrix[kept.rows(["a"])[0], 0] == 20.0


def test_interaction_time_decay_halves_weight_each_half_life(tiny_tables: Tables) -> None:
    got = build_interactions(tiny_tables, datetime(2024, 2, 1), InteractionConfig(half_life_days=10))
    view_age, cart_age = 13 / 24, 12 / 24  # days before the as_of
    expected = 3 * 0.5 ** (view_age / 10) + 5 * 0.5 ** (cart_age / 10)
    assert got.matrix[got.rows(["c"])[0], 0] == pytest.approx(expected, rel=1e-5)


# business rules and batch recommendations ------------------------------------------------------------
@pytest.fixture
def shop() -> Tables:
    t = pd.Timestamp
    lines = [  # (order, customer, product, day)
        ("o1", "u1", "P1", "2024-01-05"), ("o1", "u1", "P2", "2024-01-05"), ("o2", "u2", "P1", "2024-01-20"),
        ("o2", "u2", "P5", "2024-01-20"), ("o3", "u3", "P1", "2024-02-01"), ("o3", "u3", "P2", "2024-02-01"),
        ("o4", "u4", "P4", "2024-02-10"), ("o4", "u4", "P5", "2024-02-10"), ("o5", "u5", "P3", "2024-02-15"),
        ("o5", "u5", "P1", "2024-02-15"), ("o6", "u1", "P5", "2024-02-25"),
    ]
    orders = pd.DataFrame(lines, columns=["order_id", "customer_id", "product_id", "ordered_at"])
    orders["ordered_at"] = orders["ordered_at"].map(t)
    orders["quantity"], orders["unit_price"] = 1.0, 10.0
    customers = pd.DataFrame({"customer_id": ["u1", "u2", "u3", "u4", "u5", "newbie", "far"],
                              "country": ["UK"] * 6 + ["Narnia"],
                              "signup_at": [pd.NaT] * 5 + [t("2024-02-20"), t("2024-02-21")]})
    products = pd.DataFrame({
        "product_id": ["P1", "P2", "P3", "P4", "P5", "P6"],
        "category": ["kitchen", "kitchen", "kitchen", "bags", "bags", "toys"],
        "price": [10.0, 12.0, 8.0, 30.0, 5.0, 50.0],
        "image_url": ["i1", "i2", "i3", None, "i5", "i6"],
        "in_stock": [True, True, False, True, True, True],
    })
    return Tables.from_frames(orders, customers, products=products)


AS_OF = datetime(2024, 3, 1)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_customer_gets_k_products_and_cold_starts_get_popular(shop: Tables, kind: str) -> None:
    params = {"als": {"factors": 2}, "bpr": {"factors": 2}, "reranker": {"window_days": 30, "step_days": 10}}
    model = make_recommender(kind, **params.get(kind, {})).fit_tables(shop, AS_OF)
    recs = recommend_all(shop, AS_OF, model, k=2, rules=BusinessRules(exclude_purchased=False))
    assert set(recs["customer_id"]) == {"u1", "u2", "u3", "u4", "u5", "newbie", "far"}
    assert recs.groupby("customer_id").size().eq(2).all()
    assert all(ranks == [1, 2] for ranks in recs.groupby("customer_id")["rank"].apply(list))
    assert set(recs.loc[recs["customer_id"].isin(["newbie", "far"]), "source"]) == {"popular"}
    assert "P3" not in set(recs["product_id"]), "out-of-stock product recommended"


def test_rules_filter_exclude_and_diversify(shop: Tables) -> None:
    model = make_recommender("popular").fit_tables(shop, AS_OF)
    recs = recommend_all(shop, AS_OF, model, k=3)
    bought = {("u1", "P1"), ("u1", "P2"), ("u1", "P5"), ("u2", "P1"), ("u2", "P5")}
    assert not bought & set(zip(recs["customer_id"], recs["product_id"], strict=True))
    assert "P3" not in set(recs["product_id"])

    strict = BusinessRules(require_image=True, max_price=20.0)
    assert not {"P3", "P4", "P6"} & set(recommend_all(shop, AS_OF, model, 3, strict)["product_id"])
    only_bags = recommend_all(shop, AS_OF, model, 3, BusinessRules(categories=("bags",)))
    assert set(only_bags["product_id"]) <= {"P4", "P5"}

    diverse = recommend_all(shop, AS_OF, model, 3, BusinessRules(exclude_purchased=False, max_per_category=1))
    per_category = diverse.merge(shop.frame("products"), on="product_id").groupby(["customer_id", "category"]).size()
    assert per_category.max() == 1

    # u1 bought P1 on Jan 5 and P5 on Feb 25: with a 30-day replenishment window P1 may come back.
    again = recommend_all(shop, AS_OF, model, 3, BusinessRules(repurchase_after_days=30))
    u1 = set(again.loc[again["customer_id"] == "u1", "product_id"])
    assert "P1" in u1 and "P5" not in u1


def test_price_bounds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="min_price"):
        BusinessRules(min_price=10, max_price=5)


# evaluation -------------------------------------------------------------------------------------------
def test_holdout_variants(shop: Tables) -> None:
    t = pd.Timestamp
    later = pd.DataFrame({"order_id": ["o7", "o7", "o8"], "customer_id": ["u1", "u1", "newbie"],
                          "product_id": ["P1", "P6", "P2"], "quantity": 1.0, "unit_price": 1.0,
                          "ordered_at": [t("2024-03-05")] * 3})
    orders = pd.concat([shop.frame("orders"), later], ignore_index=True)
    tables = Tables.from_frames(orders, shop.frame("customers"), products=shop.frame("products"))
    test = holdout(tables, AS_OF)
    # newbie had no order before the as_of, so is not a test customer; u1 rebuys P1 and buys new P6.
    assert set(map(tuple, test.truth[ALL_ITEMS].to_numpy())) == {("u1", "P1"), ("u1", "P6")}
    assert set(map(tuple, test.truth[NEW_ITEMS].to_numpy())) == {("u1", "P6")}
    table = evaluate(tables, AS_OF, {"popular": make_recommender("popular")}, k=3)
    assert list(table["variant"]) == [NEW_ITEMS, ALL_ITEMS] and (table["customers"] == 1).all()
