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

With several workers or replicas the log is shared (:class:`features.redis_log.RedisEventLog`, the
online store in Redis): each worker applies the events in the log's order, its own and the others',
from a position it keeps. :meth:`LiveProfiles.follow` catches up before each answer (an event
acknowledged by any worker is in the next answer of every worker) and a background thread every
:data:`FOLLOW_SECONDS` (so the segments worker, in one of them, sees every event).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from redis.exceptions import RedisError

from features.errors import InputError
from features.event_log import AppendResult, Event, EventLogLike, Position, held_rows
from features.online import OnlineFeatures
from features.tables import Tables
from serving.clock import ServiceClock

if TYPE_CHECKING:
    from serving.state import CustomerTable

__all__ = ["FOLLOW_SECONDS", "FRESH_SECONDS", "LiveProfiles"]

logger = logging.getLogger(__name__)

FRESH_SECONDS = 60.0  # a touched customer's cached answer is recomputed after this long (windows expire)
FOLLOW_SECONDS = 0.05  # how often a worker on a shared log looks for the other workers' events
WARN_EVERY_SECONDS = 10.0  # a log that cannot be read is logged at most this often
RETRY_SECONDS = 5.0  # after a failed read of the shared log, answers skip it this long
CLOCK_SECONDS = 1.0  # how often a worker takes the shared data clock's origin again

Listener = Callable[[list[Event]], None]
T = TypeVar("T")


class LiveProfiles:
    """The event log, the online features and the version (events applied) of each touched customer."""

    def __init__(self, log: EventLogLike, online: OnlineFeatures, clock: ServiceClock, tables: Tables) -> None:
        self.log, self.online, self.clock, self._tables = log, online, clock, tables
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()  # the log's order is the order events are applied and handed on in
        self._listeners: list[Listener] = []
        self._position: Position = log.start_position  # how far this worker applied the log
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        self._warned = -WARN_EVERY_SECONDS  # when the log could not be read was last logged
        self._retry_at = 0.0  # answers do not read the shared log before this (it just failed)
        self._reading = threading.Lock()  # one read of the shared log at a time

    @classmethod
    def open(cls, log: EventLogLike, online: OnlineFeatures, clock: ServiceClock, tables: Tables,
             replayed: Callable[[int, Event], None] | None = None,
             forgotten: Callable[[str], bool] = lambda _: False) -> LiveProfiles:
        """Replay every event of ``log`` onto ``online`` (a restart: the state before the crash) but those
        ``tables`` (the data ``online`` reads) hold already and those of forgotten customers; show each to
        ``replayed`` with its position; move a data clock past the last one."""
        live = cls(log, online, clock, tables)
        if log.shared:  # every worker on the store runs one data clock
            clock.share(log.agree_clock)
        held = held_rows(tables.con, log.records())
        started, last, index = time.perf_counter(), None, 0
        for events, live._position in log.chunks():
            for event in events:
                if event.event_id not in held and not forgotten(event.customer_id):
                    live._apply(event)
                if replayed is not None:
                    replayed(index, event)
                index += 1
                last = event.occurred_at if last is None else max(last, event.occurred_at)
        if last is not None:
            clock.later_data(last)
            logger.info("replayed %d logged events of %d customers in %.1f s", index, len(live._versions),
                        time.perf_counter() - started)
        return live

    def start_following(self) -> None:
        """On a shared log: apply the other workers' events every :data:`FOLLOW_SECONDS` in a thread."""
        if self.log.shared and self._follower is None:
            self._follower = threading.Thread(target=self._follow_loop, name="sendwise-follow", daemon=True)
            self._follower.start()

    def stop_following(self) -> None:
        self._stop.set()
        if self._follower is not None:
            self._follower.join(timeout=10)

    def _follow_loop(self) -> None:
        clock_checked = time.monotonic()
        while not self._stop.wait(FOLLOW_SECONDS):
            self.follow(background=True)
            if time.monotonic() - clock_checked >= CLOCK_SECONDS:
                clock_checked = time.monotonic()
                self._guard(self.clock.refresh)

    def follow(self, background: bool = False) -> None:
        """Apply the events other workers appended to a shared log since this one last looked (nothing
        to do on a log only this process writes). The log is read outside the lock that applies, so a
        slow read holds up no other answer. A store that is away (or slow past its timeout) is logged,
        not raised, and answers skip it for :data:`RETRY_SECONDS` (the background thread keeps trying):
        the answer is given from what this worker has applied."""
        if not self.log.shared or (not background and time.monotonic() < self._retry_at):
            return
        with self._reading:
            position = self._position
            read = self._guard(lambda: self.log.read_after(position))
            if read is None:
                return
            with self._lock:
                if self._position == position:  # else an ingest caught up meanwhile, past these
                    self._take(*read)

    def _guard(self, call: Callable[[], T]) -> T | None:
        """``call()``, or None when the shared store fails it (logged at most every WARN_EVERY_SECONDS)."""
        try:
            return call()
        except (OSError, RedisError, InputError) as exc:
            self._retry_at = time.monotonic() + RETRY_SECONDS
            if time.monotonic() - self._warned > WARN_EVERY_SECONDS:
                self._warned = time.monotonic()
                logger.warning("live profiles: the shared event log could not be read (%s: %s); answering from "
                               "the events applied so far", type(exc).__name__, exc)
            return None

    def on_events(self, listener: Listener) -> None:
        """Call ``listener`` with every batch of new events, in the log's order, once they are applied
        (segments, triggers); it is called holding the ingest lock, so it must only queue them."""
        self._listeners.append(listener)

    def ingest(self, events: list[Event]) -> AppendResult:
        """Append ``events`` durably, then apply the new ones but those the data holds already (an event
        from before the snapshot that the shop's export has too); returns what was new and what repeated."""
        with self._lock:
            result = self.log.append(events)
            if not result.new:  # all repeats, or an id held for a different event (nothing written)
                return result
            if result.start == self._position or not self.log.shared:
                self._take(result.new, result.end)
            else:  # other workers wrote since this one looked: theirs first, in the log's order
                self._take(*self.log.read_after(self._position))
        return result

    def _take(self, events: list[Event], position: Position) -> None:
        """Apply the log's ``events`` up to ``position`` (holding the lock), but those the data holds
        already (an event from before the snapshot that the shop's export has too); hand them to the
        listeners. (No worker logs a forgotten customer's events.)"""
        self._position = position
        if not events:
            return
        late = [e for e in events if e.occurred_at < self.online.as_of]
        held = held_rows(self._tables.con.cursor(), [e.model_dump(mode="json") for e in late]) if late else set()
        for event in events:
            if event.event_id not in held:
                self._apply(event)
        for listener in self._listeners:
            listener(events)

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
        computed = time.monotonic()
        if cached is not None and cached[0] == version and computed - cached[1] < FRESH_SECONDS:
            return cached[2], cached[3]
        now = self.clock.now()
        values = self.features(customer_id, now)
        if values is None:
            return None
        scores, signals = table.score_one(customer_id, values, now)
        table.fresh[customer_id] = (version, computed, scores, signals)
        return scores, signals
