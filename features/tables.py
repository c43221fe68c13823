"""Validated contract tables held in one DuckDB connection, in canonical column types."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd

from features.schema import OCCURRED_AT, ORDERED_AT, SPECS, Table, TableSpec

DEFAULT_MEMORY_LIMIT = "4GB"
FINGERPRINT_BATCH = 1_000_000  # row digests handed from DuckDB to hashlib at a time


def new_connection() -> duckdb.DuckDBPyConnection:
    """A private in-memory DuckDB connection that reads naive timestamps as UTC.

    Memory is capped at ``SENDWISE_DUCKDB_MEMORY_LIMIT`` (default 4GB); larger work spills to a
    temporary directory instead of growing.
    """
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{os.environ.get('SENDWISE_DUCKDB_MEMORY_LIMIT', DEFAULT_MEMORY_LIMIT)}'")
    spill = Path(tempfile.gettempdir()) / "sendwise-duckdb"
    con.execute(f"SET temp_directory = '{spill}'")
    return con


def canonical_select(spec: TableSpec, source: str, present: set[str]) -> str:
    """SQL that casts ``source``'s contract columns to canonical types, NULL for absent ones."""
    parts = []
    for col in spec.columns:
        if col.name not in present:
            parts.append(f"CAST(NULL AS {col.sql_type}) AS {col.name}")
        elif col.sql_type == "TIMESTAMP":
            parts.append(f"CAST(CAST({col.name} AS TIMESTAMPTZ) AS TIMESTAMP) AS {col.name}")
        else:
            parts.append(f"CAST({col.name} AS {col.sql_type}) AS {col.name}")
    extras = [f'"{c}"' for c in present if c not in spec.column_names]
    return f"SELECT {', '.join(parts + extras)} FROM {source}"


def create_empty(con: duckdb.DuckDBPyConnection, spec: TableSpec) -> None:
    """Create ``spec``'s table with no rows, for a table the user did not supply."""
    cols = ", ".join(f"CAST(NULL AS {c.sql_type}) AS {c.name}" for c in spec.columns)
    con.execute(f"CREATE TABLE {spec.table.value} AS SELECT {cols} LIMIT 0")


def _value_text(name: str, sql_type: str) -> str:
    """SQL for one value as text that does not depend on how DuckDB prints its type: shortest
    exact forms for numbers (17 significant digits for doubles), microseconds since the epoch for
    timestamps."""
    col, kind = f'"{name}"', sql_type.upper()
    if kind == "BOOLEAN":
        return f"CASE WHEN {col} THEN 'true' ELSE 'false' END"
    if kind in ("DOUBLE", "FLOAT", "REAL"):
        return f"printf('%.17g', CAST({col} AS DOUBLE))"
    if kind.startswith("TIMESTAMP"):
        return f"CAST(epoch_us({col}) AS VARCHAR)"
    if kind == "VARCHAR":
        return col
    return f"CAST({col} AS VARCHAR)"


def row_text_sql(columns: list[tuple[str, str]]) -> str:
    """SQL for one row as unambiguous text: each ``(name, type)`` column as ``N`` when NULL, else
    the byte length of its text, ``:`` and the text (so no value can pass for two)."""
    fields = [f"CASE WHEN \"{name}\" IS NULL THEN 'N' ELSE CAST(strlen({_value_text(name, kind)}) AS VARCHAR) "
              f"|| ':' || {_value_text(name, kind)} END" for name, kind, *_ in columns]
    return " || ".join(fields) if fields else "''"


class Tables:
    """The contract tables (``orders``, ``customers``, ``events``, ``products``, ``customer_changes``).

    Every table exists in ``con``; a table the user did not supply is empty. Build one with
    :func:`features.io.load_data_dir` (validates files) or :meth:`from_frames` (trusted frames,
    used by tests and generators).
    """

    engine = "duckdb"  # the feature engine computing on these tables (features.spark.SparkTables: "spark")

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        present = {name for (name,) in con.execute(
            "SELECT table_name FROM duckdb_tables() UNION ALL SELECT view_name FROM duckdb_views()").fetchall()}
        for table in Table:  # a table the contract gained later, which an older writer does not create
            if table.value not in present:
                create_empty(con, SPECS[table])

    @classmethod
    def from_frames(
        cls,
        orders: pd.DataFrame,
        customers: pd.DataFrame | None = None,
        events: pd.DataFrame | None = None,
        products: pd.DataFrame | None = None,
        customer_changes: pd.DataFrame | None = None,
    ) -> Tables:
        """Load already-clean frames, casting them to the canonical types."""
        con = new_connection()
        frames: Mapping[Table, pd.DataFrame | None] = {
            Table.ORDERS: orders,
            Table.CUSTOMERS: customers,
            Table.EVENTS: events,
            Table.PRODUCTS: products,
            Table.CUSTOMER_CHANGES: customer_changes,
        }
        for table, frame in frames.items():
            spec = SPECS[table]
            if frame is None:
                create_empty(con, spec)
                continue
            con.register(f"_frame_{table.value}", frame)
            sql = canonical_select(spec, f"_frame_{table.value}", set(map(str, frame.columns)))
            con.execute(f"CREATE TABLE {table.value} AS {sql}")
            con.unregister(f"_frame_{table.value}")
        return cls(con)

    def before(self, cutoff: datetime) -> Tables:
        """A copy holding only rows strictly before ``cutoff`` by their table's time column (customers:
        signed up before it or without a signup date; products are kept whole)."""
        con = new_connection()
        for table in Table:
            sql = f"SELECT * FROM {table.value}"
            col = SPECS[table].time_column
            if col:
                sql += f" WHERE {col} < $cutoff" + (f" OR {col} IS NULL" if table is Table.CUSTOMERS else "")
            params = {"cutoff": cutoff} if col else {}
            con.register(f"_{table.value}", self.con.sql(sql, params=params).to_arrow_table())
            con.execute(f"CREATE TABLE {table.value} AS SELECT * FROM _{table.value}")
            con.unregister(f"_{table.value}")
        return Tables(con)

    def fingerprint(self) -> str:
        """A short hash of every table's content, to tell which data a model was trained on.

        SHA-256 over, table by table in a fixed order, the table's name, row count and column
        names, then the SHA-256 of each row's text (:func:`row_text_sql`) in sorted order: the
        same rows in any order (and columns in any order) give the same fingerprint, any changed,
        added or removed row (a duplicate too) another. The first 16 hex digits are kept.
        """
        digest = hashlib.sha256()
        for table in Table:
            columns = sorted(self.con.execute(f"DESCRIBE {table.value}").fetchall())  # (name, type, ...)
            n = self.count(table)
            if not n and not SPECS[table].hashed_when_empty:
                continue  # a table the contract gained later: data without it keeps its fingerprint
            digest.update(f"{table.value}:{n}:{','.join(c[0] for c in columns)}\n".encode())
            if not n:
                continue
            rows = self.con.sql(f"SELECT unhex(sha256({row_text_sql(columns)})) AS d FROM {table.value} ORDER BY d")
            for batch in rows.to_arrow_reader(FINGERPRINT_BATCH):
                digest.update(b"".join(batch.column(0).to_pylist()))
        return digest.hexdigest()[:16]

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> pd.DataFrame:
        """The rows of a DuckDB query on these tables."""
        return self.con.execute(sql, dict(params or {})).df()

    def frame(self, table: Table | str) -> pd.DataFrame:
        return self.con.table(Table(table).value).df()

    def count(self, table: Table | str) -> int:
        return self.con.execute(f"SELECT count(*) FROM {Table(table).value}").fetchall()[0][0]

    def time_range(self) -> tuple[datetime | None, datetime | None]:
        """First and last timestamp over orders and events (None, None when both are empty)."""
        return self.con.execute(
            f"""SELECT min(t), max(t) FROM (
                  SELECT {ORDERED_AT} AS t FROM {Table.ORDERS.value}
                  UNION ALL SELECT {OCCURRED_AT} FROM {Table.EVENTS.value})"""
        ).fetchall()[0]
