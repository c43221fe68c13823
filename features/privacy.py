"""A customer's rows in the tabular files the project reads and writes (contract tables, rejects,
snapshots, training sets, score and recommendation outputs): find them (``privacy export``) and
remove them (``privacy forget``).

A file's customer column is ``customer_id``, or the importers' source column in their rejects
(``CustomerID``, ``userId``). Ids are compared as trimmed text, as the contract reads them. A CSV is
read as the loader reads it, whatever its delimiter and quoting (:mod:`features.csv_dialect`), and
loses only the bytes of the removed records; parquet is rewritten with its metadata. Every rewrite
is atomic, keeps the file's permissions and, for a symlink, rewrites the file it points to.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.csv_dialect import CsvFile
from features.errors import InputError
from features.importers import movielens, uci_retail
from features.io import SUFFIXES, Encoding, atomic_write
from features.schema import CUSTOMER_ID

CUSTOMER_COLUMNS = (CUSTOMER_ID, uci_retail.CUSTOMER_COLUMN, movielens.CUSTOMER_COLUMN)


def files_below(root: Path | str) -> list[Path]:
    """Every file below ``root``, following symlinked folders (each folder once: a link to an
    ancestor does not loop) and listing each real file once, under the first path found."""
    root = Path(root)
    seen_dirs, seen_files, found = set(), set(), []
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            target = os.path.realpath(path)
            if path.is_file() and target not in seen_files:
                seen_files.add(target)
                found.append(path)
    return sorted(found)


def tabular_files(root: Path | str) -> list[Path]:
    """``root`` itself when it is a file, else every parquet and CSV file below it."""
    root = Path(root)
    if root.is_file():
        return [root]
    return [p for p in files_below(root) if p.name.endswith(SUFFIXES)]


def _read(path: Path, encoding: Encoding | str) -> tuple[pa.Table, CsvFile | None]:
    if path.name.endswith(".parquet"):
        return pq.read_table(path), None
    csv_file = CsvFile(path, encoding)
    return csv_file.read(), csv_file  # as text, as the loader reads it


def _customer_column(table: pa.Table, path: Path) -> str | None:
    """The column holding customer ids; None for a file without one. A file whose columns only
    mention one (``customer_id,score`` read as one column: a broken line made DuckDB's sniffer give
    up the delimiter) is an error, not a file without customers."""
    column = next((c for c in CUSTOMER_COLUMNS if c in table.column_names), None)
    if column is None:
        mention = next((c for c in table.column_names if any(n.lower() in c.lower() for n in CUSTOMER_COLUMNS)), None)
        if mention is not None:
            raise InputError(f"{path}: no column is named {' or '.join(CUSTOMER_COLUMNS)}, but {mention!r} mentions "
                             f"one (read as the columns {table.column_names[:5]}): a broken line or an unusual "
                             "header. Fix the file and run the command again.")
    return column


def _trimmed(table: pa.Table, column: str) -> pa.ChunkedArray:
    return pc.utf8_trim_whitespace(pc.cast(table[column], pa.string()))


def _matches(table: pa.Table, column: str, customer_ids: Collection[str]) -> pa.ChunkedArray:
    value_set = pa.array(sorted(customer_ids), pa.string())
    return pc.fill_null(pc.is_in(_trimmed(table, column), value_set=value_set), False)


def customer_rows(path: Path | str, customer_ids: Collection[str],
                  encoding: Encoding | str = Encoding.UTF_8) -> pd.DataFrame | None:
    """The rows of ``path`` that belong to ``customer_ids`` (None: the file has no customer column).
    A CSV that is not UTF-8 is read in ``encoding``."""
    table, _ = _read(Path(path), encoding)
    column = _customer_column(table, Path(path))
    return None if column is None else table.filter(_matches(table, column, customer_ids)).to_pandas()


def drop_customer_rows(path: Path | str, customer_ids: Collection[str],
                       encoding: Encoding | str = Encoding.UTF_8) -> Counter[str]:
    """Rewrite ``path`` without the rows of ``customer_ids``; returns the rows removed per customer id
    (empty: none, the file is left untouched). A CSV that is not UTF-8 is read in ``encoding``."""
    path = Path(path)
    table, csv_file = _read(path, encoding)
    column = _customer_column(table, path)
    if column is None:
        return Counter()
    mask = _matches(table, column, customer_ids)
    removed = Counter(_trimmed(table.filter(mask), column).to_pylist())
    if not removed:
        return removed
    if csv_file is None:
        kept = table.filter(pc.invert(mask))
        atomic_write(path, lambda tmp: pq.write_table(kept, tmp, compression="zstd"))
    else:
        csv_file.cut(table, column, mask.to_pylist())
    return removed
