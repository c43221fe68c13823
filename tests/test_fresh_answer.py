"""One fresh answer (serving/live.py: a touched customer's features, then ``score_row``) takes its fast
paths: ``score_row`` without frames and with XGBoost on one thread, the reasons and the lifetime value of
one row, the online features' shared filters, window counts by bisection and a kept population median.
Each is held to the slow, obvious path it replaces: ``score_features`` on the same rows, ``top_reasons``,
``ClvModel.predict`` and ``features_summary`` on frames, and the batch feature build at the same time."""

from __future__ import annotations

import dataclasses
import math
import random
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from test_online_features import _differences as differences
from threadpoolctl import ThreadpoolController

from features.build import build_features
from features.online import OnlineFeatures, _Keys
from features.online_expr import compile_scalar
from features.schema import CUSTOMER_ID, EventType
from features.snapshot import data_end
from features.tables import Tables
from training.classifier_choice import fit_kind
from training.clv import features_summary, features_summary_row, fit_clv_features
from training.design import feature_columns
from training.model import LOGISTIC, XGBOOST, ModelBundle
from training.reasons import top_reasons, top_reasons_row
from training.scoring import CLV_KEY, score_features, score_row


def _missing(value: object) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _same(got: object, want: object, rel: float = 0.0) -> bool:
    """Equal values, floats within ``rel`` (default: bit for bit); missing (None, NaN, NaT) equals missing."""
    if _missing(want) or _missing(got):
        return _missing(want) and _missing(got)
    if isinstance(want, float | np.floating):
        return isinstance(got, float | np.floating) and math.isclose(got, want, rel_tol=rel, abs_tol=0.0)
    return got == want


@pytest.fixture(scope="module")
def shop(demo_tables: Tables) -> tuple[pd.DataFrame, pd.Timestamp]:
    at = data_end(demo_tables) + timedelta(microseconds=1)
    return build_features(demo_tables, at), pd.Timestamp(at)


@pytest.fixture(scope="module", params=[XGBOOST, LOGISTIC])
def models(request: pytest.FixtureRequest, shop) -> tuple[ModelBundle, ModelBundle]:
    """Churn (carrying a CLV model) and propensity models of one kind on the demo shop's features (labels
    made from the features, so that the trees split)."""
    features, at = shop
    labelled = features.assign(churned=(features["recency_days"].fillna(1e9) > 60).astype(int),
                               purchased=(features["views_30d"] > 2).astype(int))
    columns = feature_columns(features)
    churn = fit_kind(request.param, labelled, labelled, labelled, columns, "churned", 90, {}, 0,
                     {CLV_KEY: fit_clv_features(features, at).to_dict()})
    propensity = fit_kind(request.param, labelled, labelled, labelled, columns, "purchased", 30, {}, 0, {})
    return churn, propensity


@pytest.mark.parametrize("clv", [True, False], ids=["clv", "no-clv"])
def test_score_row_equals_score_features_of_the_same_rows(shop, models, clv: bool) -> None:
    features, at = shop
    churn, propensity = models
    if not clv:
        churn = dataclasses.replace(churn, meta={k: v for k, v in churn.meta.items() if k != CLV_KEY})
    rows = pd.concat([features[features["orders_count"] > 1].head(40), features[features["orders_count"] == 1].head(10),
                      features[features["orders_count"] == 0].head(20)], ignore_index=True)
    batch = score_features(rows, churn, propensity)
    openmp = ThreadpoolController().select(user_api="openmp")
    dated = 0
    for i, values in enumerate(rows.drop(columns=CUSTOMER_ID).to_dict("records")):
        one = score_row(values, churn, propensity, at)
        # the slow path on this row alone: equal bit for bit (on one thread too: quicker for one row on a
        # busy machine, the same numbers); in a frame of many rows the logistic model's matrix product may
        # round the last bit otherwise
        with openmp.limit(limits=1):
            alone = score_features(rows.iloc[[i]], churn, propensity).iloc[0]
        for name, want in alone.items():
            if name != CUSTOMER_ID:
                assert _same(one[name], want), (values["orders_count"], name, one[name], want)
                assert _same(one[name], batch.at[i, name], 1e-9), (name, one[name], batch.at[i, name])
        dated += pd.notna(one["next_order_date"])
    assert (dated > 0) == clv  # the rows reach the bisection for a next order date


def test_score_row_runs_the_models_on_one_openmp_thread_and_leaves_the_setting(shop, models) -> None:
    features, at = shop
    churn, propensity = models
    openmp = ThreadpoolController().select(user_api="openmp")
    if not openmp.lib_controllers:
        pytest.skip("no OpenMP runtime loaded")
    seen: list[int] = []

    class Watched(ModelBundle):
        def predict_proba(self, features: pd.DataFrame, matrix: np.ndarray | None = None) -> np.ndarray:
            seen.append(openmp.info()[0]["num_threads"])
            return super().predict_proba(features, matrix)

    watched = Watched(**{f.name: getattr(churn, f.name) for f in dataclasses.fields(churn)})
    buyer = features[features["orders_count"] > 0].iloc[0].drop(CUSTOMER_ID).to_dict()
    with openmp.limit(limits=2):
        score_row(buyer, watched, propensity, at)
        assert seen == [1]
        assert openmp.info()[0]["num_threads"] == 2


def test_score_row_names_no_columns_per_call(shop, models, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-row XGBoost contributions skip naming the columns and checking them against the booster's
    (much of that call's cost); the numbers are held to score_features above."""
    features, at = shop
    churn, propensity = models
    if churn.kind != XGBOOST:
        pytest.skip("a formula model builds no DMatrix")
    named: list[object] = []
    real = xgb.DMatrix

    def watched(*args: object, **kwargs: object) -> xgb.DMatrix:
        named.append(kwargs.get("feature_names"))
        return real(*args, **kwargs)

    monkeypatch.setattr(xgb, "DMatrix", watched)
    for kind in (features["orders_count"] > 0, features["orders_count"] == 0):  # churn's reasons, propensity's
        score_row(features[kind].iloc[0].drop(CUSTOMER_ID).to_dict(), churn, propensity, at)
    assert named == [None, None]


def test_the_reasons_of_one_row_are_those_of_the_frame(shop, models) -> None:
    features, _ = shop
    churn, _ = models
    x = churn.matrix(features)
    contributions = churn.contributions(features, matrix=x)
    rng = np.random.default_rng(0)
    # also rows whose top features say the same ("fewer than two orders so far") and rows raising nothing
    tied = np.where(rng.random(contributions.shape) < 0.3, contributions[:, :1], contributions)
    for c in (contributions, tied, -np.abs(contributions), np.zeros_like(contributions)):
        batch = top_reasons(c, x, churn.columns, 3)
        for i in range(len(x)):
            assert top_reasons_row(c[i], x[i], churn.columns, 3) == batch[i].tolist(), i


def test_one_customers_lifetime_value_equals_the_frames(shop) -> None:
    features, at = shop
    model = fit_clv_features(features, at)
    summary = features_summary(features)
    predicted = model.predict(summary, 180, at + pd.Timedelta(days=3))
    by_id = features.set_index(CUSTOMER_ID)
    for i, row in enumerate(summary.to_dict("records")):
        values = by_id.loc[row[CUSTOMER_ID]].to_dict()
        assert features_summary_row(values) == {k: v for k, v in row.items() if k not in (CUSTOMER_ID,)}
        got = model.predict_row(row, 180, at + pd.Timedelta(days=3))
        want = predicted.iloc[i]
        for name in ("expected_orders", "p_alive", "predicted_clv"):
            assert got[name] == want[name] or (math.isnan(got[name]) and math.isnan(want[name])), name
        assert got["next_order_date"] == (None if pd.isna(want["next_order_date"]) else want["next_order_date"])
    assert predicted["next_order_date"].isna().any() and predicted["next_order_date"].notna().any()
    prospect = by_id[by_id["orders_count"] == 0].iloc[0].to_dict()
    assert features_summary_row(prospect) is None and features_summary_row({}) is None


# -- the online features, asked again and again while events arrive ----------------------------------


@pytest.mark.parametrize("sql", ["event_type = 'add_to_cart'", "(1 = quantity)", "quantity = 2.5"])
def test_an_equality_filter_looks_up_exactly_the_rows_it_holds_true_and_false(sql: str) -> None:
    """A filter ``column = literal`` selects its rows by looking their value up (features.online): the rows
    it holds true are those whose value equals the literal, false those with another value, NULL the rest."""
    scalar = compile_scalar(sql)
    column, literal = scalar.equals
    values = [None, "add_to_cart", "view", 1, 1.0, True, 2.5, 0, math.nan, "1"]
    rows = [{column: v} for v in values]
    groups: dict[object, list[dict]] = {}
    for row in rows:
        groups.setdefault(row[column], []).append(row)
    assert [r for r in rows if scalar.fn(r) is True] == groups.get(literal, [])
    assert ({id(r) for r in rows if scalar.fn(r) is False}
            == {id(r) for v, rs in groups.items() if v is not None and v != literal for r in rs})
    assert compile_scalar("quantity > 0").equals is None and compile_scalar("a = b").equals is None


def _median(keys: list[float]) -> float | None:
    """DuckDB's median (quantile_cont 0.5), written out."""
    keys = sorted(keys)
    if not keys:
        return None
    rank = (len(keys) - 1) * 0.5
    lo, hi = keys[math.floor(rank)], keys[math.ceil(rank)]
    d = rank - math.floor(rank)
    return float(lo) if lo == hi and d == 0 else float(lo) * (1 - d) + float(hi) * d


def test_the_population_median_is_kept_only_until_a_key_changes() -> None:
    """The median of a population-relative feature (``_typical_gap``) is kept between answers and
    recomputed after any key moves: equal to the median of the current keys after every change."""
    rng = random.Random(3)
    n = 200
    batch = np.array([None if rng.random() < 0.1 else float(rng.randint(1, 60)) for _ in range(n)], dtype=object)
    members = np.array([rng.random() < 0.9 for _ in range(n)])
    keys = _Keys(batch, members)
    current = {i: (bool(members[i]), batch[i]) for i in range(n)}
    for step in range(400):
        i = rng.randrange(n + 40)  # beyond the batch: new customers
        member, key = rng.random() < 0.85, None if rng.random() < 0.1 else float(rng.randint(1, 80))
        keys.set(f"c{i}", i if i < n else None, member, key)
        current[i] = (member, key)
        if step % 3:
            assert keys.median() == _median([k for m, k in current.values() if m and k is not None]), step


def test_fresh_features_equal_the_batch_while_events_arrive_and_windows_move(demo_tables: Tables) -> None:
    """The demo shop's last four days arrive as events, a day at a time, plus orders that move the
    population's median gap between orders; after each, every customer asked before and the touched ones
    are asked again (cached rows, filters, counts by bisection, the median kept until a key changes) and
    compared with the batch build at that moment, also a day later (the 1-day windows emptied)."""
    end = data_end(demo_tables)
    start = end - timedelta(days=4)
    store = OnlineFeatures(demo_tables.before(start), start)
    con = demo_tables.con
    asked = {cid for (cid,) in con.execute("SELECT customer_id FROM orders GROUP BY 1 "
                                           "HAVING count(DISTINCT order_id) > 2 ORDER BY 1 LIMIT 15").fetchall()}
    for day in range(4):
        lo, hi = start + timedelta(days=day), start + timedelta(days=day + 1)
        span = {"lo": lo, "hi": hi}
        for cid, order_id, at, lines in con.execute(
                "SELECT customer_id, order_id, ordered_at, list((product_id, quantity, unit_price)) FROM orders "
                "WHERE ordered_at >= $lo AND ordered_at < $hi GROUP BY ALL ORDER BY ordered_at", span).fetchall():
            store.apply_order(cid, order_id, [tuple(x) for x in lines], at)
            asked.add(cid)
        for cid, kind, product, at in con.execute(
                "SELECT customer_id, event_type, product_id, occurred_at FROM events "
                "WHERE occurred_at >= $lo AND occurred_at < $hi ORDER BY occurred_at", span).fetchall():
            store.apply_event(cid, kind, at, product)
            if len(asked) < 60 or kind == EventType.UNSUBSCRIBE:
                asked.add(cid)
        for cid, at in con.execute("SELECT customer_id, signup_at FROM customers WHERE signup_at >= $lo "
                                   "AND signup_at < $hi", span).fetchall():
            store.apply_signup(cid, at)
        for cid, attribute, value, at in con.execute(
                "SELECT customer_id, attribute, value, changed_at FROM customer_changes WHERE changed_at >= $lo "
                "AND changed_at < $hi", span).fetchall():
            store.apply_change(cid, attribute, value, at)
        batch = build_features(demo_tables.before(hi), hi)
        assert differences(batch[batch[CUSTOMER_ID].isin(asked)], store, hi, set()) == [], day
    later = end + timedelta(days=1)  # no new rows: windows of a day hold nothing any more
    batch = build_features(demo_tables.before(end), later)
    assert differences(batch[batch[CUSTOMER_ID].isin(asked)], store, later, set()) == []
    assert batch.loc[batch[CUSTOMER_ID].isin(asked), "views_1d"].sum() == 0
