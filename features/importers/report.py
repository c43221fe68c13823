"""What an importer reports, how it reads its source and how it writes its output directory."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from features.io import (
    REJECTS_DIRNAME,
    Encoding,
    atomic_write,
    read_raw,
    read_tombstones,
    refuse_mixed_tables,
    refuse_overwriting_inputs,
    skip_forgotten,
    unsafe_link_warnings,
    write_tables,
)
from features.schema import Table, sql_literal
from features.tables import Tables, new_connection
from features.validate import ROW_ID, ContractError

SOURCE_VIEW = "_source"


@dataclass
class ImportReport:
    source: str
    read: int
    loaded: int  # source rows that became contract rows
    rejected: int
    reasons: dict[str, int]
    tables: dict[str, int]  # rows written per contract table
    out_dir: Path
    rejects_file: Path | None
    forgotten: int = 0  # source rows of customers forgotten in out_dir, left out and written nowhere
    timezone: str | None = None  # the zone naive source times were read in (None: UTC)
    warnings: list[str] = field(default_factory=list)  # what was loaded but deserves a look (unsafe links...)


def check_import_paths(src: Path | str, out_dir: Path | str) -> None:
    """Before anything is read or written: ``out_dir`` may not be ``src`` or hold it, nor hold a
    table in another format than the parquet the importer writes."""
    refuse_overwriting_inputs(out_dir, [src])
    refuse_mixed_tables(out_dir, Table)


def open_source(src: Path, columns: Sequence[str], layout: str,
                encoding: Encoding | str = Encoding.UTF_8) -> duckdb.DuckDBPyConnection:
    """A connection with ``src`` read as text into table ``_source`` (plus ``_row``); a missing file,
    a file that is not CSV text in ``encoding``, a missing column or no rows is a ContractError
    naming ``layout`` and the expected columns."""
    con = read_source(src, layout, encoding)
    require_columns(con, src, columns, layout)
    require_rows(con, src, layout)
    return con


def read_source(src: Path, layout: str, encoding: Encoding | str = Encoding.UTF_8) -> duckdb.DuckDBPyConnection:
    """A connection with ``src`` read as text into table ``_source`` (plus ``_row``), unchecked
    beyond what :func:`features.io.read_raw` checks; a missing file is a ContractError."""
    if not src.is_file():
        raise ContractError(f"{src}: no such file. Expected {layout} as CSV (optionally .gz).")
    con = new_connection()
    read_raw(con, src, SOURCE_VIEW, encoding)
    return con


def source_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The columns of ``_source``, in the file's order."""
    return [c for c in con.table(SOURCE_VIEW).columns if c != ROW_ID]


def missing_columns(con: duckdb.DuckDBPyConnection, columns: Iterable[str]) -> list[str]:
    found = source_columns(con)
    return [c for c in columns if c not in found]


def require_columns(con: duckdb.DuckDBPyConnection, src: Path, columns: Sequence[str], layout: str,
                    also: str = "") -> None:
    """A ContractError naming ``layout``, the missing and the expected columns, when ``_source``
    lacks one of ``columns`` (``also``: words appended to the message, e.g. another layout)."""
    missing = missing_columns(con, columns)
    if missing:
        raise ContractError(
            f"{src}: not {layout}; missing column(s) {', '.join(missing)}. Expected: {', '.join(columns)}{also}."
        )


def require_rows(con: duckdb.DuckDBPyConnection, src: Path, layout: str) -> None:
    if not con.execute(f"SELECT count(*) FROM {SOURCE_VIEW}").fetchall()[0][0]:
        raise ContractError(f"{src}: no rows (only a header). Expected {layout} with one row per line.")


def unknown_column_hint(column: str, found: Sequence[str]) -> str:
    """`` Did you mean 'X'?`` for the closest of ``found`` (case aside), or nothing."""
    by_lower = {c.lower(): c for c in found}
    close = difflib.get_close_matches(column.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" Did you mean {by_lower[close[0]]!r}?" if close else ""


def skip_forgotten_source(con: duckdb.DuckDBPyConnection, customer_column: str, out_dir: Path | str,
                          table: str = SOURCE_VIEW) -> int:
    """Leave out the rows of ``table`` (default: the source) whose ``customer_column`` is a customer
    forgotten in ``out_dir`` (its tombstones); returns how many rows went."""
    tombstones = read_tombstones(out_dir)
    return skip_forgotten(con, table, tombstones, customer_column) if tombstones else 0


def write_import(tables: Tables, source: str, rejects_table: str, out_dir: Path | str,
                 read_table: str = SOURCE_VIEW, forgotten: int = 0, timezone: str | None = None,
                 warnings: Iterable[str] = ()) -> ImportReport:
    """Write ``tables`` as parquet, and ``rejects_table`` (original columns plus ``source_row`` and
    ``reason``) as ``_rejects/<source file stem>.csv``.

    ``read_table`` holds one row per source row that was not ``forgotten``, so
    ``read == loaded + rejected + forgotten``. The report's warnings are ``warnings`` and the product
    links no email would show.
    """
    out_dir = Path(out_dir)
    counts = {t.value: n for t, n in write_tables(tables, out_dir).items()}
    con = tables.con
    reasons = dict(con.execute(
        f"SELECT reason, count(*) FROM {rejects_table} GROUP BY 1 ORDER BY 2 DESC, 1").fetchall())
    read = con.execute(f"SELECT count(*) FROM {read_table}").fetchall()[0][0] + forgotten
    rejected = sum(reasons.values())
    rejects_file = None
    if rejected:
        rejects_file = out_dir / REJECTS_DIRNAME / f"{Path(source).name.split('.')[0]}.csv"
        atomic_write(rejects_file, lambda tmp: con.execute(
            f"COPY {rejects_table} TO {sql_literal(tmp)} (HEADER, DELIMITER ',')").fetchall())
    return ImportReport(source, read, read - rejected - forgotten, rejected, reasons, counts, out_dir, rejects_file,
                        forgotten, timezone, [*warnings, *unsafe_link_warnings(tables)])
