"""The service's clock: what "now" is for events, windows and delayed triggers.

A shop whose data is live uses the wall clock. A shop whose data is historical (the demo, Online
Retail: its last order was years ago) would see every window empty and every event "in the
future" of its data; for it the clock starts at the data's end and runs at the wall clock's pace
from the moment the service started. ``auto`` (the default) picks the data clock when the data
ended more than :data:`HISTORICAL_AFTER` before the wall clock (a live shop whose retraining failed
for a few days keeps the wall clock: on the data clock its events would be "in the future"), else the
wall clock; the choice is logged at startup. ``GET /model_info`` reports the clock's mode and ``now``.

Several workers on one online store run one data clock (:meth:`ServiceClock.share`): its origin, the
data end and the wall time it held at, is kept in Redis by the first worker; the others (and a worker
restarted later) take it, so every worker reads the same now and takes the same events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum

logger = logging.getLogger(__name__)

HISTORICAL_AFTER = timedelta(days=30)
EPOCH = datetime(1970, 1, 1)

Agree = Callable[[float, float], "tuple[float, float]"]  # (data end, wall) proposed -> the shared origin


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
        self._agree: Agree | None = None

    def now(self) -> datetime:
        if self.mode is ClockMode.WALL:
            return wall_now()
        return self.data_end + timedelta(seconds=time.monotonic() - self._started)

    def share(self, agree: Agree) -> None:
        """Run a data clock on the origin that ``agree`` keeps for every worker (a wall clock is shared
        already): this worker's origin is proposed and the one in force taken."""
        if self.mode is ClockMode.DATA:
            self._agree = agree
            self.refresh()

    def refresh(self) -> None:
        """Take the shared origin again (another worker may have moved it forward)."""
        if self._agree is not None:
            wall_started = time.time() - (time.monotonic() - self._started)
            self._take(self._agree((self.data_end - EPOCH).total_seconds(), wall_started))

    def _take(self, origin: tuple[float, float]) -> None:
        data_end, wall = origin
        self.data_end = EPOCH + timedelta(seconds=data_end)
        self._started = time.monotonic() - (time.time() - wall)

    def later_data(self, data_end: datetime) -> None:
        """Move a data clock forward to ``data_end`` when that is later than its now (an event log
        replayed at startup may end after the snapshot); it never runs backwards. A shared clock moves
        for every worker."""
        if self._agree is not None:
            self._take(self._agree((data_end - EPOCH).total_seconds(), time.time()))
        elif self.mode is ClockMode.DATA and data_end > self.now():
            self.data_end, self._started = data_end, time.monotonic()
