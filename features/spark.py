"""The contract tables in Spark, and the feature query run there (``--engine spark``).

:func:`spark_session` starts (or joins) the session with the settings features need: time zone UTC,
the venv's Python for the workers, no console progress. :class:`SparkTables` registers each contract
table as a temporary view (under its plain name: one shop per session), cast to the contract's column types, from Parquet files or folders, a
catalog table, or (tests, small shops) a DuckDB :class:`~features.tables.Tables`. Rows of forgotten
customers (the data directory's tombstones) are filtered out as they are read, as
:func:`features.io.load_data_dir` does. :func:`spark_features` runs the registry's feature query,
compiled for :class:`~features.engines.spark.SparkEngine`, with the as_of as its one argument; its RFM
scores rank as the tables' ``rfm_ranks`` says (the project's ``spark.rfm_ranks``: exact by default).

pyspark (the ``spark`` extra) and Java 17 are needed only here; nothing else imports this module at
import time.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from features.config import FeatureConfig
from features.engines import engine
from features.errors import InputError
from features.rfm import APPROX_ACCURACY, RfmRanks, parse_rfm_ranks
from features.schema import CUSTOMER_ID, OCCURRED_AT, ORDERED_AT, SPECS, Table, TableSpec
from features.tombstones import DIGESTS_TABLE, Tombstones

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

    from features.tables import Tables

SPARK_EXTRA = "pip install 'sendwise[spark]' (pyspark 4.3) and Java 17 (apt-get install openjdk-17-jre-headless)"
SESSION_DEFAULTS: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.ansi.enabled": "false",  # NULL for a bad cast, as the contract's casts expect
}
EPOCH = datetime(1970, 1, 1)
OWNER_CONF = "spark.sendwise.tables"  # which SparkTables the session's contract views belong to
_SPARK_TYPES = {"VARCHAR": "STRING", "DOUBLE": "DOUBLE", "BIGINT": "BIGINT", "TIMESTAMP": "TIMESTAMP",
                "BOOLEAN": "BOOLEAN"}


def spark_session(master: str | None = None, conf: Mapping[str, str] | None = None) -> SparkSession:
    """The active Spark session, or a new one on ``master`` (default: ``SPARK_MASTER``, else the master
    ``spark-submit --master`` gave, else ``local[*]``) with :data:`SESSION_DEFAULTS` and ``conf`` over
    them. An InputError naming what to install when pyspark or Java is missing."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise InputError(f"the spark engine needs pyspark: {SPARK_EXTRA}") from exc
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise InputError(f"the spark engine needs Java (no java on PATH, JAVA_HOME unset): {SPARK_EXTRA}")
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    master = master or os.environ.get("SPARK_MASTER")
    if master is None or master.startswith("local"):  # a cluster's executors have their own Python
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("sendwise")
    if master:  # otherwise spark-submit's --master, or Spark's own default, local[*]
        builder = builder.master(master)
    for key, value in {**SESSION_DEFAULTS, **(conf or {})}.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # py4j's errors: a JAVA_HOME without Java 17, a master that does not answer
        raise InputError(f"could not start Spark on {master or 'its default master'}: {str(exc).splitlines()[0]} "
                         f"(the spark engine needs {SPARK_EXTRA})") from exc
    session.sparkContext.setLogLevel("ERROR")
    zone = session.conf.get("spark.sql.session.timeZone")
    if zone != "UTC":
        raise InputError(f"spark.sql.session.timeZone is {zone!r}; sendwise's timestamps are UTC, so the "
                         "session must be UTC (set it, or let sendwise start the session).")
    return session


def _canonical_select(spec: TableSpec, view: str, present: dict[str, str], zone: str = "UTC") -> str:
    """Spark SQL casting ``view``'s contract columns (``present``: name -> Spark type) to the
    contract's types, NULL for absent optional ones. A timestamp without a zone (TIMESTAMP_NTZ) is a
    local time of ``zone``, converted to UTC as the DuckDB path converts it."""
    parts = []
    for col in spec.columns:
        kind = _SPARK_TYPES[col.sql_type]
        value = f"`{col.name}`" if col.name in present else "NULL"
        if col.name in present and col.sql_type == "TIMESTAMP" and present[col.name] == "timestamp_ntz":
            value = f"to_utc_timestamp({value}, '{zone}')" if zone != "UTC" else value
        parts.append(f"CAST({value} AS {kind}) AS {col.name}")
    return f"SELECT {', '.join(parts)} FROM {view}"


class SparkTables:
    """The contract tables as temporary views of one Spark session, under their plain names (every
    table exists; one not supplied is empty). The views hold one shop's tables at a time: before each
    query, these tables put their own views back if another SparkTables of the session replaced them.
    ``rfm_ranks``: how :func:`spark_features` ranks the RFM scores on these tables (exact, or from
    approximate cut points: the project's ``spark.rfm_ranks``)."""

    engine = "spark"

    def __init__(self, spark: SparkSession, rfm_ranks: RfmRanks | str = RfmRanks.EXACT) -> None:
        self.spark = spark
        self.rfm_ranks = parse_rfm_ranks(rfm_ranks)
        self._frames: dict[Table, DataFrame] = {}
        self._token = uuid.uuid4().hex

    def _activate(self) -> None:
        """Make the session's contract views these tables' (a no-op when they already are)."""
        if self.spark.conf.get(OWNER_CONF, None) == self._token:
            return
        for table, frame in self._frames.items():
            frame.createOrReplaceTempView(table.value)
        self.spark.conf.set(OWNER_CONF, self._token)

    @classmethod
    def from_sources(cls, spark: SparkSession, sources: Mapping[Table, str], tombstones: Tombstones | None = None,
                     timezone: str = "UTC", rfm_ranks: RfmRanks | str = RfmRanks.EXACT) -> SparkTables:
        """Tables read from ``sources``: per table a Parquet file or folder (any path Spark reads:
        ``s3a://``, ``hdfs://``, a local path) or ``table:<catalog name>``. Orders are required, and so
        is each table's required columns; timestamps without a zone are local times of ``timezone``."""
        if Table.ORDERS not in sources:
            raise InputError("the spark engine needs an orders table: set spark.tables.orders in sendwise.yaml "
                             "(a Parquet path, or table:<name> for a catalog table).")
        tables = cls(spark, rfm_ranks)
        for table in Table:
            source = sources.get(table)
            frame = None if source is None else _read(spark, table, source)
            tables._register(table, frame, tombstones, timezone)
        return tables

    @classmethod
    def from_tables(cls, spark: SparkSession, tables: Tables, rfm_ranks: RfmRanks | str = RfmRanks.EXACT
                    ) -> SparkTables:
        """The (already validated) tables of a DuckDB :class:`~features.tables.Tables`, handed over as
        Parquet files in a temporary folder that lives as long as the session."""
        folder = Path(tempfile.mkdtemp(prefix="sendwise-spark-"))
        atexit.register(shutil.rmtree, folder, True)  # a copy of the shop: gone when this process ends
        sources: dict[Table, str] = {}
        for table in Table:
            if tables.count(table):
                path = folder / f"{table.value}.parquet"
                tables.con.execute(f"COPY {table.value} TO '{path}' (FORMAT parquet)")
                sources[table] = str(path)
        if Table.ORDERS not in sources:
            raise InputError("the data has no orders; nothing to build features from.")
        return cls.from_sources(spark, sources, rfm_ranks=rfm_ranks)

    def _register(self, table: Table, frame: DataFrame | None, tombstones: Tombstones | None,
                  timezone: str = "UTC") -> None:
        spec = SPECS[table]
        view, raw = table.value, f"_{table.value}_raw"
        if frame is None:
            cols = ", ".join(f"CAST(NULL AS {_SPARK_TYPES[c.sql_type]}) AS {c.name}" for c in spec.columns)
            self._frames[table] = self.spark.sql(f"SELECT {cols} LIMIT 0")
            self._frames[table].createOrReplaceTempView(view)
            return
        present = {field.name: field.dataType.simpleString() for field in frame.schema.fields}
        missing = [c.name for c in spec.columns if c.required and c.name not in present]
        if missing:
            raise InputError(f"spark.tables.{table.value} has no column {', '.join(missing)} (columns: "
                             f"{', '.join(present) or 'none'}); the contract's {table.value} needs "
                             f"{', '.join(c.name for c in spec.columns if c.required)} (docs/data-contract.md).")
        frame.createOrReplaceTempView(raw)
        sql = _canonical_select(spec, raw, present, timezone)
        customer = "customer_id"
        if tombstones is not None and len(tombstones) and customer in spec.column_names:
            digests = self.spark.createDataFrame([(d,) for d in sorted(tombstones.digests)], "digest STRING")
            digests.createOrReplaceTempView(DIGESTS_TABLE)
            salt = tombstones.salt if all(c in "0123456789abcdef" for c in tombstones.salt) else None
            if salt is None:
                raise InputError("the tombstones' salt must be a hex string")
            sql += (f" WHERE sha2(concat('{salt}:', trim(CAST({customer} AS STRING))), 256) "
                    f"NOT IN (SELECT digest FROM {DIGESTS_TABLE})")
        self._frames[table] = self.spark.sql(sql)
        self._frames[table].createOrReplaceTempView(view)
        self.spark.conf.set(OWNER_CONF, self._token)

    def sql(self, query: str, args: Mapping[str, Any] | None = None) -> DataFrame:
        """``query`` on these tables (the views are resolved now: the DataFrame keeps reading them)."""
        self._activate()
        return self.spark.sql(query, args=dict(args or {}))

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """The rows of a Spark SQL query on these tables, collected to this process."""
        return to_pandas(self.sql(sql, params))

    def count(self, table: Table | str) -> int:
        return self.sql(f"SELECT * FROM {Table(table).value}").count()

    def time_range(self) -> tuple[datetime | None, datetime | None]:
        """First and last timestamp over orders and events (None, None when both are empty); read as
        microseconds, since ``collect`` would convert timestamps to the driver's local zone."""
        row = self.sql(
            f"""SELECT unix_micros(min(t)), unix_micros(max(t)) FROM (
                  SELECT {ORDERED_AT} AS t FROM {Table.ORDERS.value}
                  UNION ALL SELECT {OCCURRED_AT} FROM {Table.EVENTS.value})""").collect()[0]
        return _from_micros(row[0]), _from_micros(row[1])


def _read(spark: SparkSession, table: Table, source: str) -> DataFrame:
    """The rows of one ``spark.tables`` entry; an InputError naming it when Spark cannot read it."""
    try:
        if source.startswith("table:"):
            return spark.table(source.removeprefix("table:"))
        return spark.read.parquet(source)
    except Exception as exc:  # pyspark's AnalysisException: no such path or table
        raise InputError(f"spark.tables.{table.value}: cannot read {source!r} ({str(exc).splitlines()[0]}); "
                         "expected a Parquet file or folder Spark reads, or table:<catalog name>.") from exc


def _from_micros(value: int | None) -> datetime | None:
    return None if value is None else EPOCH + timedelta(microseconds=value)


def spark_features(tables: SparkTables, as_of: datetime, config: FeatureConfig | None = None,
                   rfm_ranks: RfmRanks | str | None = None, accuracy: int = APPROX_ACCURACY) -> DataFrame:
    """The features of every customer known before ``as_of``, as a Spark DataFrame (lazy: nothing
    runs until it is written or collected). RFM scores rank as ``rfm_ranks`` says (default: the
    tables'): exactly, or from ``percentile_approx`` cut points of that ``accuracy``
    (:func:`features.rfm.approximate_scores_sql`)."""
    from features.build import feature_sql

    ranks = tables.rfm_ranks if rfm_ranks is None else parse_rfm_ranks(rfm_ranks)
    sql = feature_sql(config or FeatureConfig.current(), "spark", ranks, accuracy)
    return tables.sql(sql, engine("spark").parameters(as_of))


def pandas_types(schema: StructType) -> dict[str, str]:
    """The pandas type of each integer and boolean column of ``schema`` as DuckDB's frames have it
    (``Int32``, ``Int64``, ``boolean``): Arrow hands such a column holding NULLs to pandas as float or
    object."""
    from pyspark.sql.types import BooleanType, IntegerType, LongType

    kinds = {IntegerType: "Int32", LongType: "Int64", BooleanType: "boolean"}
    return {f.name: kinds[type(f.dataType)] for f in schema.fields if type(f.dataType) in kinds}


def with_types(batch: pd.DataFrame, types: dict[str, str]) -> pd.DataFrame:
    """``batch`` with the columns of ``types`` that arrived as float or object cast to those types."""
    fix = {name: kind for name, kind in types.items() if batch[name].dtype.kind in "fO"}
    return batch.astype(fix) if fix else batch


def to_pandas(frame: DataFrame) -> pd.DataFrame:
    """``frame`` collected to this process, with the column types DuckDB's frames have (an integer or
    boolean column holding NULLs stays a nullable integer or boolean: :func:`pandas_types`)."""
    return with_types(frame.toPandas(), pandas_types(frame.schema))


def spark_training_set(tables: SparkTables, as_of_dates: Sequence[datetime], target: str, horizon_days: int,
                       config: FeatureConfig | None = None) -> DataFrame:
    """:func:`features.training_set.build_training_set`'s rows as one lazy Spark DataFrame: features at
    each date in ``as_of_dates`` (all fully observed: see ``usable_dates``) with the ``target`` label
    (``churned``: customers with an order before the as_of and none in the window; ``purchased``: an
    order in the window), stacked. Nothing is collected: write it, or sample it to one node."""
    from pyspark.sql import functions as F

    from features.training_set import Target, label_sql

    target = Target(target)
    e = engine("spark")
    parts = []
    for as_of in as_of_dates:
        features = spark_features(tables, as_of, config)
        buyers = tables.sql(label_sql("spark", horizon_days), e.parameters(as_of)).withColumn("_bought", F.lit(True))
        labelled = features.join(buyers, on=CUSTOMER_ID, how="left")
        bought = F.coalesce(F.col("_bought"), F.lit(False))
        if target is Target.CHURNED:
            labelled = labelled.where(F.col("orders_count") > 0).withColumn(target.value, ~bought)
        else:
            labelled = labelled.withColumn(target.value, bought)
        parts.append(labelled.drop("_bought"))
    stacked = parts[0]
    for part in parts[1:]:
        stacked = stacked.unionByName(part)
    return stacked


@dataclass(frozen=True)
class CustomerSample:
    """Which customers a one-node copy of a Spark shop holds: those whose seeded hash of the id falls
    under ``fraction`` (every table's rows of a sampled customer; the whole product catalog)."""

    customers: int  # known customers in the shop
    sampled: int
    fraction: float
    seed: int

    def params(self) -> dict[str, float | int]:
        """The sample as run parameters (``sample_*``), to record with a model trained on it."""
        return {"sample_customers": self.sampled, "sample_of_customers": self.customers,
                "sample_fraction": self.fraction, "sample_seed": self.seed}


def sample_customers(tables: SparkTables, max_customers: int, seed: int = 0) -> tuple[Tables, CustomerSample]:
    """A DuckDB copy of the shop holding about ``max_customers`` customers (all when the shop has no more),
    drawn by a seeded hash of the customer id: the same seed draws the same customers in every table
    and every run, and each sampled customer keeps their whole history, so their features are exact."""
    from features.tables import Tables, canonical_select, new_connection

    if max_customers < 1:
        raise InputError(f"the sample needs at least 1 customer; got max_customers={max_customers}")
    ids = " UNION ".join(f"SELECT {CUSTOMER_ID} FROM {t.value}" for t in Table if CUSTOMER_ID in SPECS[t].column_names)
    total = tables.sql(f"SELECT count(*) AS n FROM ({ids}) known").collect()[0]["n"]
    fraction = 1.0 if total <= max_customers else max_customers / total
    keep = f"pmod(xxhash64({CUSTOMER_ID}, {int(seed)}), 1000000) < {round(fraction * 1_000_000)}"
    con = new_connection()
    for table in Table:
        spec = SPECS[table]
        where = f" WHERE {keep}" if CUSTOMER_ID in spec.column_names else ""
        con.register(f"_sample_{table.value}", tables.sql(f"SELECT * FROM {table.value}{where}").toArrow())
        con.execute(f"CREATE TABLE {table.value} AS "
                    + canonical_select(spec, f"_sample_{table.value}", set(spec.column_names)))
        con.unregister(f"_sample_{table.value}")
    sampled = con.execute(f"SELECT count(*) FROM ({ids}) known").fetchall()[0][0]
    return Tables(con), CustomerSample(int(total), int(sampled), fraction, int(seed))
