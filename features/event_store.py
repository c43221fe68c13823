"""Where the event log is, a file or Redis, told apart in one place: an :data:`EventSource` is the path of a
JSON-lines log (:mod:`features.event_log`, the embedded default) or a :class:`RedisLocation` (the online
store that several workers share, :mod:`features.redis_log`), and the functions here read, check and
forget in either, so that training, ``privacy export`` and ``privacy forget`` need not know which.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

import duckdb
import pandas as pd

from features.errors import InputError
from features.event_log import (
    ORDER,
    EventLog,
    _records,
    customer_events,
    event_log_frames,
    forget_customers,
    held_rows,
)
from features.redis_log import RedisEventLog, RedisLocation
from features.schema import (
    CUSTOMER_ID,
    EVENT_TYPE,
    OCCURRED_AT,
    ORDER_ID,
    ORDERED_AT,
    PRODUCT_ID,
    QUANTITY,
    UNIT_PRICE,
    Table,
)

__all__ = ["EventSource", "forget_in_source", "held_by_source", "open_event_log", "records_frames",
           "source_customer_events", "source_frames", "source_records"]

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


def records_frames(records: Iterable[dict], where: str) -> dict[Table, pd.DataFrame]:
    """Stored events as contract tables: ``events`` (every event but orders) and ``orders`` (a row per
    line, ``order_id`` = ``event_id``), timestamps naive UTC. The records are taken as the log wrote them
    (validated when appended); one that lacks a field is an InputError naming ``where`` and the event."""
    events, orders = [], []
    for record in records:
        try:
            if record[EVENT_TYPE] == ORDER:
                orders.extend((record["event_id"], record[CUSTOMER_ID], line[PRODUCT_ID], line[QUANTITY],
                               line[UNIT_PRICE], record[OCCURRED_AT]) for line in record["lines"])
            else:
                events.append((record[CUSTOMER_ID], record[EVENT_TYPE], record.get(PRODUCT_ID), record[OCCURRED_AT]))
        except (KeyError, TypeError) as exc:
            raise InputError(f"{where}: event {record.get('event_id')!r} lacks a field or holds a wrong type ({exc!r}); "
                             "expected events as the event log writes them") from None
    frames = {Table.EVENTS: pd.DataFrame(events, columns=[CUSTOMER_ID, EVENT_TYPE, PRODUCT_ID, OCCURRED_AT]),
              Table.ORDERS: pd.DataFrame(orders, columns=[ORDER_ID, CUSTOMER_ID, PRODUCT_ID, QUANTITY, UNIT_PRICE,
                                                          ORDERED_AT])}
    try:
        for table, time_column in ((Table.EVENTS, OCCURRED_AT), (Table.ORDERS, ORDERED_AT)):
            frames[table][time_column] = pd.to_datetime(frames[table][time_column], format="ISO8601",
                                                        utc=True).dt.tz_localize(None)
        frames[Table.ORDERS] = frames[Table.ORDERS].astype({QUANTITY: "float64", UNIT_PRICE: "float64"})
    except (ValueError, TypeError) as exc:
        raise InputError(f"{where}: a time or number the event log did not write ({exc}); expected events as the "
                         "event log writes them") from None
    return frames


def source_frames(source: EventSource | str) -> dict[Table, pd.DataFrame]:
    """The log as contract tables (see :func:`records_frames`); empty frames for a file that does not exist."""
    if not isinstance(source, RedisLocation):
        return event_log_frames(source)
    return records_frames(source_records(source), str(source))


def held_by_source(con: duckdb.DuckDBPyConnection, source: EventSource | str) -> set[str]:
    """Ids of the log's events that the contract tables of ``con`` hold already (:func:`held_rows`)."""
    return held_rows(con, source_records(source))


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
