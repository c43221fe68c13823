"""Which engine a command computes with (``--engine``, the project's ``engine``), and its tables.

DuckDB, the default, validates the project's data directory and computes in this process. Spark
(``engine: spark``) reads the tables named in the project's ``spark.tables`` (Parquet paths or catalog
tables, validated row by row as DuckDB validates a directory, rejects written by Spark under the rejects
folder, see docs/scale.md), or, when none are named, the validated data directory handed over as
Parquet; either way the directory's tombstones are honoured. A Spark output without a ``.parquet``
suffix is a directory of Parquet files partitioned by as_of, written by Spark and swapped in whole (a
crash leaves the previous directory); a ``.parquet`` file is collected to this process and written as
today.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from features.errors import InputError
from features.io import (
    REJECTS_DIRNAME,
    Encoding,
    ValidationReport,
    read_tombstones,
    refuse_overwriting_inputs,
)
from features.schema import AS_OF
from features.tables import Tables

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from features.spark import SparkTables
    from sendwise.project import SparkSettings


_FOLDED_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/+(.*)$")  # a scheme of two letters or more (not C:)


class EngineName(StrEnum):
    DUCKDB = "duckdb"
    SPARK = "spark"


def open_tables(engine: EngineName, data: Path, rejects: Path | None, spark: SparkSettings | None, *,
                encoding: Encoding | str = Encoding.UTF_8, timezone: str | None = None) -> Tables | SparkTables:
    """The shop's tables in ``engine``: DuckDB's validated ``data``, or Spark's tables (``spark``'s
    ``tables`` when it names any, else ``data`` validated and handed over)."""
    from sendwise.pipeline import load, print_validation

    if engine is EngineName.DUCKDB:
        return load(data, rejects, quiet=True, encoding=encoding, timezone=timezone)
    from features.spark import SparkTables, spark_session

    settings = spark or default_spark()
    if settings.tables and not data.is_dir():
        raise InputError(f"{data}: no such directory. With spark.tables set, the project's data directory holds "
                         "only the tombstones of forgotten customers (`sendwise privacy forget`), which Spark "
                         "must honour: create it (empty is fine) or point `data:` at it.")
    session = spark_session(settings.master, settings.conf)
    if settings.tables:
        folder = rejects or data / REJECTS_DIRNAME  # checked against the inputs where it is written
        tables = SparkTables.from_sources(session, dict(settings.tables), read_tombstones(data), timezone or "UTC",
                                          rfm_ranks=settings.rfm_ranks, rejects=output_location(folder),
                                          data_dir=data)
        if tables.rejected:
            print_validation(ValidationReport(tables.reports, folder))
        return tables
    return SparkTables.from_tables(session, load(data, rejects, quiet=True, encoding=encoding, timezone=timezone),
                                   rfm_ranks=settings.rfm_ranks)


def default_spark() -> SparkSettings:
    """The Spark settings of a project that sets none (or of no project)."""
    from sendwise.project import SparkSettings

    return SparkSettings()


def output_location(out: Path) -> str:
    """``out`` as Spark and Hadoop name it: a URI given on the command line (``s3a://bucket/x``), which
    :class:`~pathlib.Path` folded to ``s3a:/bucket/x``, gets its ``//`` back."""
    match = _FOLDED_URI.match(str(out))
    return f"{match.group(1)}://{match.group(2)}" if match else str(out)


def is_uri(out: Path) -> bool:
    """Whether ``out`` names a location with a scheme (``s3a://``, ``hdfs://``), not a local path."""
    return _FOLDED_URI.match(str(out)) is not None


def local_inputs(spark: SparkSettings | None) -> list[Path]:
    """The local paths of ``spark.tables``, which no command may write over."""
    tables = {} if spark is None else spark.tables
    return [Path(p) for p in tables.values() if not p.startswith("table:") and "://" not in p]


def is_directory_output(out: Path) -> bool:
    """Whether ``out`` names a directory of Parquet files (a path without a suffix) rather than one file."""
    return not out.suffix


def check_output(engine: EngineName, out: Path, files: tuple[str, ...] = (".parquet",),
                 spark: SparkSettings | None = None) -> None:
    """An InputError when ``out`` is neither one of the ``files`` suffixes nor, with Spark, a directory,
    or when it would write over a table Spark reads (``spark.tables``)."""
    if engine is EngineName.SPARK and not is_uri(out):
        refuse_overwriting_inputs(out, inputs=local_inputs(spark))
    if out.suffix in files or (engine is EngineName.SPARK and not out.suffix):
        return
    wanted = " or ".join(files)
    raise InputError(f"--out {out}: with the {engine} engine the output is one {wanted} file"
                     + ("; a directory of Parquet files is written with --engine spark." if engine is EngineName.DUCKDB
                        else ", or a directory (a path without a suffix) of Parquet files written by Spark."))


def write_partitioned(frame: DataFrame, out: Path | str, partition_by: str | None = AS_OF) -> None:
    """Write ``frame`` as Parquet files under ``out``, partitioned by ``partition_by`` (None: not
    partitioned), replacing the directory whole: Spark writes a sibling folder, which is then swapped
    in (through Hadoop's file system, so ``out`` may be any path Spark writes)."""
    jvm = frame.sparkSession.sparkContext._jvm
    hadoop = frame.sparkSession.sparkContext._jsc.hadoopConfiguration()
    out = output_location(out)
    target = jvm.org.apache.hadoop.fs.Path(out)
    fs = target.getFileSystem(hadoop)
    staging = jvm.org.apache.hadoop.fs.Path(f"{out}.writing")
    previous = jvm.org.apache.hadoop.fs.Path(f"{out}.previous")
    if fs.exists(target) and not fs.exists(jvm.org.apache.hadoop.fs.Path(f"{out}/_SUCCESS")):
        raise InputError(f"--out {out} exists and is not a directory Spark wrote (no _SUCCESS file in it); it is "
                         "replaced whole, so choose a new path or remove it yourself.")
    fs.delete(staging, True)
    writer = frame.write.mode("error")
    (writer.partitionBy(partition_by) if partition_by else writer).parquet(str(staging))
    if fs.exists(target):
        fs.delete(previous, True)
        if not fs.rename(target, previous):
            raise OSError(f"could not move {out} aside; the new files are in {out}.writing")
    if not fs.rename(staging, target):
        raise OSError(f"could not move {out}.writing to {out}; the previous files are in {out}.previous")
    fs.delete(previous, True)


__all__ = ["EngineName", "check_output", "default_spark", "is_directory_output", "is_uri", "local_inputs", "open_tables",
           "output_location", "write_partitioned"]
