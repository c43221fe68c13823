"""Point-in-time customer features, computed in DuckDB from the feature registry.

``build_features(tables, as_of)`` returns one row per customer known before ``as_of`` (signed up,
ordered or had an event strictly before it) and reads no row at or after ``as_of``. Every feature
is declared once in :mod:`features.registry`; the query is generated from those declarations by
:mod:`features.engines.compiler` for an :class:`~features.engines.Engine`: DuckDB, or Spark for
tables held in Spark (:mod:`features.spark`).
:mod:`features._reference` is a slow, hand-written pandas twin that the tests hold this module to.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING

import pandas as pd

from features.config import FeatureConfig
from features.engines import engine
from features.engines.compiler import compile_features
from features.registry import registry
from features.rfm import APPROX_ACCURACY, RfmRanks
from features.tables import Tables

if TYPE_CHECKING:
    from features.spark import SparkTables


@lru_cache(maxsize=32)
def feature_sql(config: FeatureConfig | None = None, engine_name: str = "duckdb", ranks: RfmRanks = RfmRanks.EXACT,
                accuracy: int = APPROX_ACCURACY) -> str:
    """The feature query of ``config`` (default: the current settings) in one engine's dialect; it
    takes one parameter, the as_of. ``ranks``: exact RFM scores, or approximate ones (Spark) from
    quantiles of that ``accuracy``."""
    return compile_features(registry(config), engine(engine_name), ranks, accuracy)


def build_features(tables: Tables | SparkTables, as_of: datetime | str | pd.Timestamp,
                   config: FeatureConfig | None = None) -> pd.DataFrame:
    """One row of features per customer known before ``as_of``, from rows strictly before it
    (``config``: the feature settings; default :meth:`FeatureConfig.current`), computed by the
    engine that holds ``tables`` (Spark's rows collected to this process: for what fits in it)."""
    config = config or FeatureConfig.current()
    when = to_timestamp(as_of)
    if tables.engine == "spark":
        from features.spark import spark_features, to_pandas

        return to_pandas(spark_features(tables, when, config))
    return tables.con.execute(feature_sql(config), engine().parameters(when)).df()


def to_timestamp(value: datetime | str | pd.Timestamp) -> datetime:
    """A naive-UTC ``datetime`` from a date string, datetime or Timestamp."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.to_pydatetime()
