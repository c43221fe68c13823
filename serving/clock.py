"""The service's clock: what "now" is for events, windows and delayed triggers.

A shop whose data is live uses the wall clock. A shop whose data is historical (the demo, Online
Retail: its last order was years ago) would see every window empty and every event "in the
future" of its data; for it the clock starts at the data's end and runs at the wall clock's pace
from the moment the service started. ``auto`` (the default) picks the data clock when the data
ended more than :data:`HISTORICAL_AFTER` before the wall clock (a live shop whose retraining failed
for a few days keeps the wall clock: on the data clock its events would be "in the future"), else the
wall clock; the choice is logged at startup. ``GET /model_info`` reports the clock's mode and ``now``.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from enum import StrEnum

logger = logging.getLogger(__name__)

HISTORICAL_AFTER = timedelta(days=30)


class ClockMode(StrEnum):
    AUTO = "auto"
    WALL = "wall"  # the wall clock (UTC)
    DATA = "data"  # the data's end plus the time since the service started


def wall_now() -> datetime:
    """The wall clock as naive UTC, as every timestamp of the tables."""
    return datetime.now(UTC).replace(tzinfo=None)


class ServiceClock:
    """``now()`` in naive UTC under ``mode`` for data that ends at ``data_end`` (naive UTC)."""

    def __init__(self, mode: ClockMode, data_end: datetime, *, started: float | None = None,
                 wall: datetime | None = None) -> None:
        wall = wall or wall_now()
        if mode is ClockMode.AUTO:
            mode = ClockMode.DATA if data_end < wall - HISTORICAL_AFTER else ClockMode.WALL
            logger.info("clock: %s (auto: the data ends %s, the wall clock says %s)", mode.value,
                        data_end.isoformat(timespec="seconds"), wall.isoformat(timespec="seconds"))
        self.mode = mode
        self.data_end = data_end
        self._started = time.monotonic() if started is None else started

    def now(self) -> datetime:
        if self.mode is ClockMode.WALL:
            return wall_now()
        return self.data_end + timedelta(seconds=time.monotonic() - self._started)

    def later_data(self, data_end: datetime) -> None:
        """Move a data clock forward to ``data_end`` when that is later than its now (an event log
        replayed at startup may end after the snapshot); it never runs backwards."""
        if self.mode is ClockMode.DATA and data_end > self.now():
            self.data_end, self._started = data_end, time.monotonic()
