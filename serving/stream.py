"""Events from a Redis stream: a consumer group member that hands a shop's published events to the
same ingestion as ``POST /events``.

Each stream entry holds one field, ``event``, whose value is one event as JSON (UTF-8), the object
``POST /events`` takes in its ``events`` list::

    XADD shop-events * event '{"event_id": "e1", "customer_id": "c1", "event_type": "add_to_cart",
                               "occurred_at": "2026-12-01T10:00:00Z", "product_id": "p1"}'

Other fields are ignored. Delivery is at least once: the valid events of a read are handed to
``ingest`` as one batch (it appends them durably and applies each ``event_id`` once), and their
entries are acknowledged (``XACK``) only after ``ingest`` returned. A consumer killed between the
two leaves them pending; it resumes them under the same name, and any member of the group claims
them (``XAUTOCLAIM``) once they have been idle ``claim_idle_ms``; ingest sees them again and
ignores them as repeated ids. An entry that is not a valid event goes to the dead-letter stream
``<stream>.rejects`` (fields ``reason``, ``entry_id`` and each original field as ``original.<name>``)
and is acknowledged, so it is never lost and never holds up the entries behind it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import redis

from features.errors import InputError, SendwiseError
from features.event_log import Event, parse_events
from features.redis_log import redacted_url
from features.timezones import check_timezone

__all__ = ["DEFAULT_GROUP", "EVENT_FIELD", "GROUP_ENV", "MAX_EVENT_BYTES", "REJECTS_SUFFIX", "STREAM_ENV", "URL_ENV",
           "RedisUnavailableError", "StreamConsumer", "consumer_from_env", "redis_location"]

logger = logging.getLogger(__name__)

URL_ENV, STREAM_ENV, GROUP_ENV = "SENDWISE_REDIS_URL", "SENDWISE_REDIS_STREAM", "SENDWISE_REDIS_GROUP"
DEFAULT_GROUP = "sendwise"
EVENT_FIELD = "event"
REJECTS_SUFFIX = ".rejects"
MAX_EVENT_BYTES = 1 << 20  # one event's JSON; an order with thousands of lines stays far below it
MIN_REDIS = (6, 2)  # XAUTOCLAIM
MAX_BACKOFF_S = 30.0
T = TypeVar("T")


class RedisUnavailableError(SendwiseError, ConnectionError):
    """Redis could not be reached, or answered as a server without streams would."""


@dataclass(frozen=True)
class _Entry:
    entry_id: str
    fields: dict[str, bytes]


def redis_location(client: redis.Redis) -> str:
    """Where ``client`` connects, as a URL without its password: ``redis://127.0.0.1:6379/0``."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    scheme = "rediss" if issubclass(client.connection_pool.connection_class, redis.SSLConnection) else "redis"
    return f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"The {name!r} parameter of StreamConsumer must be an int >= {low}. Got {value!r} instead.")
    return value


class StreamConsumer:
    """One member (``consumer``) of the consumer group ``group`` on the Redis stream ``stream``.

    The constructor creates the group when it is missing, with ``MKSTREAM`` and from id 0: a new
    group reads every entry still in the stream, those published before it existed included.
    :meth:`run_once` reads up to ``batch`` entries, in this order of preference: the entries this
    consumer was given and did not acknowledge (after a crash, or an ``ingest`` that raised), those
    idle longer than ``claim_idle_ms`` of any other member (a member that died; it must exceed the
    longest ``ingest`` call, or a slow live member's entries are delivered twice, which ingest
    absorbs), then new entries (waiting up to ``block_ms`` for one; 0: no wait). Events are validated as
    ``POST /events`` does (:func:`~features.event_log.parse_events`): naive times are local to
    ``timezone``, and a moment after ``clock()`` (the service's clock; None: the wall clock) is refused.
    """

    def __init__(self, client: redis.Redis, stream: str, group: str, consumer: str,
                 ingest: Callable[[list[Event]], object], *, batch: int = 500, block_ms: int = 1000,
                 claim_idle_ms: int = 60_000, timezone: str | None = None,
                 clock: Callable[[], datetime] | None = None,
                 conflicts: Callable[[list[Event]], list[str]] | None = None) -> None:
        for name, value in (("stream", stream), ("group", group), ("consumer", consumer)):
            if not isinstance(value, str) or not value:
                raise InputError(f"The {name!r} parameter of StreamConsumer must be a non-empty str. Got {value!r} instead.")
        self.client, self.stream, self.group, self.consumer, self.ingest = client, stream, group, consumer, ingest
        self.batch = _check_int("batch", batch, 1)
        self.block_ms = _check_int("block_ms", block_ms, 0)
        self.claim_idle_ms = _check_int("claim_idle_ms", claim_idle_ms, 0)
        self.timezone, self.clock = check_timezone(timezone), clock  # a wrong zone is no event's fault
        self.conflicts = conflicts  # the ids the log holds for a different event (EventLog.conflicts)
        self.rejects_stream = stream + REJECTS_SUFFIX
        self.location = redis_location(client)
        self._claim_from = "0-0"
        self._ingest_failed = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._call(self._create_group)

    def _call(self, command: Callable[[], T]) -> T:
        try:
            return command()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise RedisUnavailableError(f"Redis at {self.location} cannot be reached ({exc}); expected a redis-server "
                                        f"there for the stream {self.stream!r} (the service reads its URL from "
                                        f"{URL_ENV}).") from exc

    def _create_group(self) -> None:
        version = str(self.client.info("server").get("redis_version", "0"))
        if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < MIN_REDIS:
            raise RedisUnavailableError(f"Redis at {self.location} is version {version}; the stream consumer needs "
                                        f"{'.'.join(map(str, MIN_REDIS))} or later (XAUTOCLAIM).")
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if str(exc).startswith("BUSYGROUP"):
                return  # the group exists: keep its position
            raise InputError(f"Redis at {self.location}: cannot create the consumer group {self.group!r} on "
                             f"{self.stream!r} ({exc}); expected {self.stream!r} to be a stream or absent.") from exc

    def run_once(self) -> int:
        """Read one batch and deliver it; the number of entries acknowledged (events delivered, rejects
        written, entries deleted from the stream while pending). :class:`RedisUnavailableError` when
        Redis cannot be reached; an ``ingest`` that raises is logged and its entries stay pending."""
        self._ingest_failed = False
        try:
            entries = self._call(lambda: self._read("0", None))
            if not entries:
                entries = self._call(self._claim)
            if not entries:
                entries = self._call(lambda: self._read(">", self.block_ms or None))
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            logger.warning("stream %r: the stream or its group %r was deleted; created again, from the start of "
                           "what the stream holds", self.stream, self.group)
            self._call(self._create_group)
            return 0
        return self._deliver(entries) if entries else 0

    def _read(self, start: str, block: int | None) -> list[_Entry]:
        reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: start}, count=self.batch, block=block)
        if not reply:
            return []
        messages = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        return [self._entry(entry_id, fields) for entry_id, fields in messages]

    def _claim(self) -> list[_Entry]:
        reply = self.client.xautoclaim(self.stream, self.group, self.consumer, self.claim_idle_ms,
                                       start_id=self._claim_from, count=self.batch)
        self._claim_from = _text(reply[0])  # "0-0" once the whole pending list has been scanned
        return [self._entry(entry_id, fields) for entry_id, fields in reply[1]]

    @staticmethod
    def _entry(entry_id: bytes | str, fields: Mapping | None) -> _Entry:
        return _Entry(_text(entry_id), {_text(k): v.encode() if isinstance(v, str) else v
                                        for k, v in (fields or {}).items()})

    def _deliver(self, entries: list[_Entry]) -> int:
        events: list[Event] = []
        delivered: list[str] = []
        rejected: list[tuple[_Entry, str]] = []
        gone: list[str] = []
        first: dict[str, tuple[Event, str]] = {}  # event_id: its event and entry in this read
        for entry in entries:
            if not entry.fields:  # deleted from the stream (XDEL, trimmed) while pending
                gone.append(entry.entry_id)
                continue
            try:
                parsed = self._parse(entry)
                for e in parsed:  # the log refuses a batch that gives one id to two different events
                    earlier, where = first.get(e.event_id, (e, entry.entry_id))
                    if earlier != e:
                        raise InputError(f"event_id: {e.event_id!r} is also entry {where}'s, a different event "
                                         "read with it; expected one event per event_id (the first is kept)")
                reused = self.conflicts(parsed) if self.conflicts is not None else []
                if reused:
                    raise InputError(f"event_id: {reused[0]!r} already names a different event in the log; expected "
                                     "one event per event_id (sending the same event again is fine)")
            except InputError as exc:
                rejected.append((entry, str(exc)))
                continue
            except Exception as exc:  # a bug in validation: the entry is kept, and blocks nothing
                logger.exception("stream %r: validating entry %s failed", self.stream, entry.entry_id)
                rejected.append((entry, f"validation failed unexpectedly: {type(exc).__name__}: {str(exc)[:200]}"))
                continue
            for e in parsed:
                first.setdefault(e.event_id, (e, entry.entry_id))
            events.extend(parsed)
            delivered.append(entry.entry_id)
        if rejected or gone:
            self._call(lambda: self._reject(rejected, gone))
        if not events:
            return len(rejected) + len(gone)
        try:
            result = self.ingest(events)
            if getattr(result, "conflicts", None):  # another writer took an id meanwhile: read again, reject then
                raise InputError(f"event_id {result.conflicts[0]!r} was taken for a different event meanwhile")
        except Exception:
            self._ingest_failed = True
            logger.exception("stream %r: ingesting %d event(s) failed; their %d entries stay pending and are retried",
                             self.stream, len(events), len(delivered))
            return len(rejected) + len(gone)
        self._call(lambda: self.client.xack(self.stream, self.group, *delivered))
        return len(entries)

    def _parse(self, entry: _Entry) -> list[Event]:
        raw = entry.fields.get(EVENT_FIELD)
        if raw is None:
            raise InputError(f"expected a field {EVENT_FIELD!r} holding the event's JSON; got the fields "
                             f"{sorted(entry.fields)!r}")
        if len(raw) > MAX_EVENT_BYTES:
            raise InputError(f"{EVENT_FIELD}: {len(raw):,} bytes, more than the {MAX_EVENT_BYTES:,} allowed for one event")
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise InputError(f"{EVENT_FIELD}: expected one event as JSON (UTF-8); got what does not parse: "
                             f"{type(exc).__name__}: {str(exc)[:200]}") from None
        return parse_events(payload, timezone=self.timezone, now=self.clock() if self.clock else None)

    def _reject(self, rejected: list[tuple[_Entry, str]], gone: list[str]) -> None:
        """Dead letters and their acknowledgements in one transaction: written once, never lost."""
        with self.client.pipeline(transaction=True) as pipe:
            for entry, reason in rejected:
                logger.warning("stream %r: entry %s rejected to %r: %r", self.stream, entry.entry_id,
                               self.rejects_stream, reason)
                fields = {"reason": reason, "entry_id": entry.entry_id}
                fields.update({f"original.{name}": value for name, value in entry.fields.items()})
                pipe.xadd(self.rejects_stream, fields)
            if gone:
                logger.warning("stream %r: %d pending entries were deleted from the stream before delivery: %s",
                               self.stream, len(gone), ", ".join(gone[:10]))
            pipe.xack(self.stream, self.group, *(entry.entry_id for entry, _ in rejected), *gone)
            pipe.execute()

    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set. Redis out of reach, a failing ``ingest`` or any other error is
        logged and retried, waiting twice as long after each failure in a row (0.5 s, then up to 30 s)."""
        failures = 0
        while not stop.is_set():
            try:
                self.run_once()
                failed = self._ingest_failed
            except RedisUnavailableError as exc:
                failed = True
                logger.error("stream %r: %s", self.stream, exc)
            except Exception:  # a Redis error or a bug: logged and retried, the thread lives on
                failed = True
                logger.exception("stream %r: reading or acknowledging failed", self.stream)
            failures = failures + 1 if failed else 0
            if failures:
                stop.wait(min(MAX_BACKOFF_S, 0.5 * 2 ** (failures - 1)))

    def start(self) -> None:
        """Run in a background (daemon) thread until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"the consumer {self.consumer!r} of {self.stream!r} is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, args=(self._stop,), daemon=True,
                                        name=f"sendwise-stream-{self.stream}")
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread once its current batch is delivered (at most ``block_ms`` more
        when it waits for new entries)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def consumer_from_env(ingest: Callable[[list[Event]], object], timezone: str | None = None,
                      clock: Callable[[], datetime] | None = None,
                      environ: Mapping[str, str] = os.environ,
                      conflicts: Callable[[list[Event]], list[str]] | None = None) -> StreamConsumer | None:
    """The consumer the environment asks for: ``SENDWISE_REDIS_URL`` and ``SENDWISE_REDIS_STREAM`` (both
    or neither; neither: None), ``SENDWISE_REDIS_GROUP`` (default ``sendwise``), named after this host
    and process. Not started. :class:`InputError` naming the variable when one is wrong or set but empty,
    :class:`RedisUnavailableError` naming the URL when Redis cannot be reached."""
    for name in (URL_ENV, STREAM_ENV, GROUP_ENV):
        if name in environ and not environ[name].strip():
            raise InputError(f"service settings: {name} is set but empty; expected a value, or the variable unset.")
    url, stream = environ.get(URL_ENV), environ.get(STREAM_ENV)
    if url is None and stream is None:
        return None
    if url is None or stream is None:
        have, missing = (URL_ENV, STREAM_ENV) if stream is None else (STREAM_ENV, URL_ENV)
        raise InputError(f"service settings: {have} is set but {missing} is not; expected both (the Redis URL and "
                         f"the stream of events to consume) or neither (no stream consumer).")
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30)
    except ValueError as exc:
        raise InputError(f"service settings: {URL_ENV}: expected a Redis URL such as redis://host:6379/0 "
                         f"(rediss:// for TLS, unix:///path/redis.sock); got {redacted_url(url)!r} ({exc}).") from None
    group = environ.get(GROUP_ENV, DEFAULT_GROUP)
    return StreamConsumer(client, stream, group, f"{socket.gethostname()}-{os.getpid()}", ingest, timezone=timezone,
                          clock=clock, conflicts=conflicts)
