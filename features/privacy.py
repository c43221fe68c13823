"""A customer's rows in the tabular files the project reads and writes (contract tables, rejects,
snapshots, training sets, score and recommendation outputs): find them (``privacy export``) and
remove them (``privacy forget``).

A file's customer column is ``customer_id``, or the importers' source column in their rejects
(``CustomerID``, ``userId``). Ids are compared as trimmed text, as the contract reads them.
Files are rewritten atomically in their own format (CSV stays text, parquet keeps its metadata).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.importers import movielens, uci_retail
from features.io import SUFFIXES, atomic_write
from features.schema import CUSTOMER_ID

CUSTOMER_COLUMNS = (CUSTOMER_ID, uci_retail.CUSTOMER_COLUMN, movielens.CUSTOMER_COLUMN)


def tabular_files(root: Path | str) -> list[Path]:
    """``root`` itself when it is a file, else every parquet and CSV file below it."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))


def _read(path: Path) -> pa.Table:
    if path.name.endswith(".parquet"):
        return pq.read_table(path)
    # as text, empty cells kept as they are, so that a rewrite changes nothing but the dropped rows
    return pa.Table.from_pandas(pd.read_csv(path, dtype=str, keep_default_na=False), preserve_index=False)


def _matches(table: pa.Table, customer_ids: Collection[str]) -> pa.ChunkedArray | None:
    column = next((c for c in CUSTOMER_COLUMNS if c in table.column_names), None)
    if column is None:
        return None
    text = pc.utf8_trim_whitespace(pc.cast(table[column], pa.string()))
    return pc.fill_null(pc.is_in(text, value_set=pa.array(sorted(customer_ids), pa.string())), False)


def customer_rows(path: Path | str, customer_ids: Collection[str]) -> pd.DataFrame | None:
    """The rows of ``path`` that belong to ``customer_ids`` (None: the file has no customer column)."""
    table = _read(Path(path))
    mask = _matches(table, customer_ids)
    return None if mask is None else table.filter(mask).to_pandas()


def drop_customer_rows(path: Path | str, customer_ids: Collection[str]) -> int:
    """Rewrite ``path`` without the rows of ``customer_ids``; returns how many rows went."""
    path = Path(path)
    table = _read(path)
    mask = _matches(table, customer_ids)
    n = 0 if mask is None else pc.sum(mask).as_py() or 0
    if not n:
        return 0
    kept = table.filter(pc.invert(mask))
    if path.name.endswith(".parquet"):
        atomic_write(path, lambda tmp: pq.write_table(kept, tmp, compression="zstd"))
    else:
        compression = "gzip" if path.name.endswith(".gz") else None
        atomic_write(path, lambda tmp: kept.to_pandas().to_csv(tmp, index=False, compression=compression))
    return n
