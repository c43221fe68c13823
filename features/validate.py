"""Check raw tables against the contract: typed clean rows in, every bad row out with a reason.

A wrong or missing column, or a column whose values mostly fail to parse, is a
:class:`ContractError` that names the file, the column, an example value and what was expected.
Individual bad rows are not errors: they land in a ``<table>_rejects`` table with their reason, and
``loaded + rejected == read`` always holds.

An importer validates its source under the contract's column names; it passes ``names`` (contract
column -> its user's column) so that errors and reasons speak of ``InvoiceDate``, not ``ordered_at``.

Timestamps are read by :func:`features.timezones.utc_timestamp_sql`: naive ones as local times of the
shop's ``timezone`` (default UTC), converted to UTC before any rule (a future one too) sees them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb

from features.errors import InputError
from features.schema import (
    DUPLICATE_REASON,
    NOW,
    REJECT_REASON,
    SOURCE_ROW,
    Column,
    TableSpec,
    sql_literal,
)
from features.tables import canonical_select
from features.timezones import check_timezone, utc_timestamp_sql

ROW_ID = "_row"  # 1-based position of the row in its source, added by the reader
# A column is the wrong type (an error) rather than holding a few bad rows (rejects) when at least
# this share of its non-empty values fail to parse.
TYPE_ERROR_SHARE = 0.5


class ContractError(InputError):
    """The input does not follow the data contract (a file, column or type is wrong)."""


@dataclass
class TableReport:
    table: str
    source: str
    read: int
    loaded: int
    rejected: int
    reasons: dict[str, int] = field(default_factory=dict)


def _typed_expr(col: Column, source_type: str, timezone: str | None = None) -> str:
    """Cast the input column to the contract type; NULL where it does not parse. Naive timestamps
    are local times in ``timezone`` (None: UTC)."""
    raw = f'"{col.name}"'
    if col.sql_type == "VARCHAR":
        return f"NULLIF(trim(CAST({raw} AS VARCHAR)), '')"
    if col.sql_type == "TIMESTAMP":
        return utc_timestamp_sql(raw, source_type, timezone)
    if col.sql_type == source_type:
        return f"(CASE WHEN isfinite({raw}) THEN {raw} END)" if source_type == "DOUBLE" else raw
    if col.sql_type == "DOUBLE":
        return f"(CASE WHEN isfinite(TRY_CAST({raw} AS DOUBLE)) THEN TRY_CAST({raw} AS DOUBLE) END)"
    if col.sql_type == "BOOLEAN":
        return f"TRY_CAST(lower(trim(CAST({raw} AS VARCHAR))) AS BOOLEAN)"
    raise AssertionError(col.sql_type)


def _present_expr(col: Column, source_type: str) -> str:
    """True where the input holds a value (not NULL, not blank text)."""
    if source_type == "VARCHAR":
        return f"NULLIF(trim(\"{col.name}\"), '') IS NOT NULL"
    return f"\"{col.name}\" IS NOT NULL"


def _renamer(names: Mapping[str, str] | None):
    """A function that rewrites contract column names in a message as the user's names."""
    if not names:
        return lambda text: text
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + r")\b")
    return lambda text: pattern.sub(lambda m: names[m.group(1)], text)


def now_utc() -> datetime:
    """The moment rows are checked against: later timestamps are in the future (naive UTC, whole seconds)."""
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def check_columns(spec: TableSpec, found: list[str], source: str) -> None:
    """Raise a ContractError naming the first required column that ``found`` lacks."""
    for col in spec.columns:
        if col.required and col.name not in found:
            close = difflib.get_close_matches(col.name, found, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ContractError(
                f"{source}: missing required column '{col.name}' ({col.expected}). "
                f"Columns found: {', '.join(found)}.{hint}"
            )


def is_type_error(total: int, failed: int) -> bool:
    """Whether ``failed`` unparseable values of ``total`` given make the column the wrong type (an
    error) rather than a column with a few bad rows (rejects)."""
    return bool(failed) and failed >= TYPE_ERROR_SHARE * total


def type_error(source: str, shown: str, col: Column, total: int, failed: int, example: object) -> ContractError:
    """The error for column ``col`` (named ``shown`` to the user) whose values mostly do not parse."""
    return ContractError(
        f"{source}: column '{shown}' should hold {col.expected}, but {failed:,} of "
        f"{total:,} values are not, for example {example!r}."
    )


def rule_checks(spec: TableSpec, moment: datetime, rename=lambda text: text) -> list[tuple[str, str]]:
    """``spec``'s row rules as (failing SQL, reason), in order, with :data:`NOW` replaced by ``moment``:
    portable SQL (DuckDB and Spark) over the typed columns and their ``<name>__bad`` flags."""
    return [(r.failing_sql.replace(NOW, moment.isoformat(" ")),
             rename(r.reason.replace(NOW, f"{moment:%Y-%m-%dT%H:%M:%S}Z"))) for r in spec.rules]


def _check_types(con: duckdb.DuckDBPyConnection, typed: str, raw: str, source: str,
                 parsed: list[Column], rename=lambda text: text) -> None:
    for col in parsed:
        total, failed = con.execute(
            f"SELECT count(*) FILTER (WHERE {col.name}__given), count(*) FILTER (WHERE {col.name}__bad) "
            f"FROM {typed}"
        ).fetchall()[0]
        if is_type_error(total, failed):
            example = con.execute(
                f"""SELECT CAST(r."{col.name}" AS VARCHAR) FROM {raw} r
                    SEMI JOIN (SELECT {ROW_ID} FROM {typed} WHERE {col.name}__bad LIMIT 1) b
                    ON r.{ROW_ID} = b.{ROW_ID}"""
            ).fetchall()[0][0]
            raise type_error(source, rename(col.name), col, total, failed, example)


def validate_raw(
    con: duckdb.DuckDBPyConnection, spec: TableSpec, raw: str, source: str,
    names: Mapping[str, str] | None = None, now: datetime | None = None, timezone: str | None = None,
) -> TableReport:
    """Validate relation ``raw`` (with a ``_row`` column) into tables ``<t>`` and ``<t>_rejects``.

    ``<t>`` holds the clean rows in canonical types; ``<t>_rejects`` holds the rejected rows as
    text, with ``source_row`` and ``reason``. ``names`` maps contract columns to the names the user
    knows them by, for messages and reasons. Naive timestamps are local times in ``timezone`` (an
    IANA name; None: UTC), converted to UTC; timestamps after ``now`` (default: now, UTC) are rejected.
    """
    zone = check_timezone(timezone)
    rename = _renamer(names)
    moment = (now or now_utc()).replace(tzinfo=None)
    name = spec.table.value
    rel = con.table(raw)
    source_types = {c: str(t) for c, t in zip(rel.columns, rel.types, strict=True) if c != ROW_ID}
    found = list(source_types)
    check_columns(spec, found, source)
    present = [c for c in spec.columns if c.name in found]
    absent = [c for c in spec.columns if c.name not in found]
    extras = [c for c in found if c not in spec.column_names]
    parsed = [c for c in present if c.sql_type != "VARCHAR"]

    typed = f"_typed_{name}"  # holds the clean rows at the end, behind view ``name``
    select = [ROW_ID]
    select += [f"{_typed_expr(c, source_types[c.name], zone)} AS {c.name}" for c in present]
    select += [f"CAST(NULL AS {c.sql_type}) AS {c.name}" for c in absent]
    select += [f"{_present_expr(c, source_types[c.name])} AS {c.name}__given" for c in parsed]
    select += [f'"{c}"' for c in extras]
    con.execute(f"CREATE OR REPLACE TEMP TABLE {typed} AS SELECT {', '.join(select)} FROM {raw}")
    bad_flags = [f"{c.name}__given AND {c.name} IS NULL AS {c.name}__bad" for c in parsed]
    bad_flags += [f"false AS {c.name}__bad" for c in spec.columns if c not in parsed]
    con.execute(f"CREATE OR REPLACE TEMP VIEW {typed}_flags AS SELECT *, {', '.join(bad_flags)} FROM {typed}")
    _check_types(con, f"{typed}_flags", raw, source, parsed, rename)

    rule_case = " ".join(f"WHEN {failing} THEN {sql_literal(reason)}"
                         for failing, reason in rule_checks(spec, moment, rename))
    rejected = f"_rejected_{name}"
    # Rows breaking a rule, then exact duplicates (every column equal) of an earlier passing row.
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {rejected} AS
            SELECT {ROW_ID}, CASE {rule_case} END AS {REJECT_REASON} FROM {typed}_flags
            WHERE CASE {rule_case} END IS NOT NULL"""
    )
    # Exact duplicates: group a 64-bit hash of each passing row first (cheap), then compare the
    # columns themselves only for rows whose hash repeats.
    cols = spec.column_names + [f'"{e}"' for e in extras]
    con.execute(
        f"""INSERT INTO {rejected}
            WITH passing AS (SELECT * FROM {typed} ANTI JOIN {rejected} USING ({ROW_ID})),
            hashed AS (SELECT {ROW_ID}, hash({", ".join(cols)}) AS h FROM passing),
            repeated AS (SELECT h FROM hashed GROUP BY h HAVING count(*) > 1),
            candidates AS (SELECT p.* FROM passing p SEMI JOIN (
                             SELECT {ROW_ID} FROM hashed SEMI JOIN repeated USING (h)) c USING ({ROW_ID})),
            ranked AS (SELECT {ROW_ID}, row_number() OVER (PARTITION BY {", ".join(cols)} ORDER BY {ROW_ID}) AS n
                       FROM candidates)
            SELECT {ROW_ID}, '{DUPLICATE_REASON}' FROM ranked WHERE n > 1"""
    )
    for group in spec.group_rules:  # every row of a key whose rows disagree
        con.execute(
            f"""INSERT INTO {rejected}
                WITH passing AS (SELECT * FROM {typed} ANTI JOIN {rejected} USING ({ROW_ID})),
                conflicting AS (SELECT {group.key} FROM passing GROUP BY {group.key} HAVING {group.disagree_sql})
                SELECT {ROW_ID}, {sql_literal(rename(group.reason))} FROM passing SEMI JOIN conflicting USING ({group.key})"""
        )
    if spec.unique_key:
        key = spec.unique_key
        con.execute(
            f"""INSERT INTO {rejected}
                SELECT {ROW_ID}, {sql_literal(f"duplicate {rename(key)} (first in row ")} || first_row || ')' FROM (
                  SELECT {ROW_ID}, min({ROW_ID}) OVER (PARTITION BY {key}) AS first_row
                  FROM {typed} ANTI JOIN {rejected} USING ({ROW_ID}))
                WHERE {ROW_ID} <> first_row"""
        )

    # The clean table is a view over the typed rows, rejected rows deleted: no second copy.
    con.execute(f"DELETE FROM {typed} WHERE {ROW_ID} IN (SELECT {ROW_ID} FROM {rejected})")
    con.execute(f"DROP TABLE IF EXISTS {name}")
    con.execute(f"DROP VIEW IF EXISTS {name}")
    con.execute(
        f"CREATE TEMP VIEW {name} AS "
        + canonical_select(spec, typed, set(spec.column_names) | set(extras))
    )
    raw_cols = [f'CAST(r."{c}" AS VARCHAR) AS "{c}"' for c in found]
    con.execute(
        f"""CREATE OR REPLACE TABLE {name}_rejects AS
            SELECT j.{ROW_ID} AS {SOURCE_ROW}, j.{REJECT_REASON}, {', '.join(raw_cols)}
            FROM {rejected} j JOIN {raw} r ON j.{ROW_ID} = r.{ROW_ID} ORDER BY j.{ROW_ID}"""
    )
    read = con.execute(f"SELECT count(*) FROM {raw}").fetchall()[0][0]
    loaded = con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
    reasons = dict(
        con.execute(
            f"SELECT {REJECT_REASON}, count(*) FROM {rejected} GROUP BY 1 ORDER BY 2 DESC, 1"
        ).fetchall()
    )
    con.execute(f"DROP VIEW {typed}_flags; DROP TABLE {rejected}")
    rejected_count = sum(reasons.values())
    assert loaded + rejected_count == read, f"{source}: {loaded} + {rejected_count} != {read}"
    return TableReport(name, source, read, loaded, rejected_count, reasons)
