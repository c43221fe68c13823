"""Online features (features.online): generated from the registry, equal to the batch build at the same t."""

from __future__ import annotations

import math
import threading
from datetime import datetime, timedelta

import duckdb
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.build import build_features
from features.config import FeatureConfig
from features.errors import InputError
from features.online import OnlineFeatures, compile_registry
from features.online_expr import compile_aggregate, compile_scalar
from features.registry import Dtype, Feature, Registry, RegistryError, Unit, registry
from features.schema import EventType
from features.tables import Tables

AS_OF = datetime(2024, 2, 1)
OTHER_WINDOWS = FeatureConfig(order_windows_days=(14, 60), email_windows_days=(3,), browse_windows_days=(2, 5),
                              abandoned_cart_days=(3,), intent_window_days=10)


# -- comparing with the batch -------------------------------------------------------------------------


def _plain(value: object) -> object:
    """A batch cell as a Python value: NULL (None, NaN, NA) as None, numpy scalars as Python ones."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _differences(batch: pd.DataFrame, store: OnlineFeatures, t: datetime, customers: set[str]) -> list[str]:
    """Every (customer, feature) where the store differs from the batch frame, and every customer the
    store knows or misses wrongly among ``customers`` (floats within 1e-9 relative)."""
    out = []
    known = set(batch["customer_id"])
    for customer in sorted(customers - known):
        if store.features(customer, t) is not None:
            out.append(f"{customer}: unknown at {t} in batch, known online")
    for row in batch.to_dict("records"):
        online = store.features(row["customer_id"], t)
        if online is None:
            out.append(f"{row['customer_id']}: known in batch, unknown online")
            continue
        for name, value in online.items():
            want = _plain(row[name])
            same = (value is None and want is None) if value is None or want is None else (
                math.isclose(value, want, rel_tol=1e-9, abs_tol=1e-12)
                if isinstance(want, float | int) and not isinstance(want, bool) else value == want)
            if not same:
                out.append(f"{row['customer_id']}.{name}: batch {want!r}, online {value!r}")
    return out


def _batch_with(tables: Tables, t: datetime, rows: dict[str, list[dict]],
                config: FeatureConfig | None = None) -> pd.DataFrame:
    """The batch features at ``t`` of ``tables`` with ``rows`` (table -> rows) appended, in a transaction
    that is rolled back (``tables`` is left as it was)."""
    con = tables.con
    con.begin()
    try:
        for table, items in rows.items():
            for item in items:
                names = list(item)
                con.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                            list(item.values()))
        return build_features(tables, t, config)
    finally:
        con.rollback()


# -- (a) the compiler ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [FeatureConfig(), OTHER_WINDOWS], ids=["default", "other-windows"])
def test_every_declaration_compiles(config: FeatureConfig) -> None:
    compile_registry(config)  # raises RegistryError naming a declaration it cannot evaluate
    reg = registry(config)
    assert any(f.name == "orders_14d" for f in reg.features) == (config is OTHER_WINDOWS)


@pytest.mark.parametrize("sql", ["length(category) > 2", "quantity LIKE 'a%'", "d.price > 1",
                                 "percent_rank() OVER (ORDER BY x)", "CAST(x AS DATE)"])
def test_an_unsupported_expression_names_itself(sql: str) -> None:
    with pytest.raises(RegistryError, match="online feature path cannot"):
        compile_scalar(sql)


def test_a_score_of_a_windowed_feature_is_refused_online() -> None:
    reg = registry(FeatureConfig())
    odd = Feature("rfm_recent_orders", "RFM", "1-5 by orders in 30 days", Dtype.INT, Unit.SCORE,
                  score_of="orders_30d", population="orders_count > 0", model_input=False)
    with pytest.raises(RegistryError, match="rfm_recent_orders: the online path ranks only keys fixed in time"):
        compile_registry(Registry(reg.config, reg.sources, (*reg.features, odd)))


def test_an_unsupported_aggregate_names_itself() -> None:
    with pytest.raises(RegistryError, match=r"median\(x\)"):
        compile_aggregate("median(x)")


ROWS = [(None, None, None), (0.0, 0.0, "a"), (1.0, 0.0, "Yes"), (-2.5, 4.0, None), (2.5, -0.5, "no"),
        (0.0000125, 3.0, "T"), (-0.49999999999999994, 2.0, "x"), (3.0, None, "true"), (None, 2.0, "0")]
EXPRESSIONS = [
    "CASE WHEN y > 0 THEN x / y END", "x / y", "least(1, x, y)", "greatest(x, y)", "coalesce(x, y, 7.0)",
    "round(x, 6)", "round(x)", "ceil(x)", "floor(x)", "CAST(x AS INTEGER)", "CAST(1 AS DOUBLE) * x - y",
    "x IS NULL", "x IS NOT NULL", "NOT (x > 0)", "x > 0 AND y > 0", "x > 0 OR y > 0", "-x * y",
    "lower(s) IN ('yes', 't', 'true')", "s IN ('a', NULL)", "x BETWEEN 0 AND 3", "CASE x WHEN 0 THEN 'zero' END",
    "CASE WHEN lower(s) IN ('true', 't', 'yes') THEN true WHEN lower(s) IN ('no', '0') THEN false END",
    "CAST(ceil((x + y) / 2.0) AS INTEGER)", "CAST(least(5, 1 + floor(5.0 * y)) AS INTEGER)",
]


@pytest.mark.parametrize("sql", EXPRESSIONS)
def test_compiled_expressions_agree_with_duckdb_on_nulls_and_edges(sql: str) -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE r (i INTEGER, x DOUBLE, y DOUBLE, s VARCHAR)")
    con.executemany("INSERT INTO r VALUES (?, ?, ?, ?)", [(i, *row) for i, row in enumerate(ROWS)])
    want = [v for (v,) in con.execute(f"SELECT {sql} FROM r ORDER BY i").fetchall()]
    fn = compile_scalar(sql).fn
    got = [fn(dict(zip("xys", row, strict=True))) for row in ROWS]
    for row, w, g in zip(ROWS, want, got, strict=True):
        assert (g is None and w is None) or (g is not None and w is not None and (
            g == w or (isinstance(w, float) and math.isnan(w) and math.isnan(g)))), (sql, row, w, g)


def test_aggregates_and_row_number_agree_with_duckdb() -> None:
    rows = [{"k": "a", "t": 3, "v": 2.0}, {"k": "a", "t": 1, "v": None}, {"k": "b", "t": 2, "v": 5.0},
            {"k": "a", "t": 2, "v": 1.5}]
    assert compile_aggregate("sum(v * 2)")(rows) == 17.0
    assert compile_aggregate("min(t)")(rows) == 1
    assert compile_aggregate("count(v)")(rows) == 3
    assert compile_aggregate("sum(v)")([{"v": None}]) is None
    first = compile_scalar("row_number() OVER (PARTITION BY k ORDER BY t) = 1", windows=True)
    copies = [dict(r) for r in rows]
    first.add_to(copies, "first")
    assert [r["first"] for r in copies] == [False, True, True, False]


# -- (b) worked examples on the tiny shop -------------------------------------------------------------


@pytest.fixture
def store(tiny_tables: Tables) -> OnlineFeatures:
    return OnlineFeatures(tiny_tables.before(AS_OF), AS_OF)


def test_a_cart_add_then_its_order_then_an_unsubscribe(store: OnlineFeatures) -> None:
    # a ordered last on Jan 11 (o2) and has no cart add: nothing abandoned at Feb 1.
    t0 = AS_OF + timedelta(hours=1)
    assert store.features("a", t0)["cart_abandoned_1d"] is False
    store.apply_event("a", EventType.ADD_TO_CART, AS_OF + timedelta(hours=2), "p2")
    at = store.features("a", AS_OF + timedelta(hours=3))
    assert (at["cart_abandoned_1d"], at["cart_adds_1d"], at["abandoned_cart_value"]) == (True, 1, 5.0)
    store.apply_order("a", "o9", [("p2", 1, 5.0)], AS_OF + timedelta(hours=4))
    at = store.features("a", AS_OF + timedelta(hours=5))
    assert (at["cart_abandoned_1d"], at["abandoned_cart_value"], at["orders_count"]) == (False, 0.0, 3)
    assert at["recency_days"] == pytest.approx(1 / 24)
    assert at["unsubscribed"] is False
    store.apply_event("a", EventType.ADD_TO_CART, AS_OF + timedelta(hours=4), "p1")  # at the order's moment
    assert store.features("a", AS_OF + timedelta(hours=5))["cart_abandoned_1d"] is False  # only later adds count
    store.apply_event("a", EventType.UNSUBSCRIBE, AS_OF + timedelta(hours=6))
    assert store.features("a", AS_OF + timedelta(hours=7))["unsubscribed"] is True
    assert store.touched() == {"a"}


def test_windows_expire_as_time_moves_on(store: OnlineFeatures) -> None:
    # b added p2 to the cart on Jan 29 and never bought it: abandoned for 7 days, then not.
    assert store.features("b", datetime(2024, 2, 2))["cart_abandoned_7d"] is True
    assert store.features("b", datetime(2024, 2, 5))["cart_abandoned_7d"] is True
    assert store.features("b", datetime(2024, 2, 5))["cart_abandoned_1d"] is False
    assert store.features("b", datetime(2024, 2, 6))["cart_abandoned_7d"] is False
    store.apply_event("b", EventType.PRODUCT_VIEW, datetime(2024, 2, 3), "p1")
    assert store.features("b", datetime(2024, 2, 3, 12))["views_1d"] == 1
    assert store.features("b", datetime(2024, 2, 4, 12))["views_1d"] == 0
    assert store.features("b", datetime(2024, 2, 4, 12))["views_7d"] == 1
    # a's last order (Jan 11): 30-day order window holds it until Feb 10.
    assert store.features("a", datetime(2024, 2, 10))["orders_30d"] == 1
    assert store.features("a", datetime(2024, 2, 10, 0, 0, 1))["orders_30d"] == 0


def test_new_and_unknown_customers(store: OnlineFeatures) -> None:
    assert store.features("d", datetime(2024, 2, 20)) is None  # signs up Feb 10 only in tomorrow's tables
    assert store.features("nobody", datetime(2024, 2, 20)) is None
    store.apply_event("n1", EventType.PRODUCT_VIEW, datetime(2024, 2, 3), "p1")
    assert store.features("n1", datetime(2024, 2, 3)) is None  # strictly before t
    new = store.features("n1", datetime(2024, 2, 4))
    assert (new["tenure_days"], new["orders_count"], new["rfm_recency"], new["lifecycle_stage"]) == (
        1.0, 0, None, "prospect")


def test_events_from_several_threads_all_count(store: OnlineFeatures) -> None:
    def send(n: int) -> None:
        for i in range(50):
            store.apply_event("c", EventType.PRODUCT_VIEW, AS_OF + timedelta(minutes=n * 50 + i), "p2")

    threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # c viewed p1 on Jan 31 before the as_of; 200 views since
    assert store.features("c", AS_OF + timedelta(days=1))["views_7d"] == 201


def test_other_windows_equal_the_batch_too(tiny_tables: Tables) -> None:
    store = OnlineFeatures(tiny_tables.before(AS_OF), AS_OF, OTHER_WINDOWS)
    at = AS_OF + timedelta(days=2)
    store.apply_event("b", EventType.ADD_TO_CART, at, "p1")
    store.apply_order("c", "o9", [("p1", 1, 10.0), ("p2", -1, 5.0)], at)
    events = [{"customer_id": "b", "event_type": "add_to_cart", "product_id": "p1", "occurred_at": at}]
    orders = [{"order_id": "o9", "customer_id": "c", "product_id": p, "quantity": q, "unit_price": u, "ordered_at": at}
              for p, q, u in (("p1", 1.0, 10.0), ("p2", -1.0, 5.0))]
    for t in (at + timedelta(hours=1), at + timedelta(days=3), at + timedelta(days=20)):
        batch = _batch_with(tiny_tables.before(AS_OF), t, {"orders": orders, "events": events}, OTHER_WINDOWS)
        assert "orders_14d" in batch.columns
        assert _differences(batch, store, t, {"d"}) == []


def test_prefetched_customers_answer_alike_and_a_closed_store_reads_no_more(tiny_tables: Tables) -> None:
    t = AS_OF + timedelta(days=1)
    one, many = (OnlineFeatures(tiny_tables.before(AS_OF), AS_OF) for _ in range(2))
    many.prefetch(["a", "b", "c", "nobody"])
    assert [many.features(c, t) for c in "abc"] == [one.features(c, t) for c in "abc"]
    many.close()
    assert many.features("a", t) == one.features("a", t)  # held before the close
    one.close()
    with pytest.raises(InputError, match="closed"):
        one.apply_event("d", EventType.PRODUCT_VIEW, t)


def test_a_store_over_tables_with_later_rows_is_refused(tiny_tables: Tables) -> None:
    with pytest.raises(InputError, match="rows at or after the online store's as_of"):
        OnlineFeatures(tiny_tables, AS_OF)


def test_a_new_buyer_moves_the_scores_of_untouched_customers(tiny_tables: Tables, store: OnlineFeatures) -> None:
    t = datetime(2024, 2, 3)
    before = {c: store.features(c, t)["rfm_monetary"] for c in ("a", "b")}
    assert before == {"a": 5, "b": 1}  # two buyers: a spent 35, b 15
    store.apply_order("n2", "o9", [("p1", 2, 10.0)], datetime(2024, 2, 2))  # 20: between them
    assert store.features("b", t)["rfm_monetary"] == 1
    assert store.features("a", t)["rfm_monetary"] == 5
    assert store.features("n2", t)["rfm_monetary"] == 3  # percent rank 1/2 -> 1 + floor(2.5)


# -- (c) the property: online equals offline after any stream of events --------------------------------

_TYPES = [e.value for e in EventType]
_CUSTOMERS = ["a", "b", "c", "d", "n1", "n2"]
_MINUTE = timedelta(minutes=1)


@st.composite
def _streams(draw: st.DrawFn) -> tuple[list[tuple], datetime]:
    ops = []
    for i in range(draw(st.integers(0, 12))):
        # a coarse grid of times, so that rows often share a moment (a cart add at its order's time)
        at = AS_OF + timedelta(days=draw(st.integers(0, 40))) + draw(st.sampled_from([0, 0, 1, 720])) * _MINUTE
        customer = draw(st.sampled_from(_CUSTOMERS))
        kind = draw(st.sampled_from(["event", "event", "order", "signup", "change"]))
        if kind == "event":
            ops.append(("event", customer, draw(st.sampled_from(_TYPES)),
                        draw(st.sampled_from([None, "p1", "p2", "p9"])), at))
        elif kind == "order":
            lines = draw(st.lists(st.tuples(st.sampled_from(["p1", "p2", "p9"]), st.sampled_from([1, 2, 3, -1]),
                                            st.sampled_from([2.5, 5.0, 10.0])), min_size=1, max_size=3))
            ops.append(("order", customer, f"x{i}", lines, at))
        elif kind == "signup":
            ops.append(("signup", customer, at))
        else:
            ops.append(("change", customer, draw(st.sampled_from(["country", "email_consent"])),
                        draw(st.sampled_from(["Spain", "yes", "no", None])), at))
    last = max([op[-1] for op in ops], default=AS_OF)
    # t sometimes exactly a window after the last row (windows hold rows at or after t - days)
    after = st.one_of(st.integers(1, 40 * 24 * 60).map(lambda m: m * _MINUTE),
                      st.sampled_from([1, 7, 30]).map(lambda d: timedelta(days=d)))
    return ops, last + draw(after)


def test_online_equals_batch_after_any_stream(tiny_frames: dict[str, pd.DataFrame]) -> None:
    full = Tables.from_frames(**tiny_frames)
    base = full.before(AS_OF)
    snapshot = build_features(base, AS_OF)
    later_changes = [r for r in tiny_frames["customer_changes"].to_dict("records") if r["changed_at"] >= AS_OF]

    @settings(max_examples=40, deadline=None)
    @given(stream=_streams())
    def check(stream: tuple[list[tuple], datetime]) -> None:
        ops, t = stream
        store = OnlineFeatures(base, AS_OF, snapshot=snapshot)
        # the fixture's own rows after the as_of (d's signup, a's and b's changes) arrive as events too
        orders, events, signups, changes = [], [], [], []
        store.apply_signup("d", datetime(2024, 2, 10))
        for r in later_changes:
            store.apply_change(r["customer_id"], r["attribute"], r["value"], r["changed_at"].to_pydatetime())
        for op in ops:
            if op[0] == "event":
                _, customer, kind, product, at = op
                store.apply_event(customer, kind, at, product)
                events.append({"customer_id": customer, "event_type": kind, "product_id": product,
                               "occurred_at": at})
            elif op[0] == "order":
                _, customer, order_id, lines, at = op
                store.apply_order(customer, order_id, lines, at)
                orders += [{"order_id": order_id, "customer_id": customer, "product_id": p, "quantity": float(q),
                            "unit_price": price, "ordered_at": at} for p, q, price in lines]
            elif op[0] == "signup":
                store.apply_signup(op[1], op[2])
                signups.append({"customer_id": op[1], "signup_at": op[2]})
            else:
                _, customer, attribute, value, at = op
                store.apply_change(customer, attribute, value, at)
                changes.append({"customer_id": customer, "attribute": attribute, "value": value, "changed_at": at})
        batch = _batch_with(full, t, {"orders": orders, "events": events, "customers": signups,
                                      "customer_changes": changes})
        assert _differences(batch, store, t, set(_CUSTOMERS)) == []

    check()


# -- (d) a replay of the demo shop's last 7 days --------------------------------------------------------


def test_a_replay_of_the_demo_shops_last_week_equals_the_batch(demo_tables: Tables) -> None:
    end = demo_tables.time_range()[1]
    start = end - timedelta(days=7)
    store = OnlineFeatures(demo_tables.before(start), start)
    con, late = demo_tables.con, {"start": start, "end": end}
    applied = []
    for cid, order_id, at, lines in con.execute(
            "SELECT customer_id, order_id, ordered_at, list((product_id, quantity, unit_price)) FROM orders "
            "WHERE ordered_at >= $start AND ordered_at < $end GROUP BY ALL", late).fetchall():
        applied.append((at, 1, lambda c=cid, o=order_id, a=at, ls=lines: store.apply_order(
            c, o, [tuple(x) for x in ls], a)))
    for cid, kind, product, at in con.execute(
            "SELECT customer_id, event_type, product_id, occurred_at FROM events "
            "WHERE occurred_at >= $start AND occurred_at < $end", late).fetchall():
        applied.append((at, 2, lambda c=cid, k=kind, p=product, a=at: store.apply_event(c, k, a, p)))
    for cid, at in con.execute("SELECT customer_id, signup_at FROM customers WHERE signup_at >= $start "
                               "AND signup_at < $end", late).fetchall():
        applied.append((at, 0, lambda c=cid, a=at: store.apply_signup(c, a)))
    for cid, attribute, value, at in con.execute(
            "SELECT customer_id, attribute, value, changed_at FROM customer_changes WHERE changed_at >= $start "
            "AND changed_at < $end", late).fetchall():
        applied.append((at, 3, lambda c=cid, a=attribute, v=value, w=at: store.apply_change(c, a, v, w)))
    for _, _, apply in sorted(applied, key=lambda x: (x[0], x[1])):
        apply()
    assert len(store.touched()) > 20  # a week of a 400-customer shop touches many of them
    batch = build_features(demo_tables, end)
    assert _differences(batch, store, end, set()) == []
