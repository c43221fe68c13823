"""Online customer features: the registry's declarations evaluated in Python, updated per event.

:class:`OnlineFeatures` holds one shop's features from a snapshot time (``as_of``) on. Events,
orders, signups and attribute changes that arrive after it are applied to the customer they belong
to; ``features(customer, t)`` then evaluates every declaration of :mod:`features.registry` over that
customer's rows strictly before ``t`` (sources, windows, filters, lookups, rollups, intervals,
unions, derived expressions, compiled from the same portable SQL by :mod:`features.online_expr`)
and ranks them against a population index for the features relative to all customers (RFM
scores, the population median). The result equals :func:`features.build.build_features` over the
tables with the same rows appended, at as_of ``t`` (the tests hold it to that). One evaluation applies
a filter that several features share once (``event_type = 'product_view'`` by looking the rows up by
their event type), counts a window's rows by bisecting the filtered rows' sorted times, and the
population median is kept until a ranking key changes: a customer's features cost a few passes over
their rows, not one per feature.

A customer's own rows are read lazily (a row-id range per table, from copies of the tables ordered by
customer), the first time the customer is asked about or gets an event; :meth:`OnlineFeatures.prefetch`
reads many at once. The population index starts from the batch features at
``as_of`` (one DuckDB query, no per-customer Python work): untouched customers keep their batch
ranking keys (those that move with time, days since an order, move uniformly, so their order is
kept; a key is stored as its value at ``as_of``), touched customers' keys are recomputed from their
rows after each change.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache

import numpy as np
import pandas as pd
import sqlglot
from sqlglot import exp

from features.build import build_features, to_timestamp
from features.config import FeatureConfig
from features.errors import InputError
from features.online_expr import compile_aggregate, compile_scalar, sql_sum
from features.registry import (
    POPULATION_SOURCE,
    Agg,
    Feature,
    Registry,
    RegistryError,
    Source,
    references,
    registry,
)
from features.rfm import score_sql
from features.schema import (
    ATTRIBUTE,
    CHANGED_AT,
    CUSTOMER_ID,
    EVENT_TYPE,
    OCCURRED_AT,
    ORDER_ID,
    ORDERED_AT,
    PRODUCT_ID,
    QUANTITY,
    SIGNUP_AT,
    SPECS,
    UNIT_PRICE,
    VALUE,
    Table,
)
from features.tables import Tables

DAY_US = 86_400_000_000
_EPOCH = datetime(1970, 1, 1)
_US = timedelta(microseconds=1)
_PERCENT_RANK = "__percent_rank"
UNTOUCHED_CACHE = 100_000  # customers whose rows are kept after a query without an event


def epoch_us(ts: datetime) -> int:
    """Microseconds since 1970 of a naive-UTC timestamp (DuckDB's ``epoch_us``)."""
    return (ts - _EPOCH) // _US


def days_between(earlier: datetime, later_us: int) -> float:
    """Fractional days, exactly as the DuckDB engine computes them."""
    return (later_us - epoch_us(earlier)) / float(DAY_US)


# -- the registry, compiled once per configuration ---------------------------------------------------


@dataclass(frozen=True)
class _Rank:
    """A population-relative feature: a 1-5 score (``descending`` order) or a median of ``key``."""

    feature: Feature
    key: Callable  # the ranked expression over a customer's features
    member: Callable | None  # the population filter (None: every known customer)
    score: Callable | None  # the score from the percent rank (None: a median)
    descending: bool


@dataclass(frozen=True)
class _Plan:
    reg: Registry
    tables: dict[Table, tuple[str, ...]]  # columns to read per contract table
    derived: tuple[Feature, ...]  # expressions and ranks, in dependency order
    ranks: dict[str, _Rank]
    needs_rank: frozenset[str]  # features that read a population-relative one (directly or not)
    windowed: frozenset[str]  # sources whose rows depend on the as_of through a window
    reads: dict[str, frozenset[Table]]  # the contract tables each source's rows come from
    rank_inputs: frozenset[str]  # the features a ranking key or population filter reads (directly or not)
    rank_tables: frozenset[Table]  # the tables those features come from
    sources: dict[str, Source]  # the registry's sources by name
    outputs: tuple[str, ...]  # the registry's output features, in order


def _names(text: str | None, names: list[str]) -> set[str]:
    """The features (of ``names``) an expression reads (a population filter: :func:`references` reads
    only a feature's expression, score or median)."""
    words = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", re.sub(r"'[^']*'", "", text or "")))
    return words & set(names)


def _windowed(reg: Registry, src: Source) -> bool:
    """Whether a source's rows depend on the as_of beyond "before it" (a window)."""
    upstream = [src.rows_of, src.rollup_of, src.intervals_of, src.after_last_of, *src.union_of]
    return bool(src.window_days) or any(_windowed(reg, reg.source(n)) for n in upstream if n)


def _time_kinds(reg: Registry) -> dict[str, str]:
    """Each feature's dependence on the as_of for a customer without new rows: ``fixed``, ``shift``
    (days since a moment: moves with the as_of, keeps every order) or ``varying``."""
    names = [f.name for f in reg.features]
    kinds: dict[str, str] = {}
    for f in _ordered(reg):
        if f.agg is not None:
            if f.window_days or _windowed(reg, reg.source(f.source)):
                kinds[f.name] = "varying"
            else:
                kinds[f.name] = "shift" if f.agg in (Agg.DAYS_SINCE_FIRST, Agg.DAYS_SINCE_LAST) else "fixed"
            continue
        refs = references(f, names) | _names(f.population, names)
        if all(kinds[r] == "fixed" for r in refs):
            kinds[f.name] = "fixed"
        elif f.expr and isinstance(sqlglot.parse_one(f.expr, read="duckdb"), exp.Column) and refs:
            kinds[f.name] = kinds[next(iter(refs))]
        else:
            kinds[f.name] = "varying"
    return kinds


def _ordered(reg: Registry) -> list[Feature]:
    """Aggregates first, then every other feature after those it reads."""
    names = [f.name for f in reg.features]
    done = {f.name for f in reg.features if f.agg is not None}
    out = [f for f in reg.features if f.agg is not None]
    pending = [f for f in reg.features if f.agg is None]
    while pending:
        ready = [f for f in pending if (references(f, names) | _names(f.population, names)) <= done]
        if not ready:
            raise RegistryError(f"circular or unknown references among {[f.name for f in pending]}")
        out += ready
        done |= {f.name for f in ready}
        pending = [f for f in pending if f not in ready]
    return out


def _score(f: Feature) -> tuple[Callable, bool]:
    """The score expression of ``f`` with its percent rank as a value, and whether the rank descends."""
    tree = sqlglot.parse_one(score_sql(f.score_of, descending=f.descending), read="duckdb")
    window = tree.find(exp.Window)
    order = window.args.get("order") if window else None
    if (window is None or not isinstance(window.this, exp.PercentRank) or order is None
            or len(order.expressions) != 1 or window.args.get("partition_by") or order.expressions[0].args.get(
                "nulls_first")):
        raise RegistryError(f"{f.name}: the online path ranks one key by percent_rank() with NULLs last; "
                            f"got {score_sql(f.score_of, descending=f.descending)!r}")
    descending = bool(order.expressions[0].args.get("desc"))
    window.replace(exp.column(_PERCENT_RANK))
    return compile_scalar(tree.sql("duckdb")).fn, descending


@lru_cache(maxsize=32)
def _plan(reg: Registry) -> _Plan:
    names = [f.name for f in reg.features]
    # every expression compiles now: an unsupported declaration fails at construction
    for src in reg.sources:
        if src.where:
            compile_scalar(src.where)
        for _, sql in src.columns:
            (compile_aggregate if src.rollup_of else lambda s: compile_scalar(s, windows=True))(sql)
        if src.rollup_of and src.timestamp:
            compile_aggregate(src.timestamp)
    for f in reg.features:
        for sql in (f.of, f.by, f.where, f.expr, f.population):
            if sql:
                compile_scalar(sql)
    kinds = _time_kinds(reg)
    ordered = _ordered(reg)
    ranks: dict[str, _Rank] = {}
    needs_rank: set[str] = set()
    for f in ordered:
        refs = references(f, names) | _names(f.population, names)
        if refs & needs_rank or f.score_of or f.population_median:
            needs_rank.add(f.name)
        if not (f.score_of or f.population_median):
            continue
        key_sql = f.score_of or f.population_median
        bare = isinstance(sqlglot.parse_one(key_sql, read="duckdb"), exp.Column)
        bad = [r for r in refs if kinds[r] == "varying" or r in needs_rank or (kinds[r] == "shift" and not bare)]
        if bad or (f.population and any(kinds[r] != "fixed" for r in _names(f.population, names))):
            raise RegistryError(f"{f.name}: the online path ranks only keys fixed in time (or a bare 'days since' "
                                f"feature) among a fixed population; {key_sql!r} / {f.population!r} read {bad}")
        score, descending = _score(f) if f.score_of else (None, False)
        ranks[f.name] = _Rank(f, compile_scalar(key_sql).fn,
                              compile_scalar(f.population).fn if f.population else None, score, descending)
    read: dict[Table, set[str]] = {}
    for src in reg.sources:
        if src.table is not None:
            read.setdefault(src.table, set()).update(src.read or SPECS[src.table].column_names)
    tables = {t: tuple(sorted(cols | {CUSTOMER_ID})) for t, cols in read.items()}
    windowed = frozenset(s.name for s in reg.sources if _windowed(reg, s))
    reads = {s.name: frozenset(_tables_of(reg, s)) for s in reg.sources}
    inputs: set[str] = set()
    pending = [n for r in ranks.values() for n in _names(r.feature.score_of or r.feature.population_median, names)
               | _names(r.feature.population, names)]
    while pending:
        name = pending.pop()
        if name not in inputs:
            inputs.add(name)
            pending += references(reg.by_name[name], names)
    rank_tables = frozenset().union(*(reads[reg.by_name[n].source] for n in inputs if reg.by_name[n].agg))
    return _Plan(reg, tables, tuple(f for f in ordered if f.agg is None), ranks, frozenset(needs_rank), windowed,
                 reads, frozenset(inputs), rank_tables, {s.name: s for s in reg.sources}, tuple(reg.outputs))


def _tables_of(reg: Registry, src: Source) -> set[Table]:
    upstream = [src.rows_of, src.rollup_of, src.intervals_of, src.after_last_of, *src.union_of]
    own = {src.table} if src.table is not None else set()
    return own.union(*(_tables_of(reg, reg.source(n)) for n in upstream if n))


def compile_registry(reg: Registry | FeatureConfig | None = None) -> None:
    """Compile every declaration of a registry (or of the registry of a configuration; default the current
    one) for the online path; a RegistryError names a declaration it cannot evaluate or rank."""
    _plan(reg if isinstance(reg, Registry) else registry(reg or FeatureConfig.current()))


# -- one customer's rows and their evaluation --------------------------------------------------------


@dataclass
class _Customer:
    rows: dict[Table, list[dict]]
    last_at: datetime | None = None  # the latest timestamp among the rows
    cache: dict = field(default_factory=dict)  # source -> rows while every row is before t (dropped when its table grows)


class _Evaluation:
    """The features of one customer at ``t`` (rows strictly before it); days since a moment are counted
    to ``ref`` (``t`` except for ranking keys, counted to the snapshot's as_of)."""

    def __init__(self, plan: _Plan, customer: _Customer, products: dict, t: datetime, ref_us: int) -> None:
        self.plan, self.customer, self.products, self.t, self.ref_us = plan, customer, products, t, ref_us
        self.reg = plan.reg
        self.all_before = customer.last_at is None or customer.last_at < t
        self.sources: dict[str, list[dict]] = {}
        self._passing: dict[tuple[str, str | None], list[dict]] = {}  # (source, filter) -> its rows passing
        self._times: dict[tuple[str, str | None], list] = {}  # (source, filter) -> those rows' times, sorted
        self._groups: dict[tuple[str, str], dict[object, list[dict]]] = {}  # (source, column) -> rows by value

    def source(self, name: str) -> list[dict]:
        if name not in self.sources:
            src = self.plan.sources[name]
            cacheable = self.all_before and name not in self.plan.windowed
            if cacheable and name in self.customer.cache:
                self.sources[name] = self.customer.cache[name]
            else:
                self.sources[name] = self._rows(src)
                if cacheable:
                    self.customer.cache[name] = self.sources[name]
        return self.sources[name]

    def _start(self, days: int | None) -> datetime | None:
        return self.t - timedelta(days=days) if days else None

    def _lookup(self, src: Source, rows: list[dict]) -> list[dict]:
        lk = src.lookup
        if lk is None:
            return rows
        out = []
        for row in rows:
            matches = self.products[(lk.table, lk.key)].get(row.get(lk.key), ())
            if matches:
                out += [{**row, **{c: m[c] for c in lk.columns}} for m in matches]
            elif not lk.inner:
                out.append({**row, **dict.fromkeys(lk.columns)})
        return out

    def _rows(self, src: Source) -> list[dict]:
        if src.table is not None:
            ts, t, start = src.timestamp, self.t, self._start(src.window_days)
            where = compile_scalar(src.where).fn if src.where else None
            rows = [r for r in self.customer.rows.get(src.table, ()) if r[ts] is not None and r[ts] < t
                    and (start is None or r[ts] >= start) and (where is None or where(r) is True)]
            rows = self._lookup(src, rows)
            if src.after_last_of is not None:
                of = self.plan.sources[src.after_last_of]
                last = max((r[of.time_column] for r in self.source(of.name)), default=None)
                rows = [r for r in rows if last is None or r[ts] > last]
            if src.columns:
                rows = [dict(r) for r in rows]
                for name, sql in src.columns:
                    compile_scalar(sql, windows=True).add_to(rows, name)
            return rows
        if src.rows_of is not None:
            where = compile_scalar(src.where).fn
            return [r for r in self.source(src.rows_of) if where(r) is True]
        if src.rollup_of is not None:
            rows = self._lookup(src, self.source(src.rollup_of))
            if src.where:
                where = compile_scalar(src.where).fn
                rows = [r for r in rows if where(r) is True]
            groups: dict[tuple, list[dict]] = {}
            for r in rows:
                groups.setdefault(tuple(r.get(k) for k in src.keys), []).append(r)
            columns = [(src.timestamp_name, src.timestamp)] if src.timestamp else []
            columns += list(src.columns)
            out = []
            for keys, group in groups.items():
                row = {CUSTOMER_ID: group[0][CUSTOMER_ID], **dict(zip(src.keys, keys, strict=True))}
                for name, sql in columns:
                    row[name] = compile_aggregate(sql)(group)
                out.append(row)
            return out
        if src.intervals_of is not None:
            ts = self.plan.sources[src.intervals_of].time_column
            rows = sorted(self.source(src.intervals_of), key=lambda r: r[ts])
            return [{CUSTOMER_ID: r[CUSTOMER_ID],
                     "gap": None if i == 0 else days_between(rows[i - 1][ts], epoch_us(r[ts]))}
                    for i, r in enumerate(rows)]
        if src.union_of:
            times = {n: self.plan.sources[n].time_column for n in src.union_of}
            return [{CUSTOMER_ID: r[CUSTOMER_ID], "seen_at": r[times[n]]} for n in src.union_of for r in self.source(n)]
        raise RegistryError(f"source {src.name} says nowhere its rows come from")

    def aggregate(self, f: Feature) -> object:
        rows = self.source(f.source)
        if not rows:
            return None  # no row at all: NULL (the customer is not in the source's aggregate)
        tc, start = self.plan.sources[f.source].time_column, self._start(f.window_days)
        chosen = self.passing(f.source, f.where)  # in the source's order (LATEST and TOP break ties by it)
        if f.agg is Agg.ANY:
            if any(start is None or not r[tc] < start for r in chosen):
                return True
            return False if self._fails(f, rows, start) else None
        if start is not None:
            if f.agg is Agg.COUNT:
                return len(chosen) - bisect.bisect_left(self._sorted_times(f.source, f.where, tc), start)
            chosen = [r for r in chosen if not r[tc] < start]
        if f.agg is Agg.COUNT:
            return len(chosen)
        if f.agg in (Agg.DAYS_SINCE_FIRST, Agg.DAYS_SINCE_LAST):
            moments = [r[tc] for r in chosen]
            if not moments:
                return None
            return days_between(min(moments) if f.agg is Agg.DAYS_SINCE_FIRST else max(moments), self.ref_us)
        of = compile_scalar(f.of).fn if f.of else None
        if f.agg is Agg.LATEST:
            return of(max(chosen, key=lambda r: r[tc])) if chosen else None
        if f.agg is Agg.TOP:
            by = compile_scalar(f.by).fn
            ranked = sorted(((by(r), of(r)) for r in chosen),
                            key=lambda p: (p[0] is None, -p[0] if p[0] is not None else 0, p[1] is None, p[1] or ""))
            return ranked[0][1] if ranked else None
        values = [v for v in map(of, chosen) if v is not None]
        if f.agg is Agg.COUNT_DISTINCT:
            return len(set(values))
        if f.agg is Agg.SUM:
            return sql_sum(values)
        if f.agg is Agg.MAX:
            return max(values) if values else None
        if f.agg is Agg.MEAN:
            return math.fsum(values) / len(values) if values else None
        if f.agg is Agg.STDDEV:
            if len(values) < 2:
                return None
            mean = math.fsum(values) / len(values)
            return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))
        raise RegistryError(f"{f.name}: no online evaluation for aggregate {f.agg}")

    def passing(self, source: str, where: str | None) -> list[dict]:
        """The rows of ``source`` for which ``where`` is true (all without a filter), in the source's
        order; computed once per evaluation (many features share a filter and differ by their window). A
        filter ``column = 'value'`` looks its rows up among the source's rows grouped by that column."""
        key = (source, where)
        if key not in self._passing:
            rows = self.source(source)
            scalar = compile_scalar(where) if where else None
            if scalar is None:
                self._passing[key] = rows
            elif scalar.equals is not None:
                column, value = scalar.equals
                self._passing[key] = self._grouped(source, column).get(value, [])
            else:
                self._passing[key] = [r for r in rows if scalar.fn(r) is True]
        return self._passing[key]

    def _grouped(self, source: str, column: str) -> dict[object, list[dict]]:
        """The rows of ``source`` by their value of ``column`` (NULL: None), each group in the source's order."""
        key = (source, column)
        if key not in self._groups:
            groups: dict[object, list[dict]] = {}
            for row in self.source(source):
                value = row[column]
                group = groups.get(value)
                if group is None:
                    groups[value] = [row]
                else:
                    group.append(row)
            self._groups[key] = groups
        return self._groups[key]

    def _sorted_times(self, source: str, where: str | None, column: str) -> list:
        """The times (``column``) of the rows :meth:`passing` gives, sorted: a window's count by bisection."""
        key = (source, where)
        if key not in self._times:
            self._times[key] = sorted(r[column] for r in self.passing(source, where))
        return self._times[key]

    def _fails(self, f: Feature, rows: list[dict], start: datetime | None) -> bool:
        """Whether some row of ``f``'s source is out of its window or fails its filter (is false, not NULL):
        ANY is then false rather than NULL."""
        tc = self.plan.sources[f.source].time_column
        if start is not None and any(r[tc] < start for r in rows):
            return True
        if not f.where:
            return False
        scalar = compile_scalar(f.where)
        if scalar.equals is not None:  # false for a row with another value than the one asked, NULL for NULL
            column, value = scalar.equals
            return any(v is not None and v != value for v in self._grouped(f.source, column))
        return any(scalar.fn(r) is False for r in rows)

    def known(self) -> bool:
        return bool(self.source(POPULATION_SOURCE))

    def values(self, rank: Callable[[Feature, dict], object] | None) -> dict[str, object]:
        """Every feature, population-relative ones through ``rank``; or, when ``rank`` is None (a ranking
        key's evaluation), only those the ranking keys read."""
        env: dict[str, object] = {}
        wanted = None if rank is not None else self.plan.rank_inputs
        for f in self.reg.features:
            if f.agg is not None and (wanted is None or f.name in wanted):
                value = self.aggregate(f)
                env[f.name] = f.default if value is None else value
        for f in self.plan.derived:
            if wanted is not None and f.name not in wanted:
                continue
            value = compile_scalar(f.expr).fn(env) if f.expr else rank(f, env)
            env[f.name] = f.default if value is None else value
        return env


# -- the population index -----------------------------------------------------------------------------


class _Keys:
    """The keys of one population-relative feature: the batch's (sorted), less those of customers
    touched since, plus touched customers' current keys. NULL keys are counted apart (they rank last
    and a median skips them)."""

    def __init__(self, batch_keys: np.ndarray, batch_members: np.ndarray) -> None:
        self.batch_keys, self.batch_members = batch_keys, batch_members
        keys = batch_keys[batch_members]
        nulls = pd.isna(keys)
        self.base = np.sort(keys[~nulls])
        self.base_nulls = int(nulls.sum())
        self.removed: list = []
        self.removed_nulls = 0
        self.added: list = []
        self.added_nulls = 0
        self.touched: dict[str, tuple[bool, object]] = {}
        self._median: tuple[object] | None = None  # (the median,) until a key changes

    def current(self, customer_id: str, batch_index: int | None) -> tuple[bool, object]:
        if customer_id in self.touched:
            return self.touched[customer_id]
        if batch_index is None:
            return False, None
        key = self.batch_keys[batch_index]
        return bool(self.batch_members[batch_index]), None if pd.isna(key) else key

    def set(self, customer_id: str, batch_index: int | None, member: bool, key: object) -> None:
        old_member, old_key = self.current(customer_id, batch_index)
        if old_member:
            if customer_id in self.touched:
                self._drop(self.added, old_key, "added_nulls")
            else:
                self._put(self.removed, old_key, "removed_nulls")
        self.touched[customer_id] = (member, key)
        if member:
            self._put(self.added, key, "added_nulls")
        self._median = None

    def _put(self, keys: list, key: object, nulls: str) -> None:
        if key is None:
            setattr(self, nulls, getattr(self, nulls) + 1)
        else:
            bisect.insort(keys, key)

    def _drop(self, keys: list, key: object, nulls: str) -> None:
        if key is None:
            setattr(self, nulls, getattr(self, nulls) - 1)
        else:
            del keys[bisect.bisect_left(keys, key)]

    def size(self) -> int:
        return (len(self.base) + self.base_nulls - len(self.removed) - self.removed_nulls + len(self.added)
                + self.added_nulls)

    def below(self, key: object) -> int:
        """Non-NULL keys less than ``key``."""
        return (int(np.searchsorted(self.base, key, "left")) - bisect.bisect_left(self.removed, key)
                + bisect.bisect_left(self.added, key))

    def at_most(self, key: object) -> int:
        return (int(np.searchsorted(self.base, key, "right")) - bisect.bisect_right(self.removed, key)
                + bisect.bisect_right(self.added, key))

    def non_null(self) -> int:
        return len(self.base) - len(self.removed) + len(self.added)

    def preceding(self, key: object, descending: bool) -> int:
        """Members ordered before ``key`` (NULLs last, as DuckDB orders by default)."""
        if key is None:
            return self.non_null()
        return self.non_null() - self.at_most(key) if descending else self.below(key)

    def kth(self, k: int) -> object:
        """The ``k``-th smallest non-NULL key (0-based): the smallest present value with more than
        ``k`` keys at most it (a binary search over the batch's keys, then the added ones)."""
        lo, hi = 0, len(self.base)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.at_most(self.base[mid]) > k:
                hi = mid
            else:
                lo = mid + 1
        candidates = [self.base[lo]] if lo < len(self.base) else []
        first = bisect.bisect_left(range(len(self.added)), True, key=lambda i: self.at_most(self.added[i]) > k)
        candidates += self.added[first:first + 1]  # the smallest added key with more than k at most it
        return min(candidates)

    def median(self) -> object:
        """DuckDB's ``median`` (quantile_cont 0.5) of the non-NULL keys (kept until a key changes: every
        fresh answer asks for it, few events change it)."""
        if self._median is None:
            self._median = (self._compute_median(),)
        return self._median[0]

    def _compute_median(self) -> object:
        n = self.non_null()
        if n == 0:
            return None
        rank = (n - 1) * 0.5
        lo, hi = self.kth(math.floor(rank)), self.kth(math.ceil(rank))
        if lo == hi and math.floor(rank) == math.ceil(rank):
            return float(lo)
        d = rank - math.floor(rank)
        return float(lo) * (1 - d) + float(hi) * d


# -- the store --------------------------------------------------------------------------------------


class OnlineFeatures:
    """The online features of one shop from the snapshot time ``as_of`` on (see the module's docstring).

    ``tables`` holds the shop's rows before ``as_of`` (none at or after it: later rows arrive through
    ``apply_*``); its rows are never changed, its connection gets temporary, ordered copies of the columns
    the sources read (:meth:`close` drops them). ``snapshot``: ``build_features(tables, as_of, config)`` when
    the caller already has it (built here otherwise). Thread-safe: one lock around every call.
    """

    def __init__(self, tables: Tables, as_of: datetime, config: FeatureConfig | None = None,
                 snapshot: pd.DataFrame | None = None) -> None:
        self.config = config or FeatureConfig.current()
        self.as_of = to_timestamp(as_of)
        self._plan = _plan(registry(self.config))
        self._con = tables.con  # not a cursor: a loaded directory's tables can be views local to it
        self._lock = threading.RLock()
        self._check_before()
        self._products = self._load_products()
        batch = build_features(tables, self.as_of, self.config) if snapshot is None else snapshot
        self._keys = self._batch_keys(batch)
        self._row_ids, self._row_starts, self._row_counts = np.array([], dtype=object), None, None
        self._copies = self._copy_rows()
        self._customers: dict[str, _Customer] = {}
        self._pending: dict[str, dict[Table, list[dict]]] = {}  # rows applied to customers whose own are not read yet
        self._untouched: OrderedDict[str, _Customer] = OrderedDict()
        self._touched: set[str] = set()
        self._dirty: set[str] = set()

    # -- construction ------------------------------------------------------------------------------
    def _check_before(self) -> None:
        checks = [(t, SPECS[t].time_column) for t in self._plan.tables]
        latest = self._con.execute(f"SELECT {', '.join(f'(SELECT max({c}) FROM {t.value})' for t, c in checks)}"
                                   ).fetchone()
        for (table, col), late in zip(checks, latest, strict=True):
            if late is not None and late >= self.as_of:
                raise InputError(f"table {table.value} has rows at or after the online store's as_of "
                                 f"{self.as_of:%Y-%m-%d %H:%M:%S} (latest {col} {late}); start the store at "
                                 f"the data's end or later, or cut the tables with Tables.before(as_of)")

    def _load_products(self) -> dict[tuple[Table, str], dict[object, list[dict]]]:
        """Each lookup's dimension rows by key (products: a few thousand rows, read once)."""
        wanted: dict[tuple[Table, str], set[str]] = {}
        for src in self._plan.reg.sources:
            if src.lookup is not None:
                wanted.setdefault((src.lookup.table, src.lookup.key), set()).update(src.lookup.columns)
        out: dict[tuple[Table, str], dict[object, list[dict]]] = {}
        for (table, key), cols in wanted.items():
            names = [key, *sorted(cols - {key})]
            by_key: dict[object, list[dict]] = {}
            for values in self._con.execute(f"SELECT {', '.join(names)} FROM {table.value}").fetchall():
                by_key.setdefault(values[0], []).append(dict(zip(names, values, strict=True)))
            out[(table, key)] = by_key
        return out

    def _batch_keys(self, batch: pd.DataFrame) -> dict[str, _Keys]:
        """The ranking keys and population membership of every customer in the batch, by customer id."""
        missing = sorted({CUSTOMER_ID, *self._plan.reg.outputs} - set(batch.columns))
        if missing:
            raise InputError(f"the snapshot lacks the feature columns {', '.join(missing)}; build it with "
                             f"build_features under the same feature settings")
        if len(batch) and not (pd.to_datetime(batch["as_of"]) == pd.Timestamp(self.as_of)).all():
            raise InputError(f"the snapshot's as_of is {batch['as_of'].iloc[0]}, the store's {self.as_of}; "
                             f"build it at the store's as_of")
        columns = []
        for i, rank in enumerate(self._plan.ranks.values()):
            f = rank.feature
            columns += [f"{f.score_of or f.population_median} AS k{i}",
                        f"coalesce({f.population or 'true'}, false) AS m{i}"]
        self._con.register("_online_batch", batch)
        try:
            frame = self._con.execute(f"SELECT {CUSTOMER_ID}, {', '.join(columns)} FROM _online_batch "
                                      f"ORDER BY {CUSTOMER_ID}").df()
        finally:
            self._con.unregister("_online_batch")
        ids = frame[CUSTOMER_ID].to_numpy(dtype=object)
        if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
            raise InputError("the snapshot repeats a customer_id (or ids do not sort as text)")
        self._ids = ids
        return {name: _Keys(frame[f"k{i}"].to_numpy(dtype=object), frame[f"m{i}"].to_numpy(dtype=bool))
                for i, name in enumerate(self._plan.ranks)}

    def _copy_rows(self) -> dict[Table, str]:
        """The columns the sources read, copied into temporary tables of the shop's connection ordered by
        customer, with an index of where each customer's rows start (a table of the shop may be a view over
        a file, and a filter on a text column scans the whole table: a row-id range does not). DuckDB holds
        the copies (compressed, spilling past its memory limit); :meth:`close` drops them."""
        token = uuid.uuid4().hex[:12]
        copies = {t: f"_online_{t.value}_{token}" for t in self._plan.tables}
        for table, cols in self._plan.tables.items():
            self._con.execute(f"CREATE TEMP TABLE {copies[table]} AS SELECT {', '.join(cols)} FROM {table.value} "
                              f"WHERE {CUSTOMER_ID} IS NOT NULL ORDER BY {CUSTOMER_ID}")
        if copies:
            counts = [f"(SELECT {CUSTOMER_ID}, count(*) AS n{i} FROM {name} GROUP BY ALL)"
                      for i, name in enumerate(copies.values())]
            joined = " FULL JOIN ".join(f"{c} c{i}" + (f" USING ({CUSTOMER_ID})" if i else "")
                                        for i, c in enumerate(counts))
            frame = self._con.execute(f"SELECT {CUSTOMER_ID}, "
                                      f"{', '.join(f'coalesce(n{i}, 0) AS n{i}' for i in range(len(copies)))} "
                                      f"FROM {joined} ORDER BY {CUSTOMER_ID}").df()
            self._row_ids = frame[CUSTOMER_ID].to_numpy(dtype=object)
            n = frame[[f"n{i}" for i in range(len(copies))]].to_numpy(dtype=np.int64)
            self._row_starts = np.cumsum(n, axis=0) - n  # customer i's rows of table j: [start, start + n)
            self._row_counts = n
        return copies

    def close(self) -> None:
        """Drop the store's copies of the shop's rows (the store answers no more questions after)."""
        with self._lock:
            for name in self._copies.values():
                self._con.execute(f"DROP TABLE IF EXISTS {name}")
            self._copies = {}

    # -- customers' rows -----------------------------------------------------------------------------
    def _batch_index(self, customer_id: str) -> int | None:
        i = int(np.searchsorted(self._ids, customer_id))
        return i if i < len(self._ids) and self._ids[i] == customer_id else None

    def _customer(self, customer_id: str) -> _Customer:
        if customer_id in self._customers:
            return self._customers[customer_id]
        if customer_id in self._pending:
            self._resolve([customer_id])
            return self._customers[customer_id]
        if customer_id not in self._untouched:
            self._fetch([customer_id])
        self._untouched.move_to_end(customer_id)
        return self._untouched[customer_id]

    def _fetch(self, customer_ids: list[str]) -> None:
        """Read the rows of customers not held yet: a row-id range per table and customer, or, for a
        batch of at least 1 in 1,000 customers, one scan per table for all of them."""
        if not self._copies and self._plan.tables:
            raise InputError("this online store is closed")
        rows: dict[str, dict[Table, list[dict]]] = {c: {t: [] for t in self._plan.tables} for c in customer_ids}
        scan = len(customer_ids) > 1 and len(customer_ids) * 1000 >= len(self._row_ids)
        where = np.searchsorted(self._row_ids, customer_ids) if len(self._row_ids) else np.zeros(len(customer_ids))
        for j, (table, cols) in enumerate(self._plan.tables.items()):
            select, at = f"SELECT {', '.join(cols)} FROM {self._copies[table]}", cols.index(CUSTOMER_ID)
            found = []
            if scan:
                found = self._con.execute(f"{select} WHERE {CUSTOMER_ID} IN (SELECT unnest($ids))",
                                          {"ids": customer_ids}).fetchall()
            for customer_id, i in zip(customer_ids, map(int, where), strict=True):
                if scan or i >= len(self._row_ids) or self._row_ids[i] != customer_id or not self._row_counts[i, j]:
                    continue
                start = int(self._row_starts[i, j])
                found += self._con.execute(f"{select} WHERE rowid >= $a AND rowid < $b",
                                           {"a": start, "b": start + int(self._row_counts[i, j])}).fetchall()
            for values in found:
                if values[at] not in rows:
                    raise RuntimeError(f"the copy of {table.value} is not in customer order: read a row of "
                                       f"{values[at]!r} for {customer_ids[:3]}")
                rows[values[at]][table].append(dict(zip(cols, values, strict=True)))
        for customer_id, held in rows.items():
            moments = [r[SPECS[t].time_column] for t, rs in held.items() for r in rs]
            last = max((m for m in moments if m is not None), default=None)
            self._untouched[customer_id] = _Customer(held, last_at=last)
        while len(self._untouched) > max(UNTOUCHED_CACHE, len(customer_ids)):
            self._untouched.popitem(last=False)

    def prefetch(self, customer_ids: list[str]) -> None:
        """Read the rows of many customers at once (one query per table, not one per table and customer)."""
        with self._lock:
            wanted = list(dict.fromkeys(c for c in customer_ids if c not in self._customers and c not in self._untouched))
            pending = [c for c in wanted if c in self._pending]
            if pending:
                self._resolve(pending)
            rest = [c for c in wanted if c not in pending]
            if rest:
                self._fetch(rest)

    def _resolve(self, customer_ids: list[str]) -> None:
        """Read the own rows of customers with rows applied before theirs were read, and add those."""
        self._fetch(customer_ids)
        for customer_id in customer_ids:
            customer = self._untouched.pop(customer_id)
            for table, rows in self._pending.pop(customer_id).items():
                customer.rows.setdefault(table, []).extend(rows)
                col = SPECS[table].time_column
                moment = max(row[col] for row in rows)
                customer.last_at = moment if customer.last_at is None else max(customer.last_at, moment)
            customer.cache.clear()
            self._customers[customer_id] = customer

    def _append(self, customer_id: str, table: Table, rows: list[dict]) -> None:
        if not isinstance(customer_id, str) or not customer_id:
            raise InputError(f"customer_id must be a non-empty string; got {customer_id!r}")
        col = SPECS[table].time_column
        for row in rows:
            if not isinstance(row[col], datetime) or row[col].tzinfo is not None:
                raise InputError(f"{col} must be a naive UTC datetime; got {row[col]!r}")
        with self._lock:
            if not self._copies and self._plan.tables:
                raise InputError("this online store is closed")
            cols = self._plan.tables[table]
            kept = [{c: row.get(c) for c in cols} for row in rows]
            if customer_id not in self._customers and customer_id in self._untouched:
                self._customers[customer_id] = self._untouched.pop(customer_id)
            customer = self._customers.get(customer_id)
            if customer is None:  # its own rows are read when it is asked about (an event is then cheap)
                self._pending.setdefault(customer_id, {}).setdefault(table, []).extend(kept)
            else:
                customer.rows.setdefault(table, []).extend(kept)
                for name in [n for n in customer.cache if table in self._plan.reads[n]]:
                    del customer.cache[name]
                moment = max(row[col] for row in rows)
                customer.last_at = moment if customer.last_at is None else max(customer.last_at, moment)
            self._touched.add(customer_id)
            if table in self._plan.rank_tables or self._batch_index(customer_id) is None:
                self._dirty.add(customer_id)  # its ranking keys, or whether it is known at all, may change

    # -- events in -----------------------------------------------------------------------------------
    def apply_event(self, customer_id: str, event_type: str, occurred_at: datetime,
                    product_id: str | None = None) -> None:
        """A behavioural or email event (``unsubscribe`` included)."""
        if not isinstance(event_type, str) or not event_type:
            raise InputError(f"event_type must be a non-empty string; got {event_type!r}")
        if product_id is not None and not isinstance(product_id, str):
            raise InputError(f"product_id must be a string or None; got {product_id!r}")
        self._append(customer_id, Table.EVENTS, [{CUSTOMER_ID: customer_id, EVENT_TYPE: event_type,
                                                  PRODUCT_ID: product_id, OCCURRED_AT: occurred_at}])

    def apply_order(self, customer_id: str, order_id: str, lines: list[tuple[str, int | float, float]],
                    ordered_at: datetime) -> None:
        """An order's lines ``(product_id, quantity, unit_price)``; a negative quantity is a return."""
        if not lines:
            raise InputError(f"order {order_id!r} has no lines; expected (product_id, quantity, unit_price) tuples")
        self._append(customer_id, Table.ORDERS, [
            {ORDER_ID: order_id, CUSTOMER_ID: customer_id, PRODUCT_ID: product_id, QUANTITY: float(quantity),
             UNIT_PRICE: float(price), ORDERED_AT: ordered_at} for product_id, quantity, price in lines])

    def apply_signup(self, customer_id: str, signup_at: datetime) -> None:
        """A new customer's signup (a ``customers`` row)."""
        self._append(customer_id, Table.CUSTOMERS, [{CUSTOMER_ID: customer_id, SIGNUP_AT: signup_at}])

    def apply_change(self, customer_id: str, attribute: str, value: str | None, changed_at: datetime) -> None:
        """A change of a customer attribute (country, email consent), as a ``customer_changes`` row."""
        self._append(customer_id, Table.CUSTOMER_CHANGES, [{CUSTOMER_ID: customer_id, ATTRIBUTE: attribute,
                                                            VALUE: value, CHANGED_AT: changed_at}])

    def touched(self) -> set[str]:
        """Customers with rows applied since the as_of."""
        with self._lock:
            return set(self._touched)

    # -- features out --------------------------------------------------------------------------------
    def features(self, customer_id: str, t: datetime) -> dict[str, object] | None:
        """Every output feature of ``customer_id`` at as_of ``t`` (rows strictly before it), None for a
        customer not known then. Exact for ``t`` later than the as_of and than every applied row."""
        t = to_timestamp(t)
        with self._lock:
            index = self._batch_index(customer_id)
            if index is None and customer_id not in self._customers and customer_id not in self._pending:
                return None
            self._refresh()
            evaluation = _Evaluation(self._plan, self._customer(customer_id), self._products, t, epoch_us(t))
            if not evaluation.known():
                return None
            env = evaluation.values(lambda f, env: self._rank(f, customer_id, index))
            return {name: env[name] for name in self._plan.outputs}

    def _rank(self, f: Feature, customer_id: str, index: int | None) -> object:
        rank, keys = self._plan.ranks[f.name], self._keys[f.name]
        if rank.score is None:
            return keys.median()
        member, key = keys.current(customer_id, index)
        if not member:
            return None
        n = keys.size()
        before = keys.preceding(key, rank.descending)
        return rank.score({_PERCENT_RANK: before / (n - 1) if n > 1 else 0.0})

    def _refresh(self) -> None:
        """Recompute the ranking keys of customers with rows applied since the last call."""
        if not self._dirty:
            return
        pending = [c for c in self._dirty if c in self._pending]
        if pending:
            self._resolve(pending)
        for customer_id in self._dirty:
            customer = self._customers[customer_id]
            after = max(self.as_of, customer.last_at) + _US
            evaluation = _Evaluation(self._plan, customer, self._products, after, epoch_us(self.as_of))
            known = evaluation.known()
            env = evaluation.values(None) if known else {}
            index = self._batch_index(customer_id)
            for name, rank in self._plan.ranks.items():
                member = known and (rank.member is None or rank.member(env) is True)
                self._keys[name].set(customer_id, index, member, rank.key(env) if member else None)
        self._dirty.clear()


__all__ = ["OnlineFeatures", "compile_registry", "days_between", "epoch_us"]
