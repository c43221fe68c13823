"""DuckDB, the embedded default engine."""

from __future__ import annotations

from features.engines import DAY_US, Engine


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

    def latest(self, value: str, timestamp: str, condition: str | None) -> str:
        return self.filtered(f"arg_max_null({value}, {timestamp})", condition)

    def top(self, value: str, by: str, condition: str | None) -> str:
        return self.filtered(f"first({value} ORDER BY {by} DESC, {value})", condition)

    def parameters(self, as_of: object) -> dict[str, object]:
        return {"as_of": as_of}
