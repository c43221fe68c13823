"""A shop's time zone: naive timestamps read as its local times and stored as UTC; explicit offsets kept."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from features.errors import InputError
from features.io import load_data_dir
from features.timezones import check_timezone
from features.validate import now_utc

ORDERS_HEADER = "order_id,customer_id,product_id,quantity,unit_price,ordered_at\n"


def write_orders(folder: Path, *times: str) -> None:
    lines = [f"{i},c{i},p1,1,2.5,{t}" for i, t in enumerate(times, 1)]
    (folder / "orders.csv").write_text(ORDERS_HEADER + "\n".join(lines) + "\n")


def ordered_at(tables) -> list[pd.Timestamp]:
    return tables.frame("orders").sort_values("order_id")["ordered_at"].tolist()


def test_a_shop_east_of_utc_exporting_its_local_now_is_not_in_the_future(tmp_path: Path) -> None:
    # Tokyo is UTC+9 all year (no DST): a line written a minute ago, in Tokyo's local time, lies 9 hours
    # "ahead" of UTC. Read as UTC it is in the future; read as Tokyo time it is 9 hours earlier in UTC.
    local_now = now_utc() + timedelta(hours=9) - timedelta(minutes=1)
    write_orders(tmp_path, f"{local_now:%Y-%m-%d %H:%M:%S}")
    _, as_utc = load_data_dir(tmp_path)
    assert as_utc.rejected == 1 and next(iter(as_utc.tables[0].reasons)).startswith("ordered_at is in the future")
    tables, report = load_data_dir(tmp_path, timezone="Asia/Tokyo")
    assert report.rejected == 0
    assert ordered_at(tables) == [pd.Timestamp(local_now - timedelta(hours=9))]


def test_naive_times_are_local_and_offsets_are_kept(tmp_path: Path) -> None:
    write_orders(tmp_path,
                 "2024-01-15 10:00:00",            # New York winter, EST = UTC-5
                 "2024-07-15 10:00:00",            # summer, EDT = UTC-4
                 "2024-07-15",                     # a date: local midnight
                 "2024-07-15T10:00:00+02:00",      # an explicit offset wins over the zone
                 "2024-07-15 10:00:00 +0200",      # Shopify's way of writing it
                 "2024-07-15T10:00:00Z")           # explicitly UTC
    tables, report = load_data_dir(tmp_path, timezone="America/New_York")
    assert report.rejected == 0
    assert ordered_at(tables) == [pd.Timestamp(t) for t in (
        "2024-01-15 15:00", "2024-07-15 14:00", "2024-07-15 04:00",
        "2024-07-15 08:00", "2024-07-15 08:00", "2024-07-15 10:00")]


def test_dst_boundaries_follow_one_documented_rule(tmp_path: Path) -> None:
    # New York, 2024: clocks go 02:00 EST -> 03:00 EDT on March 10 and 02:00 EDT -> 01:00 EST on November 3.
    write_orders(tmp_path,
                 "2024-03-10 01:59:59",   # EST: 06:59:59 UTC
                 "2024-03-10 02:30:00",   # does not exist: read with the offset before the change (EST): 07:30
                 "2024-03-10 03:00:00",   # EDT: 07:00
                 "2024-11-03 00:30:00",   # EDT: 04:30
                 "2024-11-03 01:30:00",   # happens twice: the later one (EST): 06:30
                 "2024-11-03 02:00:00")   # EST: 07:00
    tables, report = load_data_dir(tmp_path, timezone="America/New_York")
    assert report.rejected == 0
    assert ordered_at(tables) == [pd.Timestamp(t) for t in (
        "2024-03-10 06:59:59", "2024-03-10 07:30", "2024-03-10 07:00",
        "2024-11-03 04:30", "2024-11-03 06:30", "2024-11-03 07:00")]


def test_every_timestamp_column_of_every_table_is_converted(tmp_path: Path) -> None:
    write_orders(tmp_path, "2024-06-01 12:00")
    (tmp_path / "customers.csv").write_text("customer_id,signup_at\nc1,2024-05-01 09:00\n")
    (tmp_path / "events.csv").write_text("customer_id,event_type,occurred_at\nc1,product_view,2024-06-01 11:00\n")
    (tmp_path / "customer_changes.csv").write_text(
        "customer_id,changed_at,attribute,value\nc1,2024-05-01 09:00,country,France\n")
    tables, _ = load_data_dir(tmp_path, timezone="Europe/Paris")  # CEST, UTC+2
    assert tables.frame("customers")["signup_at"].item() == pd.Timestamp("2024-05-01 07:00")
    assert tables.frame("events")["occurred_at"].item() == pd.Timestamp("2024-06-01 09:00")
    assert tables.frame("customer_changes")["changed_at"].item() == pd.Timestamp("2024-05-01 07:00")
    assert ordered_at(tables) == [pd.Timestamp("2024-06-01 10:00")]


def test_parquet_naive_timestamps_are_local_and_zoned_ones_kept(tmp_path: Path) -> None:
    pd.DataFrame({"order_id": ["1"], "customer_id": ["c"], "product_id": ["p"], "quantity": [1.0],
                  "unit_price": [1.0], "ordered_at": [pd.Timestamp("2024-06-01 12:00")]}
                 ).to_parquet(tmp_path / "orders.parquet")
    pd.DataFrame({"customer_id": ["c"], "signup_at": [pd.Timestamp("2024-05-01 12:00", tz="UTC")]}
                 ).to_parquet(tmp_path / "customers.parquet")
    tables, _ = load_data_dir(tmp_path, timezone="Europe/London")  # BST, UTC+1
    assert ordered_at(tables) == [pd.Timestamp("2024-06-01 11:00")]
    assert tables.frame("customers")["signup_at"].item() == pd.Timestamp("2024-05-01 12:00")


def test_utc_and_none_are_todays_behaviour(tmp_path: Path) -> None:
    write_orders(tmp_path, "2024-06-01 12:00", "2024-06-01T12:00:00+02:00")
    expected = [pd.Timestamp("2024-06-01 12:00"), pd.Timestamp("2024-06-01 10:00")]
    for zone in (None, "UTC", "utc"):
        tables, _ = load_data_dir(tmp_path, timezone=zone)
        assert ordered_at(tables) == expected


def test_dates_a_zone_cannot_shift_are_not_a_crash(tmp_path: Path) -> None:
    # beyond the years 2-9998 a local time may not fit a timestamp once shifted: such a value is taken as
    # UTC (the far future is rejected as ever, the far past kept as the mistake it is)
    write_orders(tmp_path, "0001-01-01 00:00", "294247-01-10 04:00:00", "2024-01-01 00:00")
    tables, report = load_data_dir(tmp_path, timezone="America/New_York")
    [(reason, n)] = report.tables[0].reasons.items()
    assert reason.startswith("ordered_at is in the future") and n == 1
    assert ordered_at(tables) == [pd.Timestamp("0001-01-01 00:00"), pd.Timestamp("2024-01-01 05:00")]


@pytest.mark.parametrize("name", ["Europe/Londn", "Mars/Olympus", "+01:00", "", "CET; DROP TABLE orders"])
def test_an_unknown_zone_names_the_value_and_gives_an_example(tmp_path: Path, name: str) -> None:
    write_orders(tmp_path, "2024-06-01 12:00")
    with pytest.raises(InputError, match="Europe/London") as err:
        load_data_dir(tmp_path, timezone=name)
    assert repr(name) in str(err.value)
    if name == "Europe/Londn":
        assert "Did you mean 'Europe/London'?" in str(err.value)
    assert not (tmp_path / "_rejects").exists()  # refused before anything was read


def test_zone_names_are_matched_without_case() -> None:
    assert check_timezone("europe/london") == "Europe/London"
    assert check_timezone(" America/New_York ") == "America/New_York"
    assert check_timezone(None) is None and check_timezone("UTC") is None


def test_a_naive_timestamp_is_one_moment_whatever_the_machine_zone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: the loader must not read the machine's zone
    write_orders(tmp_path, "2024-06-01 12:00")
    tables, _ = load_data_dir(tmp_path, timezone="Asia/Kolkata")  # UTC+5:30
    assert ordered_at(tables) == [pd.Timestamp(datetime(2024, 6, 1, 6, 30))]
