"""Workers on one Redis online store, at the level of their live profiles (serving/live.py): one data
clock for all of them, an entry that is not an event skipped rather than stopping the worker, and a
store that fails costing an answer nothing but the events it could not read."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
import redis

from features.event_log import parse_events
from features.online import OnlineFeatures
from features.redis_log import RedisEventLog, RedisLocation
from features.tables import Tables
from serving.clock import ClockMode, ServiceClock
from serving.live import RETRY_SECONDS, LiveProfiles

AS_OF = datetime(2024, 2, 1)


@pytest.fixture
def location(online_store: str) -> RedisLocation:
    with redis.Redis.from_url(online_store) as client:
        client.flushall()
    return RedisLocation(online_store, "shop")


def _worker(tables: Tables, location: RedisLocation, started: float | None = None) -> LiveProfiles:
    clock = ServiceClock(ClockMode.DATA, AS_OF, started=started)
    return LiveProfiles.open(RedisEventLog(location), OnlineFeatures(tables.before(AS_OF), AS_OF), clock, tables)


def _view(customer: str, i: int, at: datetime) -> list:
    return parse_events({"events": [{"event_id": f"v{i}", "customer_id": customer, "event_type": "product_view",
                                     "occurred_at": at.isoformat() + "Z", "product_id": "p1"}]},
                        now=at + timedelta(days=1))


def test_every_worker_reads_one_data_clock_even_one_started_an_hour_later(tiny_tables: Tables,
                                                                            location: RedisLocation) -> None:
    first = _worker(tiny_tables, location, started=time.monotonic() - 3600)  # up for an hour
    later = _worker(tiny_tables, location)  # just (re)started: its own clock would read AS_OF
    assert abs((first.clock.now() - later.clock.now()).total_seconds()) < 0.5
    assert later.clock.now() > AS_OF + timedelta(minutes=59)
    ahead = later.clock.now() + timedelta(hours=2)  # events replayed past the clock move it for everyone
    later.clock.later_data(ahead)
    first.clock.refresh()
    assert abs((first.clock.now() - later.clock.now()).total_seconds()) < 0.5 and first.clock.now() >= ahead


def test_an_entry_that_is_not_an_event_is_skipped_and_the_worker_goes_on(tiny_tables: Tables,
                                                                          location: RedisLocation,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    worker, other = _worker(tiny_tables, location), _worker(tiny_tables, location)
    with redis.Redis.from_url(location.url) as client:
        client.xadd(location.stream, {"not": "an event"})
    other.ingest(_view("c1", 1, AS_OF + timedelta(minutes=1)))
    worker.follow()
    assert worker.version("c1") == 1 and "is not an event" in caplog.text


def test_a_store_that_fails_is_skipped_by_answers_for_a_while(tiny_tables: Tables, location: RedisLocation) -> None:
    worker = _worker(tiny_tables, location)
    calls = []

    def down(position: object) -> None:
        calls.append(position)
        raise redis.ConnectionError("Connection refused")

    worker.log.read_after = down  # type: ignore[method-assign]
    started = time.monotonic()
    worker.follow()
    worker.follow()  # an answer right after: no second wait on the store
    assert len(calls) == 1 and time.monotonic() - started < 1.0
    worker.follow(background=True)  # the background thread keeps trying
    assert len(calls) == 2 and RETRY_SECONDS >= 1
