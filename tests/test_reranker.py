"""The two-stage reranker: its purchase signals, EASE, training windows, time safety, the registry
and serving paths, and its figure on real Online Retail (slow)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from features.importers.uci_retail import import_online_retail
from features.interactions import InteractionConfig, catalog_ids
from features.io import load_data_dir
from features.purchase_signals import country_buyers, customer_signals, last_order_pairs, product_signals
from features.tables import Tables
from training.recommenders.batch import RecommendationContext
from training.recommenders.evaluation import NEW_ITEMS, evaluate
from training.recommenders.models import load_recommender, make_recommender
from training.recommenders.reranking import FEATURES, _ranks, ease_weights, training_set
from training.recommenders.rules import BusinessRules
from training.recommenders.store import load_version, predict_known
from training.recommenders.train import train_recommender

DAY0 = datetime(2024, 1, 1)


def day(n: float) -> datetime:
    return DAY0 + timedelta(days=n)


@pytest.fixture
def three_customers() -> Tables:
    """c1 buys A on day 1 and B on day 50; c2 buys B on day 2 (two at 4.0, in two orders the same
    day), then A on day 51 and C on day 52; c3 (Germany) buys C at 1.0 on day 3 and returns it."""
    lines = [  # order, customer, product, quantity, price, day
        ("o1", "c1", "A", 1.0, 2.0, 1), ("o2", "c2", "B", 2.0, 4.0, 2), ("o3", "c2", "B", 1.0, 4.0, 2),
        ("o4", "c3", "C", 1.0, 1.0, 3), ("r4", "c3", "C", -1.0, 1.0, 4), ("o5", "c1", "B", 1.0, 4.0, 50),
        ("o6", "c2", "A", 1.0, 2.0, 51), ("o7", "c2", "C", 1.0, 1.0, 52),
    ]
    columns = ["order_id", "customer_id", "product_id", "quantity", "unit_price", "at"]
    orders = pd.DataFrame(lines, columns=columns)
    orders["ordered_at"] = orders.pop("at").map(day)
    customers = pd.DataFrame({"customer_id": ["c1", "c2", "c3"], "country": ["UK", "UK", "Germany"]})
    return Tables.from_frames(orders, customers)


def test_purchase_signals_match_hand_computed_values(three_customers: Tables) -> None:
    as_of = day(30)
    products = product_signals(three_customers, as_of, pd.Index(["A", "B", "C", "D"]))
    assert products.loc["A", "first_age"] == pytest.approx(29.0) and products.loc["B", "last_age"] == 28.0
    assert products.loc["B", "price"] == 4.0
    assert products.loc["A", "buyers_7"] == 0 and products.loc["A", "buyers_30"] == 1
    assert products.loc["B", "buyers_all"] == 1  # c2 twice is one buyer
    assert products.loc["C", "adopters_30"] == 1 and products.loc["C", "adopter_share_30"] == 1.0
    assert products.loc["A", "trend"] == pytest.approx((1 + 1) / (1 / 3 + 1))
    assert np.isnan(products.loc["D", "first_age"]) and products.loc["D", "buyers_all"] == 0

    later = day(60)
    customers = customer_signals(three_customers, later, pd.Index(["c2", "c1", "nobody"]))
    expected = {"last_age": 8.0, "first_age": 58.0, "price": 3.0, "products": 3.0, "orders": 4.0,
                "last_order_products": 1.0}
    assert customers.loc["c2"].to_dict() == pytest.approx(expected)
    assert customers.loc["c1", "price"] == 3.0 and customers.loc["nobody", "orders"] == 0
    assert np.isnan(customers.loc["nobody", "last_age"])

    last = last_order_pairs(three_customers, later)
    assert list(map(tuple, last.to_numpy())) == [("c1", "B"), ("c2", "C"), ("c3", "C")]
    recent = country_buyers(three_customers, later, days=30)
    assert list(map(tuple, recent.to_numpy())) == [("UK", "A", 1), ("UK", "B", 1), ("UK", "C", 1)]


def test_signals_ignore_rows_at_or_after_the_as_of(three_customers: Tables) -> None:
    early = product_signals(three_customers, day(30), pd.Index(["A", "B", "C"]))
    cut = product_signals(three_customers.before(day(30)), day(30), pd.Index(["A", "B", "C"]))
    pd.testing.assert_frame_equal(early, cut)


def test_ease_weights_match_the_two_product_closed_form() -> None:
    # With two products, EASE predicts b from a with weight (a . b) / (a . a + lambda).
    x = sp.csr_matrix(np.array([[1, 1], [1, 0], [1, 0], [0, 1]], np.float64))
    weights = ease_weights(x, lam=1.0)
    np.testing.assert_allclose(weights, [[0.0, 1 / 4], [1 / 3, 0.0]], rtol=1e-6)


def test_training_set_labels_first_purchases_in_the_window(three_customers: Tables) -> None:
    # Window [day 30, day 60): c1 buys B (new), c2 buys A and C (both new); c3 buys nothing.
    # Candidates: products someone bought before day 30 that the customer had not: c1 -> B, C; c2 -> A, C.
    params = make_recommender("reranker", windows=1, window_days=30).params
    features, labels = training_set(three_customers, day(60), catalog_ids(three_customers), params,
                                    InteractionConfig())
    assert features.shape == (4, len(FEATURES))
    orders = features[:, FEATURES.index("customer_orders")]  # c1: one order before day 30, c2: two
    launched = features[:, FEATURES.index("product_first_age")]  # A: 29 days before day 30, B: 28, C: 27
    got = {(int(o), round(float(a)), bool(y)) for o, a, y in zip(orders, launched, labels, strict=True)}
    assert got == {(1, 28, True), (1, 27, False), (2, 29, True), (2, 27, True)}


def test_reranker_needs_history_before_its_windows(three_customers: Tables) -> None:
    with pytest.raises(ValueError, match=r"bought something new in the 90 days after some history"):
        make_recommender("reranker").fit_tables(three_customers, day(60))
    with pytest.raises(TypeError, match="fit it with fit_tables"):
        make_recommender("reranker").fit(None)


def test_no_row_at_or_after_the_as_of_changes_the_reranker(three_customers: Tables) -> None:
    params = {"windows": 1, "window_days": 30, "trees": 5}
    extra = pd.DataFrame({"order_id": ["o8", "o9"], "customer_id": ["c1", "c3"], "product_id": ["C", "A"],
                          "quantity": 1.0, "unit_price": 9.0, "ordered_at": [day(60), day(70)]})
    more = Tables.from_frames(pd.concat([three_customers.frame("orders"), extra], ignore_index=True),
                              three_customers.frame("customers"))
    fitted = [make_recommender("reranker", **params).fit_tables(t, day(60)) for t in (three_customers, more)]
    assert list(fitted[0].customer_ids_) == list(fitted[1].customer_ids_) == ["c1", "c2"]  # c3 returned all
    rows = np.arange(2)
    user_items = sp.csr_matrix((2, 3), dtype=np.float32)
    for a, b in zip(fitted[0].top_k(rows, user_items, 3), fitted[1].top_k(rows, user_items, 3), strict=True):
        np.testing.assert_array_equal(a, b)


def test_forgetting_a_customer_drops_their_rows_and_keeps_the_others(three_customers: Tables, tmp_path: Path) -> None:
    model = make_recommender("reranker", windows=1, window_days=30, trees=5).fit_tables(three_customers, day(60))
    before = model.top_k(model.rows_for(pd.Index(["c2"]), None), None, 3)
    assert model.customer_data("c1") and model.without_customers(["c1", "nobody"]) == 1
    assert model.customer_data("c1") == {} and list(model.customer_ids_) == ["c2"]
    model.save(tmp_path)
    again = load_recommender(tmp_path)
    for a, b in zip(before, again.top_k(again.rows_for(pd.Index(["c2"]), None), None, 3), strict=True):
        np.testing.assert_array_equal(a, b)  # the others' lists are unchanged, through a save and load


def test_registered_reranker_serves_lists_and_reasons(demo_tables: Tables, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Train, register, load back; batch recommendations, the pyfunc path and 'Because you bought X'."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    as_of = datetime(2025, 10, 1)
    result = train_recommender(demo_tables, as_of, "reranker", params={"trees": 30},
                               mlruns=tmp_path / "mlruns")
    model = load_version(result.version)
    assert model.kind == "reranker" and model.params == result.model.params
    known = model.customer_ids_[:50]
    rows = model.rows_for(known, None)
    np.testing.assert_array_equal(model.top_k(rows, None, 5)[0], result.model.top_k(rows, None, 5)[0])

    context = RecommendationContext(demo_tables, as_of, model)
    recs = context.recommend(pd.Index(known), 5, BusinessRules())
    assert recs.groupby("customer_id").size().eq(5).all() and set(recs["source"]) <= {"model", "popular"}
    assert not (recs[recs["source"] == "model"]["score"] < 0).any()
    picked = model.product_ids_.get_indexer(recs["product_id"].iloc[:5])
    history = np.flatnonzero(model.stage_.profile[rows[0]].toarray().ravel())
    best = model.most_similar(picked, history)
    assert best.shape == (5,) and ((0 <= best) & (best < len(history))).all()
    listed = predict_known(model, pd.DataFrame({"customer_id": known.astype(str)}))
    assert set(listed["customer_id"]) == set(known)


@pytest.mark.slow
def test_reranker_on_the_online_retail_protocol(online_retail_path: Path, tmp_path: Path) -> None:
    """The issue's protocol (fitted before 2011-09-09, new products bought to the end of the data),
    default parameters: the figure in docs/measured.md."""
    import_online_retail(online_retail_path, tmp_path / "or")
    tables, _ = load_data_dir(tmp_path / "or", None)
    table = evaluate(tables, datetime(2011, 9, 9), {"reranker": make_recommender("reranker")})
    new = table[table["variant"] == NEW_ITEMS].iloc[0]
    assert new["customers"] == 1_860 and new["ndcg"] == pytest.approx(0.1303, abs=0.001)


def test_ranks_equal_the_double_stable_argsort() -> None:
    rng = np.random.default_rng(0)
    score = rng.integers(0, 5, (40, 300)).astype(np.float32)  # many ties
    score[rng.random(score.shape) < 0.2] = -np.inf
    score[:, 3] = -0.0
    expected = np.argsort(np.argsort(-score, axis=1, kind="stable"), axis=1, kind="stable")
    np.testing.assert_array_equal(_ranks(score), expected)
