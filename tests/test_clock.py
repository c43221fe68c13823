"""The service's clock (serving/clock.py): the wall clock for live data; for historical data, the
data's end plus the time since the start, never running backwards."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from serving.clock import ClockMode, ServiceClock, wall_now

OLD_END = datetime(2011, 12, 9, 12, 50)


def test_auto_reads_old_data_on_the_data_clock_and_fresh_data_on_the_wall_clock() -> None:
    assert ServiceClock(ClockMode.AUTO, OLD_END).mode is ClockMode.DATA
    assert ServiceClock(ClockMode.AUTO, wall_now() - timedelta(hours=3)).mode is ClockMode.WALL
    # a live shop whose nightly run failed for days keeps the wall clock: its events are not "in the future"
    assert ServiceClock(ClockMode.AUTO, wall_now() - timedelta(days=5)).mode is ClockMode.WALL
    assert ServiceClock(ClockMode.WALL, OLD_END).mode is ClockMode.WALL  # a choice is kept


def test_the_data_clock_starts_at_the_data_end_and_runs_at_the_walls_pace() -> None:
    started = time.monotonic() - 90  # started a minute and a half ago
    clock = ServiceClock(ClockMode.DATA, OLD_END, started=started)
    elapsed = (clock.now() - OLD_END).total_seconds()
    assert 90 <= elapsed < 100


def test_the_wall_clock_is_now_in_utc() -> None:
    clock = ServiceClock(ClockMode.WALL, OLD_END)
    assert abs((clock.now() - wall_now()).total_seconds()) < 5 and clock.now().tzinfo is None


def test_a_later_data_end_moves_the_data_clock_forward_never_back() -> None:
    clock = ServiceClock(ClockMode.DATA, OLD_END)
    later = OLD_END + timedelta(days=1)
    clock.later_data(later)
    assert clock.now() >= later
    clock.later_data(OLD_END)  # earlier: ignored
    assert clock.now() >= later
