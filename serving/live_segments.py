"""Segments and triggers kept current as events arrive (the online half of :mod:`serving.segments`).

A background worker follows the event log, in its order: every batch of new events (from
:meth:`LiveProfiles.ingest`) arms or disarms the delayed triggers (:mod:`serving.triggers`) and
re-evaluates the segments of the customers it touched (:class:`serving.outbox.SegmentTracker`); every
enter, exit and fire goes to the durable outbox (``outbox.jsonl`` in the state folder) and, with a
webhook set, to it (:mod:`serving.webhook`). Every second a tick in the same queue fires the triggers
whose deadline passed on the service's clock: after the events acknowledged before it, so an order
that came in time always disarms its cart first. A cart older than its trigger's window when it is
handled (a backfill, a replayed stream) arms nothing.

How far the worker got is a cursor file (events of the log handled, in order); after a restart the
worker takes the log from there, so no event is skipped, and handling one twice changes nothing
(memberships are compared with the outbox's, a fired cart is never armed again). A batch that fails
(a full disk) is retried, the cursor staying where it was.

``/events`` answers before this work is done; ``GET /segments/{customer_id}`` evaluates the segments
on the customer's features at the clock's now. Membership is re-evaluated when a customer has an
event: a customer whose window empties with time (``cart_abandoned_1d`` a day later) leaves the
segment in ``GET /segments`` at once, and in the outbox at their next event.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from features.errors import InputError
from features.event_log import Event
from features.io import atomic_write
from serving.clock import ServiceClock
from serving.outbox import SegmentTracker, TriggerOutbox
from serving.segments import SegmentSet
from serving.triggers import DelayedTriggers
from serving.webhook import WebhookSender

__all__ = ["TICK_SECONDS", "LiveSegments"]

logger = logging.getLogger(__name__)

# the files it keeps in the state folder (sendwise.privacy.live_stores rewrites them for a forget)
OUTBOX_FILE, TIMERS_FILE, WEBHOOK_CURSOR_FILE, SEGMENTS_CURSOR_FILE = (
    "outbox.jsonl", "timers.jsonl", "webhook.cursor", "segments.cursor")
TICK_SECONDS = 1.0  # how often armed triggers are checked against the clock
RETRY_SECONDS = 1.0  # wait before a failed batch is tried again

Values = Callable[[str], "dict | None"]  # a customer's features and scores now; None when unknown


class LiveSegments:
    """The outbox, tracker, delayed triggers and webhook of one service, fed by a worker thread."""

    def __init__(self, segments: SegmentSet, state: Path, clock: ServiceClock, values: Values,
                 webhook: tuple[str, str] | None = None) -> None:
        self.segments, self.clock, self.values = segments, clock, values
        self.outbox = TriggerOutbox(state / OUTBOX_FILE)
        self.tracker = SegmentTracker(segments, self.outbox)
        self.triggers = DelayedTriggers(segments.triggers, self.outbox, state / TIMERS_FILE)
        self.sender = WebhookSender(webhook[0], webhook[1], self.outbox, state / WEBHOOK_CURSOR_FILE) if webhook else None
        self._cursor_path = state / SEGMENTS_CURSOR_FILE
        self.handled = _read_cursor(self._cursor_path)
        self._queue: queue.Queue[list[Event]] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def replayed(self, index: int, event: Event) -> None:
        """Queue a logged event (the ``index``-th of the log) replayed at startup if this worker had not
        handled it before the restart."""
        if index >= self.handled:
            self._queue.put([event])

    def on_events(self, events: list[Event]) -> None:
        """A listener of :meth:`serving.live.LiveProfiles.on_events`: queue a batch of new events."""
        self._queue.put(events)

    def start(self) -> None:
        for target in (self._work, self._tick):
            thread = threading.Thread(target=target, name=f"sendwise-segments{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.sender is not None:
            self.sender.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put([])
        for thread in self._threads:
            thread.join(timeout=10)
        if self.sender is not None:
            self.sender.stop()
        self.triggers.close()
        self.outbox.close()

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every queued event is handled (tests, shutdown)."""
        done = threading.Event()
        self._queue.put([_Flush(done)])  # type: ignore[list-item]
        done.wait(timeout)

    def _work(self) -> None:
        while not self._stop.is_set():
            batch = self._queue.get()
            while not self._queue.empty() and len(batch) < 10_000:
                batch = batch + self._queue.get_nowait()
            events = [e for e in batch if isinstance(e, Event)]
            while events and not self._stop.is_set():
                try:
                    self.handle(events)
                    break
                except Exception:  # a full disk, a broken file: the same events again, the cursor unmoved
                    logger.exception("segments: %d events not handled; trying again in %.0f s", len(events),
                                     RETRY_SECONDS)
                    self._stop.wait(RETRY_SECONDS)
            if any(isinstance(e, _Tick) for e in batch):
                try:
                    self.triggers.due(self.clock.now())
                except Exception:
                    logger.exception("segments: delayed triggers not checked")
            for flush in (e for e in batch if isinstance(e, _Flush)):
                flush.done.set()

    def handle(self, events: list[Event]) -> None:
        """Arm or disarm triggers, re-evaluate the touched customers' segments, move the cursor."""
        now = self.clock.now()
        for event in events:
            windows = [t.delay for t in self.triggers.triggers if t.after == event.event_type]
            if windows and all(event.occurred_at + w <= now for w in windows):
                continue  # a cart older than its window: nothing to remind of any more
            self.triggers.on_event(event.customer_id, event.event_type, event.occurred_at, event.event_id)
        updates = [(cid, values) for cid in dict.fromkeys(e.customer_id for e in events)
                   if (values := self.values(cid)) is not None]
        self.tracker.update_many(updates, self.clock.now())
        self.handled += len(events)
        atomic_write(self._cursor_path, lambda tmp: Path(tmp).write_text(str(self.handled)))

    def _tick(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            self._queue.put([_Tick()])  # type: ignore[list-item]


def _read_cursor(path: Path) -> int:
    """The events of the log handled so far, or an InputError naming the file."""
    if not path.exists():
        return 0
    text = path.read_text().strip()
    if not text.isdigit():
        raise InputError(f"{path}: expected the number of events of the log the segments worker handled; got "
                         f"{text[:40]!r}. Restore it from a backup, or delete it to handle the whole log again "
                         "(memberships are compared with the outbox's: nothing is written twice).")
    return int(text)


class _Tick:
    """A marker in the queue: check the delayed triggers against the clock."""


class _Flush:
    """A marker in the queue: set ``done`` when everything before it is handled."""

    def __init__(self, done: threading.Event) -> None:
        self.done = done
