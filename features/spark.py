"""The contract tables in Spark, and the feature query run there (``--engine spark``).

:func:`spark_session` starts (or joins) the session with the settings features need: time zone UTC,
the venv's Python for the workers, no console progress. :class:`SparkTables` registers each contract
table as a temporary view (under its plain name: one shop per session), in the contract's column types,
from Parquet files or folders or a catalog table, validated row by row with the contract's rules (its
clean rows in the view, its rejected rows written with their reason to a rejects folder, as
:func:`features.validate.validate_raw` does for DuckDB), or from a DuckDB
:class:`~features.tables.Tables` (tests, small shops; validated already). Rows of forgotten customers
(the data directory's tombstones) are left out as they are read, as :func:`features.io.load_data_dir`
does. The clean rows of a validated table are computed once and kept on the executors
(:meth:`SparkTables.close` releases them). :func:`spark_features` runs the registry's feature query,
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
from typing import TYPE_CHECKING, Any, Self

import pandas as pd

from features.config import FeatureConfig
from features.engines import engine
from features.errors import InputError
from features.io import refuse_overwriting_inputs
from features.rfm import APPROX_ACCURACY, RfmRanks, parse_rfm_ranks
from features.schema import (
    CUSTOMER_ID,
    DUPLICATE_REASON,
    OCCURRED_AT,
    ORDERED_AT,
    REJECT_REASON,
    SOURCE_ROW,
    SPECS,
    Column,
    Table,
    TableSpec,
    boolean_sql,
)
from features.timezones import _GLUE_OFFSET, _HAS_ZONE, SHIFTED_FROM, SHIFTED_UNTIL, check_timezone
from features.tombstones import Tombstones
from features.validate import TableReport, is_type_error, now_utc, rule_checks, type_error

if TYPE_CHECKING:
    from pyspark.sql import Column as SparkColumn
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
    # let adaptive execution coalesce the shuffles of plans being cached (validation's): otherwise each runs
    # spark.sql.shuffle.partitions tasks however small the data
    "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",
}
EPOCH = datetime(1970, 1, 1)
OWNER_CONF = "spark.sendwise.tables"  # which SparkTables the session's contract views belong to
ROW_FILE, ROW_INDEX = "_file", "_index"  # a row's place in its source: file, 0-based row in it
ROW_REASON = "_reason"  # the first row rule a row breaks
SOURCE_FILE = "source_file"  # in a rejects folder: the file a rejected row was read from
REASONS_KEPT = 100  # reasons counted in a report (the most frequent; its ``rejected`` counts them all)
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


def _canonical_select(spec: TableSpec, view: str, present: dict[str, str]) -> str:
    """Spark SQL casting ``view``'s contract columns (``present``: name -> Spark type) to the
    contract's types, NULL for absent optional ones: for tables validated already (naive UTC)."""
    parts = []
    for col in spec.columns:
        value = f"`{col.name}`" if col.name in present else "NULL"
        parts.append(f"CAST({value} AS {_SPARK_TYPES[col.sql_type]}) AS {col.name}")
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
        self.reports: list[TableReport] = []  # one per table read and validated (from_sources)
        self._kept: list[DataFrame] = []  # validated clean rows, persisted until close()

    def _activate(self) -> None:
        """Make the session's contract views these tables' (a no-op when they already are)."""
        if self.spark.conf.get(OWNER_CONF, None) == self._token:
            return
        for table, frame in self._frames.items():
            frame.createOrReplaceTempView(table.value)
        self.spark.conf.set(OWNER_CONF, self._token)

    def close(self) -> None:
        """Release the validated clean rows these tables keep on the executors (their views then
        validate again if read). Without it, they live as long as the Spark session."""
        for frame in self._kept:
            frame.unpersist()
        self._kept.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def from_sources(cls, spark: SparkSession, sources: Mapping[Table, str], tombstones: Tombstones | None = None,
                     timezone: str = "UTC", rfm_ranks: RfmRanks | str = RfmRanks.EXACT,
                     rejects: str | Path | None = None, now: datetime | None = None,
                     data_dir: Path | None = None) -> SparkTables:
        """Tables read from ``sources``: per table a Parquet file or folder (any path Spark reads:
        ``s3a://``, ``hdfs://``, a local path) or ``table:<catalog name>``. Orders are required, and so
        is each table's required columns; timestamps without a zone are local times of ``timezone``.

        Every row is validated as :func:`features.validate.validate_raw` validates a data directory
        (:func:`_validate`): the views hold the clean rows, and each table's rejected rows, with their
        ``reason``, are written as a Parquet folder ``<rejects>/<table>`` (None: a temporary folder,
        removed when this process ends); :attr:`reports` counts them. Timestamps after ``now``
        (default: now, UTC) are rejected. A local ``rejects`` folder that is, or holds, an input (a
        local source, or ``data_dir``: the data directory whose tombstones are read) is refused first.

        Each table's clean rows are computed once, in the pass that writes its rejects, and kept
        (persisted on the executors, memory then disk) until :meth:`close`: every query on a view reads
        those typed rows, never the source or the rules again."""
        if Table.ORDERS not in sources:
            raise InputError("the spark engine needs an orders table: set spark.tables.orders in sendwise.yaml "
                             "(a Parquet path, or table:<name> for a catalog table).")
        if rejects is None:
            rejects = tempfile.mkdtemp(prefix="sendwise-rejects-")
            atexit.register(shutil.rmtree, rejects, True)
        if "://" not in str(rejects):
            local = [p for p in sources.values() if not p.startswith("table:") and "://" not in p]
            refuse_overwriting_inputs(rejects, inputs=local, data_dir=data_dir, option="the rejects folder")
        tables = cls(spark, rfm_ranks)
        moment, zone = (now or now_utc()).replace(tzinfo=None), check_timezone(timezone)
        for table in Table:
            source = sources.get(table)
            if source is None:
                tables._register(table, None)
                continue
            target = f"{str(rejects).rstrip('/')}/{table.value}"
            try:
                frame, report = _validate(spark, table, _read(spark, table, source), source, target, moment,
                                          tombstones, zone)
            except BaseException:
                tables.close()
                raise
            tables.reports.append(report)
            tables._frames[table] = frame
            tables._kept.append(frame)
            frame.createOrReplaceTempView(table.value)
        spark.conf.set(OWNER_CONF, tables._token)
        orders = tables.reports[0]
        if orders.loaded == 0 and orders.rejected:
            tables.close()
            reasons = "; ".join(f"{n:,} {r}" for r, n in list(orders.reasons.items())[:3])
            raise InputError(f"{orders.source}: orders has no rows left: all {orders.rejected:,} were rejected "
                             f"({reasons}); see {rejects}/{Table.ORDERS.value}.")
        return tables

    @property
    def rejected(self) -> int:
        """Rows rejected by the validation of the tables read (0 for tables handed over from DuckDB)."""
        return sum(r.rejected for r in self.reports)

    @classmethod
    def from_tables(cls, spark: SparkSession, tables: Tables, rfm_ranks: RfmRanks | str = RfmRanks.EXACT
                    ) -> SparkTables:
        """The (already validated) tables of a DuckDB :class:`~features.tables.Tables`, handed over as
        Parquet files in a temporary folder that lives as long as the session; read as they are."""
        folder = Path(tempfile.mkdtemp(prefix="sendwise-spark-"))
        atexit.register(shutil.rmtree, folder, True)  # a copy of the shop: gone when this process ends
        if not tables.count(Table.ORDERS):
            raise InputError("the data has no orders; nothing to build features from.")
        handed = cls(spark, rfm_ranks)
        for table in Table:
            frame = None
            if tables.count(table):
                path = folder / f"{table.value}.parquet"
                tables.con.execute(f"COPY {table.value} TO '{path}' (FORMAT parquet)")
                frame = _read(spark, table, str(path))
            handed._register(table, frame)
        spark.conf.set(OWNER_CONF, handed._token)
        return handed

    def _register(self, table: Table, frame: DataFrame | None) -> None:
        """Register ``frame`` (validated rows: cast only) or, for None, an empty table, as ``table``'s view."""
        spec = SPECS[table]
        if frame is None:
            cols = ", ".join(f"CAST(NULL AS {_SPARK_TYPES[c.sql_type]}) AS {c.name}" for c in spec.columns)
            self._frames[table] = self.spark.sql(f"SELECT {cols} LIMIT 0")
        else:
            raw = f"_{table.value}_raw"
            frame.createOrReplaceTempView(raw)
            present = {field.name: field.dataType.simpleString() for field in frame.schema.fields}
            self._frames[table] = self.spark.sql(_canonical_select(spec, raw, present))
        self._frames[table].createOrReplaceTempView(table.value)

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


def _row_ids(frame: DataFrame) -> DataFrame:
    """``frame`` with each row's place in its source: the file and 0-based row in it (Parquet's
    ``_metadata``), or, for a source without file metadata, Spark's ``monotonically_increasing_id``."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    try:
        return frame.select("*", F.col("_metadata.file_path").alias(ROW_FILE),
                            F.col("_metadata.row_index").alias(ROW_INDEX))
    except AnalysisException:
        return frame.select("*", F.lit(None).cast("string").alias(ROW_FILE),
                            F.monotonically_increasing_id().alias(ROW_INDEX))


def _typed(col: Column, name: str, source_type: str, zone: str | None) -> SparkColumn:
    """Input column ``name`` (of Spark type ``source_type``) as ``col``'s contract type, NULL where it does not parse:
    the Spark twin of :func:`features.validate._typed_expr` (text trimmed, blank is NULL, numbers finite,
    booleans as :func:`features.schema.boolean_sql`, timestamps to UTC as :mod:`features.timezones`)."""
    from pyspark.sql import functions as F

    raw = F.col(f"`{name}`")
    text = F.trim(raw.cast("string"))
    if col.sql_type == "VARCHAR":
        return F.nullif(text, F.lit(""))
    if col.sql_type == "BOOLEAN":
        return raw if source_type == "boolean" else F.expr(boolean_sql(f"trim(CAST(`{name}` AS STRING))"))
    if col.sql_type in ("DOUBLE", "BIGINT"):
        kind = _SPARK_TYPES[col.sql_type].lower()
        # Java's parser, unlike DuckDB's, reads a trailing d or f ("1.5d"): not a number here
        value = raw.cast(kind) if source_type != "string" else F.when(~F.lower(text).rlike("[df]$"), text.cast(kind))
        return F.when(~F.isnan(value) & (F.abs(value) != float("inf")), value) if kind == "double" else value
    if source_type == "timestamp":
        return raw
    if source_type in ("timestamp_ntz", "date"):
        naive = raw.cast("timestamp")
        return _local_to_utc(naive, zone) if zone else naive
    glued = F.regexp_replace(text, _GLUE_OFFSET, "$1$2")
    value = F.when(glued.rlike(r"^\d{4}-\d{1,2}-\d{1,2}"), glued.cast("timestamp"))  # not "2024" alone
    return F.when(glued.rlike(_HAS_ZONE), value).otherwise(_local_to_utc(value, zone)) if zone else value


def _local_to_utc(local: SparkColumn, zone: str) -> SparkColumn:
    """``local`` (a wall-clock time read as UTC) as a local time of ``zone``, in UTC, as
    :mod:`features.timezones` reads it: a time skipped by the clocks going forward takes the offset
    before the change (Spark's ``to_utc_timestamp`` does so); a time the clocks repeat is the later of
    the two (Spark takes the earlier: read 3 hours on, where there is one answer, and step back)."""
    from pyspark.sql import functions as F

    later = F.to_utc_timestamp(local + F.expr("INTERVAL 3 HOURS"), zone) - F.expr("INTERVAL 3 HOURS")
    shifted = F.when(F.from_utc_timestamp(later, zone) == local, later).otherwise(F.to_utc_timestamp(local, zone))
    return F.when(local.between(F.lit(SHIFTED_FROM).cast("timestamp"), F.lit(SHIFTED_UNTIL).cast("timestamp")),
                  shifted).otherwise(local)


def _spark_literal(text: str) -> str:
    """``text`` as a Spark SQL string literal (Spark's parser reads backslash escapes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _flagged(frame: DataFrame, spec: TableSpec, moment: datetime, zone: str | None) -> tuple[DataFrame, list[str]]:
    """``frame`` (with row ids) as the rows the rules read: the input columns as ``_raw<i>``, the typed
    contract columns, ``<name>__given`` and ``<name>__bad`` flags, and :data:`ROW_REASON`, the first row
    rule the row breaks (NULL: none), as :func:`features.validate.validate_raw` builds them. Also the
    input's column names, in the order of ``_raw<i>``."""
    from pyspark.sql import functions as F

    found = [f.name for f in frame.schema.fields if f.name not in (ROW_FILE, ROW_INDEX)]
    types = {f.name: f.dataType.simpleString() for f in frame.schema.fields}
    raw = {name: F.col(f"`{name}`") for name in found}
    parsed = [c for c in spec.columns if c.name in found and c.sql_type != "VARCHAR"]
    cols = [F.col(ROW_FILE), F.col(ROW_INDEX)]
    cols += [raw[name].alias(f"_raw{i}") for i, name in enumerate(found)]
    cols += [(_typed(c, c.name, types[c.name], zone) if c.name in found else
              F.lit(None).cast(_SPARK_TYPES[c.sql_type].lower())).alias(c.name) for c in spec.columns]
    cols += [(F.nullif(F.trim(raw[c.name]), F.lit("")).isNotNull() if types[c.name] == "string"
              else raw[c.name].isNotNull()).alias(f"{c.name}__given") for c in parsed]
    typed = frame.select(*cols)
    flags = [(F.col(f"{c.name}__given") & F.col(c.name).isNull()).alias(f"{c.name}__bad") for c in parsed]
    flags += [F.lit(False).alias(f"{c.name}__bad") for c in spec.columns if c not in parsed]
    flagged = typed.select("*", *flags)
    case = " ".join(f"WHEN {failing} THEN {_spark_literal(reason)}" for failing, reason in rule_checks(spec, moment))
    return flagged.withColumn(ROW_REASON, F.expr(f"CASE {case} END")), found


def _validate(spark: SparkSession, table: Table, frame: DataFrame, source: str, target: str, moment: datetime,
              tombstones: Tombstones | None, zone: str | None) -> tuple[DataFrame, TableReport]:
    """The clean rows of ``frame`` in contract types, persisted and computed already, and the report
    of its validation; the rejected rows (the input as text, with ``source_file``, ``source_row`` and
    ``reason``) written to ``target``.

    The rules are :mod:`features.schema`'s, in :func:`features.validate.validate_raw`'s order: row
    rules, exact duplicates, group rules, then repeats of the unique key. One pass reads the input
    (kept on the executors while the rules run) and decides every row (:func:`_decide`); nothing is
    collected but counts."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    spec = SPECS[table]
    found = [f.name for f in frame.schema.fields]
    if missing := [c.name for c in spec.columns if c.required and c.name not in found]:
        raise InputError(f"spark.tables.{table.value} has no column {', '.join(missing)} (columns: "
                         f"{', '.join(found) or 'none'}); the contract's {table.value} needs "
                         f"{', '.join(c.name for c in spec.columns if c.required)} (docs/data-contract.md).")
    frame = _row_ids(frame)
    if tombstones is not None and len(tombstones) and CUSTOMER_ID in found:
        if any(c not in "0123456789abcdef" for c in tombstones.salt):
            raise InputError("the tombstones' salt must be a hex string")
        digests = spark.createDataFrame([(d,) for d in sorted(tombstones.digests)], "digest STRING")
        digest = F.sha2(F.concat(F.lit(f"{tombstones.salt}:"), F.trim(F.col(CUSTOMER_ID).cast("string"))), 256)
        frame = frame.join(F.broadcast(digests), digest == digests["digest"], "left_anti").drop("digest")
    partitions = frame.rdd.getNumPartitions()  # the source's splits, planned without a job
    flagged, found = _flagged(frame, spec, moment, zone)
    flagged = flagged.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return _decide(spark, spec, flagged, found, source, target, partitions)
    finally:
        flagged.unpersist()


def _decide(spark: SparkSession, spec: TableSpec, flagged: DataFrame, found: list[str], source: str,
            target: str, partitions: int) -> tuple[DataFrame, TableReport]:
    """Check the column types of ``flagged`` (a ContractError when most values of one do not parse),
    decide each of its rows (clean, or rejected with a reason), write the rejected rows to ``target``,
    count them, and return the clean rows in contract types with the report.

    The decided rows are persisted while the rejects are counted and written and the clean rows taken
    from them, so the rules run once. The clean rows are persisted too (``MEMORY_AND_DISK``, filled by
    their count) and the views read them: Spark's cached columnar batches keep column pruning for the
    many reads of the feature query, spill to the executors' disks rather than drop, and never read the
    source or re-run the rules again. Only a lost executor recomputes its blocks from the lineage: this
    whole pass (clean and rejected rows decided together, never matched against the written rejects),
    on the source as it is then. Chosen over ``localCheckpoint`` (row-based: no column pruning; a lost
    executor fails the query) and over Parquet staged beside the rejects (a second copy of the lake
    written and kept on the shared file system, and a lifetime to manage there). The clean rows keep
    the source's number of ``partitions``: out of the rules' shuffles they would have
    ``spark.sql.shuffle.partitions`` small ones, and every later scan would pay a task for each."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    parsed = [c for c in spec.columns if c.name in found and c.sql_type != "VARCHAR"]
    first = f"struct({ROW_FILE}, {ROW_INDEX})"
    counts = [F.count(F.lit(1)).alias("read")]
    for c in parsed:
        counts += [F.count_if(F.col(f"{c.name}__given")).alias(f"{c.name}__given"),
                   F.count_if(F.col(f"{c.name}__bad")).alias(f"{c.name}__bad"),
                   F.expr(f"min_by(CAST(_raw{found.index(c.name)} AS STRING), {first}) "
                          f"FILTER (WHERE `{c.name}__bad`)").alias(f"{c.name}__example")]
    row = flagged.agg(*counts).collect()[0]
    for c in parsed:
        if is_type_error(row[f"{c.name}__given"], row[f"{c.name}__bad"]):
            raise type_error(source, c.name, c, row[f"{c.name}__given"], row[f"{c.name}__bad"],
                             row[f"{c.name}__example"])

    reason = F.col(ROW_REASON)
    parts = [flagged.where(reason.isNotNull())]
    remaining = flagged.where(reason.isNull())
    same_row = spec.column_names + [f"_raw{i}" for i, name in enumerate(found) if name not in spec.column_names]
    ranked = remaining.withColumn("_n", F.row_number().over(Window.partitionBy(*same_row).orderBy(ROW_FILE, ROW_INDEX)))
    parts.append(ranked.where("_n > 1").drop("_n").withColumn(ROW_REASON, F.lit(DUPLICATE_REASON)))
    remaining = ranked.where("_n = 1").drop("_n")
    for group in spec.group_rules:  # every row of a key whose rows disagree
        keys = [k.strip() for k in group.key.split(",")]
        conflicting = remaining.groupBy(*keys).agg(F.expr(group.disagree_sql).alias("_d")).where("_d").drop("_d")
        parts.append(remaining.join(conflicting, keys, "left_semi").withColumn(ROW_REASON, F.lit(group.reason)))
        remaining = remaining.join(conflicting, keys, "left_anti")
    if spec.unique_key:
        first_row = F.min(F.struct(ROW_FILE, ROW_INDEX)).over(Window.partitionBy(spec.unique_key))
        ranked = remaining.withColumn("_first", first_row)
        repeated = ranked.where(F.struct(ROW_FILE, ROW_INDEX) != F.col("_first"))
        in_file = F.when(~F.col("_first")[ROW_FILE].eqNullSafe(F.col(ROW_FILE)),  # another file: name it
                         F.concat(F.lit(" of "), F.col("_first")[ROW_FILE])).otherwise(F.lit(""))
        shown = F.concat(F.lit(f"duplicate {spec.unique_key} (first in row "),
                         (F.col("_first")[ROW_INDEX] + 1).cast("string"), in_file, F.lit(")"))
        parts.append(repeated.withColumn(ROW_REASON, shown).drop("_first"))
        remaining = ranked.where(F.struct(ROW_FILE, ROW_INDEX) == F.col("_first")).drop("_first")
    decided = parts[0]
    for part in [*parts[1:], remaining]:
        decided = decided.unionByName(part)
    decided = decided.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        rejected = decided.where(reason.isNotNull())
        by_reason = rejected.groupBy(ROW_REASON).count()  # fills the decided rows
        total = by_reason.agg(F.sum("count")).collect()[0][0] or 0
        reasons = {r[ROW_REASON]: r["count"] for r in by_reason.orderBy(F.desc("count"), ROW_REASON)
                   .limit(REASONS_KEPT).collect()}
        _write_replacing(rejected.select(F.col(ROW_FILE).alias(SOURCE_FILE), (F.col(ROW_INDEX) + 1).alias(SOURCE_ROW),
                                         F.col(ROW_REASON).alias(REJECT_REASON),
                                         *[F.col(f"_raw{i}").cast("string").alias(name)
                                           for i, name in enumerate(found)]), target)
        if not total:  # as DuckDB's validation: a table without rejects writes nothing
            _delete(spark, target)
        clean = (decided.where(reason.isNull()).select(*spec.column_names).coalesce(max(1, partitions))
                 .persist(StorageLevel.MEMORY_AND_DISK))
        loaded = clean.count()  # fills the clean rows, before the decided ones are released
    finally:
        decided.unpersist()
    return clean, TableReport(spec.table.value, source, row["read"], loaded, total, reasons)


def _hadoop(spark: SparkSession, location: str) -> tuple[Any, Any]:
    """The Hadoop file system holding ``location``, and its path there."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(location)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def _delete(spark: SparkSession, location: str) -> None:
    fs, path = _hadoop(spark, location)
    fs.delete(path, True)


def _write_replacing(frame: DataFrame, target: str) -> None:
    """Write ``frame`` as Parquet files in folder ``target``, replacing a folder Spark wrote there
    before: Spark writes ``<target>.writing`` (its ``_SUCCESS`` last), renamed to ``target`` once
    complete, so a crash never leaves a half folder under ``target``'s name. A ``target`` Spark did not
    write (no ``_SUCCESS``) is an InputError."""
    spark = frame.sparkSession
    fs, path = _hadoop(spark, target)
    staging = _hadoop(spark, f"{target}.writing")[1]
    if fs.exists(path) and not fs.exists(_hadoop(spark, f"{target}/_SUCCESS")[1]):
        raise InputError(f"cannot write rejects to {target}: it exists and is not a folder of rejects Spark wrote "
                         "(no _SUCCESS file in it). Choose another rejects folder (--rejects DIR) or remove it.")
    fs.delete(staging, True)
    frame.write.mode("error").parquet(f"{target}.writing")
    fs.delete(path, True)
    if not fs.rename(staging, path):
        raise OSError(f"could not move {target}.writing to {target}")


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
