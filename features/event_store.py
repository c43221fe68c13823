"""Where the event log is, a file or Redis, told apart in one place: an :data:`EventSource` is the path of a
JSON-lines log (:mod:`features.event_log`, the embedded default) or a :class:`RedisLocation` (the online
store that several workers share, :mod:`features.redis_log`), and the functions here read, check and
forget in either, so that training, ``privacy export`` and ``privacy forget`` need not know which.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator
from pathlib import Path

import pandas as pd

from features.event_log import (
    EventLog,
    _records,
    customer_events,
    event_log_frames,
    forget_customers,
    records_frames,
)
from features.redis_log import RedisEventLog, RedisLocation
from features.schema import Table

__all__ = ["EventSource", "forget_in_source", "open_event_log", "source_customer_events",
           "source_frames", "source_records"]

EventSource = Path | RedisLocation


def open_event_log(source: EventSource | str) -> EventLog | RedisEventLog:
    """The log at ``source`` opened for appending (a Redis server is checked for durable settings)."""
    return RedisEventLog(source) if isinstance(source, RedisLocation) else EventLog(Path(source))


def source_records(source: EventSource | str) -> Iterator[dict]:
    """Every event of the log as stored (parsed JSON), in order; none for a file that does not exist."""
    if not isinstance(source, RedisLocation):
        yield from _records(Path(source))
        return
    with RedisEventLog(source, check_durability=False) as log:
        yield from log.records()


def source_frames(source: EventSource | str) -> dict[Table, pd.DataFrame]:
    """The log as contract tables (see :func:`records_frames`); empty frames for a file that does not exist."""
    if not isinstance(source, RedisLocation):
        return event_log_frames(source)
    return records_frames(source_records(source), str(source))


def source_customer_events(source: EventSource | str, customer_id: str) -> list[dict]:
    """The events of ``customer_id`` (compared as trimmed text) in the log, as stored."""
    if not isinstance(source, RedisLocation):
        return customer_events(source, customer_id)
    with RedisEventLog(source, check_durability=False) as log:
        return log.customer_events(customer_id)


def forget_in_source(source: EventSource | str, customer_ids: Collection[str]) -> Counter[str]:
    """Remove the events of ``customer_ids`` (trimmed text) from the log; returns how many per customer id.
    A file log is rewritten (it must exist); a Redis log has their entries and ids deleted (whatever its
    durability settings: what it holds must go)."""
    if not isinstance(source, RedisLocation):
        return forget_customers(source, customer_ids)
    with RedisEventLog(source, check_durability=False) as log:
        return log.forget(customer_ids)
