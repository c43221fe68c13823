"""DuckDB, the embedded default engine."""

from __future__ import annotations

from features.engines import AGGREGATES, Engine

DAY_US = 86_400_000_000
_NAMES = {"count_distinct": "count", "stddev": "stddev_samp", "any": "bool_or"}


class DuckDBEngine(Engine):
    name = "duckdb"

    def parameter(self, name: str) -> str:
        return f"${name}"

    def as_of(self) -> str:
        return "$as_of"

    def days_between(self, earlier: str, later: str) -> str:
        return f"(epoch_us({later}) - epoch_us({earlier})) / {DAY_US}.0"

    def days_before(self, days: int) -> str:
        return f"$as_of - to_days({int(days)})"

    def days_after(self, days: int) -> str:
        return f"$as_of + to_days({int(days)})"

    def aggregate(self, function: str, argument: str, condition: str | None = None) -> str:
        if function not in AGGREGATES:
            raise ValueError(f"unknown aggregate {function!r}; expected one of {', '.join(AGGREGATES)}")
        if function == "count_distinct":
            argument = f"DISTINCT {argument}"
        return self._filtered(f"{_NAMES.get(function, function)}({argument})", condition)

    def latest(self, value: str, timestamp: str, condition: str | None) -> str:
        return self._filtered(f"arg_max_null({value}, {timestamp})", condition)

    def top(self, value: str, by: str, condition: str | None) -> str:
        return self._filtered(f"first({value} ORDER BY {by} DESC, {value})", condition)

    def parameters(self, as_of: object) -> dict[str, object]:
        return {"as_of": as_of}

    @staticmethod
    def _filtered(call: str, condition: str | None) -> str:
        return f"{call} FILTER (WHERE {condition})" if condition else call
