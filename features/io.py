"""All file input and output of the features package: contract directories, rejects, parquet."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from features.schema import CUSTOMER_ID, SPECS, Table
from features.tables import Tables, create_empty, new_connection
from features.tombstones import Tombstones
from features.validate import ROW_ID, ContractError, TableReport, validate_raw

SUFFIXES = (".parquet", ".csv", ".csv.gz")
REJECTS_DIRNAME = "_rejects"
TOMBSTONES_FILE = Path("_privacy") / "tombstones.json"


@dataclass
class ValidationReport:
    tables: list[TableReport]
    rejects_dir: Path | None
    warnings: list[str] = field(default_factory=list)
    forgotten: dict[str, int] = field(default_factory=dict)  # rows of forgotten customers skipped, per table

    @property
    def rejected(self) -> int:
        return sum(t.rejected for t in self.tables)


def find_table_files(data_dir: Path) -> dict[Table, Path]:
    """The file for each contract table in ``data_dir``; ``orders`` is required."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ContractError(f"{data_dir}: not a directory. Expected a directory of contract tables.")
    found: dict[Table, Path] = {}
    for table in Table:
        matches = [data_dir / f"{table.value}{s}" for s in SUFFIXES if (data_dir / f"{table.value}{s}").exists()]
        if len(matches) > 1:
            raise ContractError(
                f"{data_dir}: both {matches[0].name} and {matches[1].name} exist; keep one file per table."
            )
        if matches:
            found[table] = matches[0]
    if Table.ORDERS not in found:
        raise ContractError(
            f"{data_dir}: no orders table. Expected orders.parquet, orders.csv or orders.csv.gz "
            f"(columns: {', '.join(SPECS[Table.ORDERS].column_names)})."
        )
    return found


def read_raw(con: duckdb.DuckDBPyConnection, path: Path, name: str) -> None:
    """Create view ``name`` over ``path`` with a 1-based ``_row`` column; CSV is read as text."""
    p = str(path).replace("'", "''")
    if path.name.endswith(".parquet"):
        scan = f"read_parquet('{p}', file_row_number = true)"
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW {name} AS "
            f"SELECT * EXCLUDE (file_row_number), file_row_number + 1 AS {ROW_ID} FROM {scan}"
        )
    else:
        scan = f"read_csv('{p}', all_varchar = true, header = true)"
        con.execute(  # materialised, so that row numbers are fixed once
            f"CREATE OR REPLACE TEMP TABLE {name} AS "
            f"SELECT *, row_number() OVER () AS {ROW_ID} FROM {scan}"
        )


def load_data_dir(
    data_dir: Path | str, rejects_dir: Path | str | None = None
) -> tuple[Tables, ValidationReport]:
    """Read and validate a contract directory.

    Rejected rows are written to ``rejects_dir`` (default ``<data_dir>/_rejects``) as
    ``<table>.csv`` with ``source_row`` and ``reason``; tables without rejects write no file.
    Rows of customers with a tombstone in the directory (``sendwise privacy forget``) are skipped
    before validation, counted in ``forgotten`` and written nowhere.
    """
    data_dir = Path(data_dir)
    files = find_table_files(data_dir)
    tombstones = read_tombstones(data_dir)
    con = new_connection()
    reports, forgotten = [], {}
    for table in Table:
        if table in files:
            raw = f"_raw_{table.value}"
            read_raw(con, files[table], raw)
            if tombstones and CUSTOMER_ID in con.table(raw).columns:
                forgotten[table.value] = skip_forgotten(con, raw, tombstones)
            try:
                reports.append(validate_raw(con, SPECS[table], raw, str(files[table])))
            except duckdb.Error as exc:  # e.g. a CSV DuckDB cannot parse at all
                raise ContractError(f"{files[table]}: could not be read as a table: {exc}") from exc
        else:
            create_empty(con, SPECS[table])
    tables = Tables(con)
    written = write_rejects(tables, reports, Path(rejects_dir) if rejects_dir else data_dir / REJECTS_DIRNAME)
    warnings = cross_table_warnings(tables, files)
    if sum(forgotten.values()):
        warnings.append(f"{sum(forgotten.values()):,} row(s) of forgotten customers skipped "
                        f"({data_dir / TOMBSTONES_FILE})")
    return tables, ValidationReport(reports, written, warnings, forgotten)


def skip_forgotten(con: duckdb.DuckDBPyConnection, raw: str, tombstones: Tombstones,
                   column: str = CUSTOMER_ID) -> int:
    """Replace relation ``raw`` by its rows whose ``column`` is not a forgotten customer; returns how
    many rows were left out."""
    condition = tombstones.forgotten_sql(con, column)
    n = con.execute(f"SELECT count(*) FROM {raw} WHERE {condition}").fetchall()[0][0]
    if not n:
        return 0
    is_view = con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [raw]).fetchall()[0][0]
    if is_view:  # a parquet file read in place: keep the rows that stay in a table of that name
        con.execute(f"CREATE TEMP TABLE {raw}_kept AS SELECT * FROM {raw} WHERE NOT ({condition})")
        con.execute(f"DROP VIEW {raw}")
        con.execute(f"ALTER TABLE {raw}_kept RENAME TO {raw}")
    else:
        con.execute(f"DELETE FROM {raw} WHERE {condition}")
    return n


def read_tombstones(data_dir: Path | str) -> Tombstones:
    """The tombstones of ``data_dir`` (empty, with a fresh salt, when there are none)."""
    path = Path(data_dir) / TOMBSTONES_FILE
    if not path.exists():
        return Tombstones()
    try:
        return Tombstones.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError, AttributeError) as exc:
        raise ContractError(f"{path}: not a tombstones file ({exc}). It is written by `sendwise privacy forget`; "
                            "restore it from a backup rather than deleting it, or forgotten customers come back.") from exc


def write_tombstones(data_dir: Path | str, tombstones: Tombstones) -> Path:
    path = Path(data_dir) / TOMBSTONES_FILE
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(tombstones.to_dict(), indent=1)))
    return path


def write_rejects(tables: Tables, reports: list[TableReport], rejects_dir: Path) -> Path | None:
    """Write ``<table>.csv`` for every table with rejects; returns the folder, or None if none."""
    with_rejects = [r for r in reports if r.rejected]
    if not with_rejects:
        return None
    try:
        rejects_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ContractError(f"cannot write rejects to {rejects_dir}: {exc}. Pass --rejects DIR.") from exc
    for report in with_rejects:
        target = rejects_dir / f"{report.table}.csv"
        atomic_write(target, lambda tmp, t=report.table: tables.con.execute(
            f"COPY {t}_rejects TO '{tmp}' (HEADER, DELIMITER ',')").fetchall())
    return rejects_dir


def cross_table_warnings(tables: Tables, files: dict[Table, Path]) -> list[str]:
    """Orders and events that reference customers or products missing from their tables."""
    warnings = []
    checks = [
        (Table.ORDERS, Table.CUSTOMERS, "customer_id"),
        (Table.EVENTS, Table.CUSTOMERS, "customer_id"),
        (Table.ORDERS, Table.PRODUCTS, "product_id"),
        (Table.EVENTS, Table.PRODUCTS, "product_id"),
    ]
    for child, parent, key in checks:
        if child not in files or parent not in files:
            continue
        n = tables.con.execute(
            f"""SELECT count(DISTINCT c.{key}) FROM {child.value} c
                ANTI JOIN {parent.value} p ON c.{key} = p.{key} WHERE c.{key} IS NOT NULL"""
        ).fetchall()[0][0]
        if n:
            warnings.append(f"{n:,} {key} value(s) in {child.value} are not in {parent.value}")
    return warnings


def atomic_write(target: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``target``: a crash leaves the old file intact.

    A symlink is followed: its target is rewritten and the link stays. The file keeps its
    permissions; a new file gets the usual ones (0666 less the umask), not ``mkstemp``'s 0600.
    """
    target = Path(os.path.realpath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else _default_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_parquet(frame: pd.DataFrame, target: Path | str) -> None:
    """Write ``frame`` to parquet atomically."""
    atomic_write(Path(target), lambda tmp: frame.to_parquet(tmp, index=False))


def write_tables(tables: Tables, out_dir: Path | str) -> dict[Table, int]:
    """Write every non-empty table as ``<table>.parquet`` in ``out_dir``; returns row counts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for table in Table:
        n = tables.count(table)
        if n == 0:
            continue
        atomic_write(out_dir / f"{table.value}.parquet", lambda tmp, t=table: tables.con.execute(
            f"COPY {t.value} TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)").fetchall())
        counts[table] = n
    return counts
