"""The time zone of a shop's naive timestamps, and the SQL that turns any timestamp into naive UTC.

The contract stores every timestamp as naive UTC. A shop's export usually holds local times without
a zone (``2024-03-01 10:15``): given the shop's IANA time zone (``Europe/London``), such a time is
read as a local time there and converted to UTC. Without a zone (None, or ``UTC``) it is read as UTC.
A timestamp that says its zone keeps it, whatever the shop's zone: an offset (``+01:00``, ``+0100``,
``+01``, written with or without a space before it, as Shopify writes ``2024-03-01 10:15:00 +0100``),
``Z``, or a zone name DuckDB knows (``2024-03-01 10:15 Europe/Paris``). Parquet columns stored as
instants (timestamp with time zone, as the importers write them) are kept; naive parquet timestamps
and dates are local times like naive text.

Daylight saving time, as DuckDB's ICU (and Python's ``fold=0`` for a gap) does it, never an error:

* a local time that does not exist (the hour skipped when clocks go forward) is read with the
  offset in force before the change: 02:30 in New York on 2024-03-10 is 07:30 UTC (03:30 EDT);
* a local time that happens twice (the hour repeated when clocks go back) is the later of the two:
  01:30 in New York on 2024-11-03 is 06:30 UTC (01:30 EST).

Local times outside the years 2 to 9998 are taken as UTC: shifting them could leave the range of a
timestamp, and they are mistakes anyway (the far future is rejected as future, as before).
Which values parse at all is DuckDB's rule, as before: the contract reads the moment, then this
module decides which zone it was in.
"""

from __future__ import annotations

import difflib
import functools

import duckdb

from features.errors import InputError
from features.schema import sql_literal

UTC = "UTC"
EXAMPLES = "Europe/London or America/New_York"
# Local times shifted to UTC only inside these bounds (see the module's docstring).
SHIFTED_FROM, SHIFTED_UNTIL = "0002-01-01", "9998-12-31"

# Text: glue an offset (or Z) to the time before it, as DuckDB's parser wants it ("10:15:00 +0100" -> "+0100").
_GLUE_OFFSET = r"(\d)\s+([+-]\d{1,2}(:?\d{2})?|[zZ])$"
# Text that names its zone: after the time of day, an offset, Z or a zone's name.
_HAS_ZONE = r":\d{2}(\.\d*)?\s*([zZ]|[+-]\d{1,2}(:?\d{2})?|[A-Za-z][A-Za-z0-9_/+-]*)$"


@functools.cache
def _zone_names() -> dict[str, str]:
    """Every zone name DuckDB (ICU) knows, by its lower-cased spelling."""
    con = duckdb.connect(":memory:")
    try:
        return {name.lower(): name for (name,) in con.execute("SELECT name FROM pg_timezone_names()").fetchall()}
    finally:
        con.close()


def check_timezone(name: str | None) -> str | None:
    """``name`` as DuckDB spells it (``europe/london`` -> ``Europe/London``); None for None or UTC.

    An unknown name is an InputError naming it, with an example and the closest known names."""
    if name is None:
        return None
    text = str(name).strip()
    if text.upper() == UTC:
        return None
    known = _zone_names().get(text.lower())
    if known is None:
        close = difflib.get_close_matches(text, list(_zone_names().values()), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InputError(f"unknown time zone {name!r}: expected an IANA time zone name such as {EXAMPLES} "
                         f"(the zone of the shop's local times), or UTC.{hint}")
    return known


def _local_to_utc(timestamp: str, zone: str) -> str:
    """SQL: naive TIMESTAMP ``timestamp``, a local time in ``zone``, as naive UTC."""
    return (f"(CASE WHEN {timestamp} BETWEEN TIMESTAMP '{SHIFTED_FROM}' AND TIMESTAMP '{SHIFTED_UNTIL}' "
            f"THEN timezone('UTC', timezone({sql_literal(zone)}, {timestamp})) ELSE {timestamp} END)")


def glued_offset_sql(text: str) -> str:
    """SQL: the trimmed text ``text`` with a trailing offset glued to its time, as DuckDB parses it."""
    return f"regexp_replace(trim(CAST({text} AS VARCHAR)), '{_GLUE_OFFSET}', '\\1\\2')"


def utc_timestamp_sql(value: str, source_type: str = "VARCHAR", zone: str | None = None) -> str:
    """SQL: the value of expression ``value`` (of DuckDB type ``source_type``) as a naive UTC
    TIMESTAMP, NULL where it is not a timestamp. Naive values are local times in ``zone``
    (a name :func:`check_timezone` returned; None: UTC).

    The connection's TimeZone must be UTC, as :func:`features.tables.new_connection` sets it."""
    kind = source_type.upper()
    if kind in ("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"):
        return f"CAST({value} AS TIMESTAMP)"
    if kind in ("TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "DATE"):
        naive = value if kind == "TIMESTAMP" else f"CAST({value} AS TIMESTAMP)"
        return _local_to_utc(naive, zone) if zone else naive
    text = glued_offset_sql(value)
    zoned = f"CAST(TRY_CAST({text} AS TIMESTAMPTZ) AS TIMESTAMP)"
    if not zone:
        return zoned  # text without a zone is read as UTC by the UTC connection
    local = _local_to_utc(f"TRY_CAST({text} AS TIMESTAMP)", zone)
    return f"(CASE WHEN regexp_matches({text}, '{_HAS_ZONE}') THEN {zoned} ELSE {local} END)"
