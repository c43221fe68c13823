"""Spark SQL, the engine for shops that outgrow one machine (run by :mod:`features.spark`).

The as_of arrives as text (``spark.sql(query, args={"as_of": "2011-06-01 00:00:00"})``) and is cast in
the query: the session's time zone is UTC, so the text is read as UTC on every machine, whatever the
driver's local zone (a Python ``datetime`` argument would be converted with it). Numbers that must be
fractional are cast to DOUBLE: Spark reads a literal such as ``86400000000.0`` as DECIMAL, and a DECIMAL
ratio is silently truncated.
"""

from __future__ import annotations

from datetime import UTC, datetime

from features.engines import DAY_US, Engine, double


class SparkEngine(Engine):
    name = "spark"

    def parameter(self, name: str) -> str:
        return f":{name}"

    def as_of(self) -> str:
        return "CAST(:as_of AS TIMESTAMP)"

    def days_between(self, earlier: str, later: str) -> str:
        return f"(unix_micros({later}) - unix_micros({earlier})) / CAST({DAY_US} AS DOUBLE)"

    def days_before(self, days: int) -> str:
        return f"{self.as_of()} - make_interval(0, 0, 0, {int(days)})"

    def days_after(self, days: int) -> str:
        return f"{self.as_of()} + make_interval(0, 0, 0, {int(days)})"

    def latest(self, value: str, timestamp: str, condition: str | None) -> str:
        # max_by keeps a NULL value (unlike max): a change to NULL clears an attribute, as in DuckDB
        return self.filtered(f"max_by({value}, {timestamp})", condition)

    def top(self, value: str, by: str, condition: str | None) -> str:
        # the largest ``by``, ties to the smallest value: the smallest (-by, value); rows without ``by`` last
        return self.filtered(f"min_by({value}, struct(({by}) IS NULL, -({by}), {value}))", condition)

    def approx_quantile(self, value: str, fraction: float, accuracy: int) -> str:
        return f"percentile_approx({value}, {double(fraction)}, {int(accuracy)})"

    def parameters(self, as_of: object) -> dict[str, object]:
        return {"as_of": as_of_text(as_of)}


def as_of_text(as_of: object) -> str:
    """A naive-UTC timestamp as the text the query casts (microseconds kept)."""
    if not isinstance(as_of, datetime):
        raise TypeError(f"the as_of must be a datetime; got {type(as_of).__name__}")
    if as_of.tzinfo is not None:
        as_of = as_of.astimezone(UTC).replace(tzinfo=None)
    return as_of.strftime("%Y-%m-%d %H:%M:%S.%f")
