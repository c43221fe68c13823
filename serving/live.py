"""Live profiles: events in, fresh features, scores and decisions out.

``POST /events`` (and the Redis consumer, :mod:`serving.stream`) hand validated events to
:meth:`LiveProfiles.ingest`: they are appended to the durable event log (fsync'd before the
answer; an ``event_id`` seen before is acknowledged and ignored) and applied once to the online
feature store (:class:`features.online.OnlineFeatures`), which evaluates the feature registry's
declarations per customer, equal to the batch build at the same time.

A customer touched by an event is answered from their online features at the service's clock
(:mod:`serving.clock`): the next ``/score`` or ``/next_best_action`` computes their features, scores
them with the arm's models and caches the answer until another event of theirs arrives or
:data:`FRESH_SECONDS` pass (windows expire as time goes by). Everyone else is answered from the
snapshot. After a restart the log is replayed over the data the service loaded, so every
acknowledged event is applied again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from features.event_log import AppendResult, Event, EventLog, held_by_tables, held_rows
from features.online import OnlineFeatures
from features.tables import Tables
from serving.clock import ServiceClock

if TYPE_CHECKING:
    from serving.state import CustomerTable

__all__ = ["FRESH_SECONDS", "LiveProfiles"]

logger = logging.getLogger(__name__)

FRESH_SECONDS = 60.0  # a touched customer's cached answer is recomputed after this long (windows expire)

Listener = Callable[[list[Event]], None]


class LiveProfiles:
    """The event log, the online features and the version (events applied) of each touched customer."""

    def __init__(self, log: EventLog, online: OnlineFeatures, clock: ServiceClock, tables: Tables) -> None:
        self.log, self.online, self.clock, self._tables = log, online, clock, tables
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()  # the log's order is the order events are applied and handed on in
        self._listeners: list[Listener] = []

    @classmethod
    def open(cls, log: EventLog, online: OnlineFeatures, clock: ServiceClock, tables: Tables,
             replayed: Callable[[int, Event], None] | None = None,
             forgotten: Callable[[str], bool] = lambda _: False) -> LiveProfiles:
        """Replay every event of ``log`` onto ``online`` (a restart: the state before the crash) but those
        ``tables`` (the data ``online`` reads) hold already and those of forgotten customers; show each to
        ``replayed`` with its position; move a data clock past the last one."""
        live = cls(log, online, clock, tables)
        held = held_by_tables(tables.con, log.path)
        started, last = time.perf_counter(), None
        for index, event in enumerate(log.read()):
            if event.event_id not in held and not forgotten(event.customer_id):
                live._apply(event)
            if replayed is not None:
                replayed(index, event)
            last = event.occurred_at if last is None else max(last, event.occurred_at)
        if last is not None:
            clock.later_data(last)
            logger.info("replayed %d logged events of %d customers in %.1f s", len(log), len(live._versions),
                        time.perf_counter() - started)
        return live

    def on_events(self, listener: Listener) -> None:
        """Call ``listener`` with every batch of new events, in the log's order, once they are applied
        (segments, triggers); it is called holding the ingest lock, so it must only queue them."""
        self._listeners.append(listener)

    def ingest(self, events: list[Event]) -> AppendResult:
        """Append ``events`` durably, then apply the new ones but those the data holds already (an event
        from before the snapshot that the shop's export has too); returns what was new and what repeated."""
        with self._lock:
            result = self.log.append(events)
            late = [e for e in result.new if e.occurred_at < self.online.as_of]
            held = held_rows(self._tables.con.cursor(), [e.model_dump(mode="json") for e in late]) if late else set()
            for event in result.new:
                if event.event_id not in held:
                    self._apply(event)
            if result.new:
                for listener in self._listeners:
                    listener(result.new)
        return result

    def _apply(self, event: Event) -> None:
        if event.lines is not None:
            self.online.apply_order(event.customer_id, event.event_id,
                                    [(line.product_id, line.quantity, line.unit_price) for line in event.lines],
                                    event.occurred_at)
        else:
            self.online.apply_event(event.customer_id, event.event_type, event.occurred_at, event.product_id)
        self._versions[event.customer_id] = self._versions.get(event.customer_id, 0) + 1

    def version(self, customer_id: str) -> int | None:
        """How many events of the customer were applied; None for one without events."""
        return self._versions.get(customer_id)

    def features(self, customer_id: str, at: datetime | None = None) -> dict | None:
        """The customer's online features at ``at`` (default: the clock's now); None when unknown."""
        return self.online.features(customer_id, at or self.clock.now())

    def fresh_view(self, table: CustomerTable, customer_id: str) -> tuple[dict, dict] | None:
        """(scores, signals) of a touched customer under ``table``'s models, computed now or taken from
        ``table``'s cache; None for a customer without events (the snapshot answers)."""
        version = self._versions.get(customer_id)
        if version is None:
            return None
        cached = table.fresh.get(customer_id)
        now = time.monotonic()
        if cached is not None and cached[0] == version and now - cached[1] < FRESH_SECONDS:
            return cached[2], cached[3]
        values = self.features(customer_id)
        if values is None:
            return None
        scores, signals = table.score_one(customer_id, values)
        table.fresh[customer_id] = (version, now, scores, signals)
        return scores, signals
