"""The feature query of an engine, generated from the registry's declarations.

The query has one parameter, the as_of. Its parts, as common table expressions:

* ``src_<source>``: a source's rows strictly before the as_of (and in its window), with its lookups
  and added columns; a rollup groups another source's rows, ``intervals`` takes the days between a
  customer's consecutive rows, a union stacks several sources' customers and timestamps;
* ``agg_<source>``: every aggregate feature of one source, one row per customer;
* ``layer_0``: the known customers (those with a row in the population source) joined to every
  aggregate, a customer without rows getting each feature's default;
* ``layer_1`` .. ``layer_n``: derived features, population medians and scores, each layer computing
  what only needs the layers before it. Scores rank exactly (``percent_rank``) or, with
  :attr:`~features.rfm.RfmRanks.APPROXIMATE`, from the engine's approximate quantiles.
"""

from __future__ import annotations

from features.engines import Engine, double
from features.registry import POPULATION_SOURCE, Agg, Feature, Registry, RegistryError, Source, references
from features.rfm import APPROX_ACCURACY, RfmRanks, ScoreColumn, approximate_scores_sql, score_sql
from features.schema import AS_OF, CUSTOMER_ID

_LAST = "_last_at"  # an aggregate CTE's latest timestamp, for a source that keeps rows after it


def _all(*conditions: str | None) -> str | None:
    parts = [c for c in conditions if c]
    if not parts:
        return None
    return " AND ".join(f"({c})" if " OR " in c.upper() else c for c in parts)


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        return double(value)
    raise RegistryError(f"no SQL literal for default {value!r}")


class _Query:
    def __init__(self, reg: Registry, engine: Engine, ranks: RfmRanks = RfmRanks.EXACT,
                 accuracy: int = APPROX_ACCURACY) -> None:
        self.reg, self.engine, self.ranks, self.accuracy = reg, engine, RfmRanks(ranks), accuracy
        self.ctes: dict[str, str] = {}
        self.aggregates = {s.name: [f for f in reg.features if f.agg is not None and f.source == s.name]
                           for s in reg.sources}
        self.last_of = {s.after_last_of for s in reg.sources if s.after_last_of}

    # -- sources ------------------------------------------------------------------------------------
    def source(self, name: str) -> str:
        cte = f"src_{name}"
        if cte not in self.ctes:
            src = self.reg.source(name)
            body = self._source_body(src)
            self.ctes[cte] = body
        return cte

    def _source_body(self, src: Source) -> str:
        e = self.engine
        if src.table is not None:
            ts = src.timestamp
            cols = ", ".join(src.read) if src.read else "*"
            window = f"{ts} >= {e.days_before(src.window_days)}" if src.window_days else None
            rows = f"SELECT {cols} FROM {src.table.value} WHERE {_all(f'{ts} < {e.as_of()}', window, src.where)}"
            if src.lookup is None and src.after_last_of is None and not src.columns:
                return rows
            if src.lookup is not None:
                lk = src.lookup
                picked = ", ".join(f"d.{c}" for c in lk.columns)
                join = "JOIN" if lk.inner else "LEFT JOIN"
                rows = (f"SELECT r.*, {picked} FROM ({rows}) r {join} {lk.table.value} d "
                        f"ON r.{lk.key} = d.{lk.key}")
            if src.after_last_of is not None:
                last = self.aggregate(src.after_last_of)
                rows = (f"SELECT r.* FROM ({rows}) r LEFT JOIN {last} a ON r.{CUSTOMER_ID} = a.{CUSTOMER_ID} "
                        f"WHERE a.{_LAST} IS NULL OR r.{ts} > a.{_LAST}")
            if src.columns:
                added = ", ".join(f"{expr} AS {name}" for name, expr in src.columns)
                rows = f"SELECT *, {added} FROM ({rows}) r"
            return rows
        if src.rows_of is not None:
            return f"SELECT * FROM {self.source(src.rows_of)} WHERE {src.where}"
        if src.rollup_of is not None:
            of = self.source(src.rollup_of)
            rows = of
            if src.lookup is not None:
                lk = src.lookup
                picked = ", ".join(f"d.{c}" for c in lk.columns)
                join = "JOIN" if lk.inner else "LEFT JOIN"
                rows = f"(SELECT r.*, {picked} FROM {of} r {join} {lk.table.value} d ON r.{lk.key} = d.{lk.key})"
            keys = ", ".join((CUSTOMER_ID, *src.keys))
            cols = [f"{src.timestamp} AS {src.timestamp_name}"] if src.timestamp else []
            cols += [f"{expr} AS {name}" for name, expr in src.columns]
            where = f" WHERE {src.where}" if src.where else ""
            return f"SELECT {keys}, {', '.join(cols)} FROM {rows} r{where} GROUP BY {keys}"
        if src.intervals_of is not None:
            of = self.reg.source(src.intervals_of)
            ts = of.time_column
            previous = f"lag({ts}) OVER (PARTITION BY {CUSTOMER_ID} ORDER BY {ts})"
            return f"SELECT {CUSTOMER_ID}, {e.days_between(previous, ts)} AS gap FROM {self.source(of.name)}"
        if src.union_of:
            parts = []
            for name in src.union_of:
                ts = self.reg.source(name).time_column
                parts.append(f"SELECT {CUSTOMER_ID}, {ts} AS seen_at FROM {self.source(name)}")
            return " UNION ALL ".join(parts)
        raise RegistryError(f"source {src.name} says nowhere its rows come from")

    # -- aggregates ---------------------------------------------------------------------------------
    def aggregate(self, name: str) -> str:
        cte = f"agg_{name}"
        if cte not in self.ctes:
            src = self.reg.source(name)
            rows = self.source(name)
            cols = [f"{self._aggregate(f, src)} AS {f.name}" for f in self.aggregates[name]]
            if name in self.last_of:
                cols.append(f"max({src.time_column}) AS {_LAST}")
            select = ", ".join([CUSTOMER_ID, *cols])
            self.ctes[cte] = f"SELECT {select} FROM {rows} GROUP BY {CUSTOMER_ID}"
        return cte

    def _aggregate(self, f: Feature, src: Source) -> str:
        e, ts = self.engine, src.time_column
        window = f"{ts} >= {e.days_before(f.window_days)}" if f.window_days else None
        cond = _all(f.where, window)
        match f.agg:
            case Agg.COUNT:
                return e.aggregate("count", "*", cond)
            case Agg.COUNT_DISTINCT:
                return e.aggregate("count_distinct", f.of, cond)
            case Agg.SUM:
                return e.aggregate("sum", f.of, cond)
            case Agg.MEAN:
                return e.aggregate("avg", f.of, cond)
            case Agg.STDDEV:
                return e.aggregate("stddev", f.of, cond)
            case Agg.MAX:
                return e.aggregate("max", f.of, cond)
            case Agg.ANY:
                return e.aggregate("any", cond or "true")
            case Agg.DAYS_SINCE_FIRST:
                return e.days_between(e.aggregate("min", ts, cond), e.as_of())
            case Agg.DAYS_SINCE_LAST:
                return e.days_between(e.aggregate("max", ts, cond), e.as_of())
            case Agg.LATEST:
                return e.latest(f.of, ts, cond)
            case Agg.TOP:
                return e.top(f.of, f.by, cond)
        raise RegistryError(f"{f.name}: no SQL for aggregate {f.agg}")

    # -- layers -------------------------------------------------------------------------------------
    def levels(self) -> dict[str, int]:
        names = [f.name for f in self.reg.features]
        level: dict[str, int] = {}
        pending = [f for f in self.reg.features if f.agg is None]
        for f in self.reg.features:
            if f.agg is not None:
                level[f.name] = 0
        while pending:
            progressed = []
            for f in pending:
                deps = references(f, names)
                if all(d in level for d in deps):
                    level[f.name] = 1 + max((level[d] for d in deps), default=0)
                    progressed.append(f)
            if not progressed:
                raise RegistryError(f"circular or unknown references among {[f.name for f in pending]}")
            pending = [f for f in pending if f not in progressed]
        return level

    def render(self) -> str:
        e = self.engine
        population = self.aggregate(POPULATION_SOURCE)
        for name in self.aggregates:
            if self.aggregates[name]:
                self.aggregate(name)
        joins, select = [], [f"k.{CUSTOMER_ID}", f"CAST({e.as_of()} AS TIMESTAMP) AS {AS_OF}"]
        for f in self.reg.features:
            if f.agg is None:
                continue
            alias = "k" if f.source == POPULATION_SOURCE else f"a_{f.source}"
            value = f"{alias}.{f.name}"
            select.append(f"coalesce({value}, {_literal(f.default)}) AS {f.name}" if f.default is not None
                          else f"{value} AS {f.name}")
        for name, feats in self.aggregates.items():
            if feats and name != POPULATION_SOURCE:
                joins.append(f"LEFT JOIN agg_{name} a_{name} ON k.{CUSTOMER_ID} = a_{name}.{CUSTOMER_ID}")
        self.ctes["layer_0"] = f"SELECT {', '.join(select)} FROM {population} k {' '.join(joins)}"

        level = self.levels()
        top = max(level.values())
        for n in range(1, top + 1):
            previous = f"layer_{n - 1}"
            here = [f for f in self.reg.features if level[f.name] == n]
            cols, score_joins = [], []
            for f in here:
                if f.expr is not None:
                    expr = f.expr if f.default is None else f"coalesce({f.expr}, {_literal(f.default)})"
                    cols.append(f"{expr} AS {f.name}")
                elif f.population_median is not None:
                    cols.append(f"(SELECT {e.aggregate('median', f.population_median)} FROM {previous}) AS {f.name}")
            by_population: dict[str | None, list[Feature]] = {}
            for f in here:
                if f.score_of is not None:
                    by_population.setdefault(f.population, []).append(f)
            for i, (where, feats) in enumerate(by_population.items()):
                cte = f"scores_{n}_{i}"
                self.ctes[cte] = self._scores(previous, where, feats)
                score_joins.append(f"LEFT JOIN {cte} ON l.{CUSTOMER_ID} = {cte}.{CUSTOMER_ID}")
                cols += [f"{cte}.{f.name}" for f in feats]
            self.ctes[f"layer_{n}"] = f"SELECT l.*, {', '.join(cols)} FROM {previous} l {' '.join(score_joins)}"
        outputs = ", ".join([CUSTOMER_ID, AS_OF, *self.reg.outputs])
        ctes = ",\n".join(f"{name} AS (\n  {body})" for name, body in self.ctes.items())
        return f"WITH\n{ctes}\nSELECT {outputs} FROM layer_{top} ORDER BY {CUSTOMER_ID}\n"


    def _scores(self, rows: str, where: str | None, feats: list[Feature]) -> str:
        """The 1-5 scores of ``feats`` among the ``rows`` where ``where`` holds, per :attr:`ranks`."""
        if self.ranks is RfmRanks.APPROXIMATE:
            columns = [ScoreColumn(f.name, f.score_of, f.descending) for f in feats if f.score_of is not None]
            return approximate_scores_sql(rows, where, columns, CUSTOMER_ID, self.engine.approx_quantile,
                                          self.accuracy)
        scores = ", ".join(f"{score_sql(f.score_of, descending=f.descending)} AS {f.name}" for f in feats)
        return f"SELECT {CUSTOMER_ID}, {scores} FROM {rows}" + (f" WHERE {where}" if where else "")


def compile_features(reg: Registry, engine: Engine, ranks: RfmRanks = RfmRanks.EXACT,
                     accuracy: int = APPROX_ACCURACY) -> str:
    """The feature query of ``reg`` in ``engine``'s dialect; its one parameter is the as_of. ``ranks``:
    how its scores rank (approximate: ``accuracy`` for the engine's approximate quantiles)."""
    return _Query(reg, engine, ranks, accuracy).render()


__all__ = ["compile_features"]
