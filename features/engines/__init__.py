"""SQL engines the feature registry compiles to: one small :class:`Engine` per dialect.

The declarations in :mod:`features.registry` hold only portable SQL (column names, arithmetic,
comparisons, ``CASE``, ``coalesce``, ``least``/``greatest``, ``row_number() OVER``, fractional
literals written ``CAST(x AS DOUBLE)``). Everything a dialect spells its own way (the as_of parameter,
time arithmetic, filtered, ordered and "latest" aggregates, the median) is asked of the engine by
:mod:`features.engines.compiler`. Engines: DuckDB (:mod:`features.engines.duckdb`, the embedded
default) and Spark SQL (:mod:`features.engines.spark`). A new engine is one module implementing
:class:`Engine`, listed in :func:`engine`, plus a test that its rows equal DuckDB's.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

# Aggregate functions an engine spells (Engine.aggregate); stddev is the sample standard deviation.
AGGREGATES = ("count", "count_distinct", "sum", "avg", "min", "max", "stddev", "median", "any")
_SQL_NAMES = {"count_distinct": "count", "stddev": "stddev_samp", "any": "bool_or"}
DAY_US = 86_400_000_000  # microseconds in a day


class Engine(ABC):
    """How one SQL dialect spells what the portable declarations leave out."""

    name: str

    @abstractmethod
    def parameter(self, name: str) -> str:
        """A named query parameter, as the query refers to it."""

    @abstractmethod
    def as_of(self) -> str:
        """The as_of parameter (a timestamp), as the query refers to it."""

    @abstractmethod
    def days_between(self, earlier: str, later: str) -> str:
        """Fractional days from timestamp ``earlier`` to timestamp ``later`` (a DOUBLE)."""

    @abstractmethod
    def days_before(self, days: int) -> str:
        """The timestamp ``days`` whole days before the as_of."""

    @abstractmethod
    def days_after(self, days: int) -> str:
        """The timestamp ``days`` whole days after the as_of."""

    def aggregate(self, function: str, argument: str, condition: str | None = None) -> str:
        """An aggregate over the rows where ``condition`` holds (all rows when None). ``function`` is
        one of :data:`AGGREGATES`; ``any`` takes a condition as its argument (true when some row meets
        it). Standard SQL, which DuckDB and Spark both speak (``FILTER (WHERE ...)``)."""
        if function not in AGGREGATES:
            raise ValueError(f"unknown aggregate {function!r}; expected one of {', '.join(AGGREGATES)}")
        if function == "count_distinct":
            argument = f"DISTINCT {argument}"
        return self.filtered(f"{_SQL_NAMES.get(function, function)}({argument})", condition)

    @staticmethod
    def filtered(call: str, condition: str | None) -> str:
        """An aggregate ``call`` over the rows where ``condition`` holds (all rows when None)."""
        return f"{call} FILTER (WHERE {condition})" if condition else call

    @abstractmethod
    def latest(self, value: str, timestamp: str, condition: str | None) -> str:
        """An aggregate: ``value`` of the row with the latest ``timestamp`` among those where
        ``condition`` holds, NULL values kept (a change to NULL clears an attribute)."""

    @abstractmethod
    def top(self, value: str, by: str, condition: str | None) -> str:
        """An aggregate: ``value`` of the row with the largest ``by``, ties to the smallest ``value``."""

    def approx_quantile(self, value: str, fraction: float, accuracy: int) -> str:
        """An aggregate: the approximate ``fraction`` quantile of ``value``, the ``ceil(fraction * n)``-th
        smallest of its n non-NULL values when ``accuracy`` is above 2n (Spark's sketch; see
        :func:`features.rfm.approximate_scores_sql`), for approximate RFM ranks."""
        from features.errors import InputError

        raise InputError(f"approximate RFM ranks are computed on Spark only (spark.rfm_ranks); the {self.name} "
                         "engine ranks exactly")

    @abstractmethod
    def parameters(self, as_of: object) -> dict[str, object]:
        """The query's parameters for one as_of."""


def double(value: float) -> str:
    """A fractional literal every engine reads as DOUBLE (Spark reads ``3.0`` as DECIMAL, and a DECIMAL
    ratio is silently truncated)."""
    if not math.isfinite(value):
        raise ValueError(f"no SQL literal for {value!r}: expected a finite number")
    return f"CAST({float(value)!r} AS DOUBLE)"


def engine(name: str = "duckdb") -> Engine:
    """The engine called ``name``; an InputError listing the known ones otherwise."""
    from features.engines.duckdb import DuckDBEngine
    from features.engines.spark import SparkEngine
    from features.errors import InputError

    engines: dict[str, type[Engine]] = {DuckDBEngine.name: DuckDBEngine, SparkEngine.name: SparkEngine}
    if name not in engines:
        raise InputError(f"unknown feature engine {name!r}; expected one of {', '.join(sorted(engines))}")
    return engines[name]()


__all__ = ["AGGREGATES", "DAY_US", "Engine", "double", "engine"]
