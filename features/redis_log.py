"""The event log in Redis: the online store that several workers or replicas share (one log, every worker
follows it), with the interface of :class:`features.event_log.EventLog`.

A log lives under two keys of a namespace (a project name): ``sendwise:{namespace}:events``, a stream
whose entries hold one field ``e``, the event's line as the file log writes it (without the newline),
and ``sendwise:{namespace}:ids``, a hash of each event_id to the SHA-1 of its line (a fingerprint every
process computes alike, to tell a resend from an id reused for another event). One Lua script appends a
batch: an id the hash holds, or one repeated in the batch, is acknowledged and ignored; each new event
sets its fingerprint and adds its entry, all in one atomic step, so any number of writers apply each id
once and every reader sees one order. Positions are stream entry ids (``"0-0"``: before the first).

Durability: an acknowledged event must survive a crash of Redis as the file log's survive a killed
process, so the server must run with ``appendonly yes`` and ``appendfsync always`` (Redis then writes and
fsyncs its append-only file before it answers). :class:`RedisEventLog` checks both when it opens and
refuses other settings; a server that refuses ``CONFIG`` (a managed Redis renames it) is trusted, with a
warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import urlsplit, urlunsplit

import redis
from pydantic import ValidationError

from features.errors import InputError
from features.event_log import (
    _STORED,
    CHUNK_EVENTS,
    AppendResult,
    Event,
    Position,
    _check_repeats,
    _line,
    _problem,
)
from features.schema import CUSTOMER_ID

__all__ = ["NAMESPACE_RULE", "NO_PROJECT", "READ_CHUNK", "RedisEventLog", "RedisLocation", "Removal", "redacted_url"]

logger = logging.getLogger(__name__)

NAMESPACE_RULE = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # a project name's rule (training.registry.PROJECT_RULE)
_NAMESPACE = re.compile(NAMESPACE_RULE)
NO_PROJECT = "_"  # the namespace of a service without a project (no project name can be it)
READ_CHUNK = 10_000  # stream entries per XRANGE
_DURABLE = {"appendonly": "yes", "appendfsync": "always"}

# KEYS: the stream, the ids hash; ARGV: (event_id, fingerprint, line) per event, in order.
# Returns {the last entry's id before the new ones ("0-0": none), the last new entry's id ("": none),
# a flag per event: 1 appended, 0 a duplicate, the ids held for a different event}; with any of those,
# nothing is written.
_APPEND = """
local conflicts = {}
for i = 1, #ARGV, 3 do
  local held = redis.call('HGET', KEYS[2], ARGV[i])
  if held and held ~= ARGV[i + 1] then conflicts[#conflicts + 1] = ARGV[i] end
end
if #conflicts > 0 then return {'', '', {}, conflicts} end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local start = '0-0'
if #last > 0 then start = last[1][1] end
local stop, flags = '', {}
for i = 1, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) == 1 then
    stop = redis.call('XADD', KEYS[1], '*', 'e', ARGV[i + 2])
    flags[#flags + 1] = 1
  else
    flags[#flags + 1] = 0
  end
end
return {start, stop, flags, {}}
"""
# KEYS: the stream; ARGV: the lowest id ("-" or "(ID"), the highest ("+": the end), how many. Returns {count, the entries' ids joined by
# spaces, their lines joined by newlines (a line never holds one)}: two strings to parse, not 3 per entry.
_RANGE = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
local ids, lines = {}, {}
for i, entry in ipairs(entries) do
  ids[i] = entry[1]
  local line, fields = '', entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 'e' then line = fields[j + 1] end
  end
  lines[i] = line
end
return {#entries, table.concat(ids, ' '), table.concat(lines, '\\n')}
"""


# KEYS: the clock hash; ARGV: a data end and the wall time it holds at (epoch seconds, as text). The
# stored origin stays unless its clock reads earlier than the given data end at that wall time; returns
# the origin in force {data_end, wall}.
_CLOCK = """
local data_end, wall = redis.call('HGET', KEYS[1], 'data_end'), redis.call('HGET', KEYS[1], 'wall')
if data_end and tonumber(data_end) + (tonumber(ARGV[2]) - tonumber(wall)) >= tonumber(ARGV[1]) then
  return {data_end, wall}
end
redis.call('HSET', KEYS[1], 'data_end', ARGV[1], 'wall', ARGV[2])
return {ARGV[1], ARGV[2]}
"""
SOCKET_TIMEOUT = 5.0  # seconds a Redis call may take before it fails (a stalled server must not hang answers)


def redacted_url(url: str) -> str:
    """``url`` as it may be shown: scheme, host, port and path only (a password can sit in the user
    part or in the query, ``?password=``: neither is shown)."""
    try:
        parts = urlsplit(url)
        netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<a URL that does not parse>"


@dataclass(frozen=True)
class RedisLocation:
    """Where a Redis event log lives: the server's URL and the project's namespace of keys."""

    url: str = field(repr=False)  # it may hold a password
    namespace: str

    def __post_init__(self) -> None:
        if self.namespace != NO_PROJECT and (not isinstance(self.namespace, str)
                                             or not _NAMESPACE.fullmatch(self.namespace)):
            raise InputError(f"Redis event log namespace {self.namespace!r} is not valid: it must match "
                             f"{NAMESPACE_RULE} (a project name: 1-64 letters, digits, '_' or '-', starting with a "
                             "letter or digit)")
        if not isinstance(self.url, str) or urlsplit(self.url).scheme not in ("redis", "rediss", "unix"):
            raise InputError(f"Redis event log URL {redacted_url(str(self.url))!r} is not valid; expected a Redis URL "
                             "such as redis://host:6379/0 (rediss:// for TLS, unix:///path/redis.sock)")

    @property
    def stream(self) -> str:
        """The stream of the events' lines."""
        return f"sendwise:{self.namespace}:events"

    @property
    def ids(self) -> str:
        """The hash of event_id -> SHA-1 of the line."""
        return f"sendwise:{self.namespace}:ids"

    @property
    def clock(self) -> str:
        """The hash of the data clock's origin every worker runs on (see :meth:`RedisEventLog.agree_clock`)."""
        return f"sendwise:{self.namespace}:clock"

    def __str__(self) -> str:
        return f"{redacted_url(self.url)} stream {self.stream}"


@dataclass
class Removal:
    """What :meth:`RedisEventLog.remove_customers` took out of the log."""

    removed: Counter[str] = field(default_factory=Counter)  # events removed per customer id
    positions: list[int] = field(default_factory=list)  # their 0-based indices in the log's order before


def _fingerprint(line: bytes) -> str:
    return hashlib.sha1(line, usedforsecurity=False).hexdigest()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisEventLog:
    """The event log as a Redis stream shared by every worker; see the module's notes.

    ``check_durability`` (default True): refuse a server that does not fsync every write."""

    shared = True
    start_position = "0-0"

    def __init__(self, location: RedisLocation, check_durability: bool = True) -> None:
        self.location = location
        try:
            self._client = redis.Redis.from_url(location.url, socket_connect_timeout=5,
                                                   socket_timeout=SOCKET_TIMEOUT)
        except ValueError as exc:
            raise InputError(f"Redis event log URL {redacted_url(location.url)!r}: {exc}; expected a Redis URL such as "
                             "redis://host:6379/0 (rediss:// for TLS, unix:///path/redis.sock)") from None
        try:
            self._client.ping()
            if check_durability:
                self._check_durability()
        except redis.ConnectionError as exc:
            self._client.close()
            raise InputError(f"the Redis event log at {location} cannot be reached ({exc}); expected a redis-server "
                             "running there (started with --appendonly yes --appendfsync always)") from None
        except BaseException:
            self._client.close()
            raise
        self._append = self._client.register_script(_APPEND)
        self._range = self._client.register_script(_RANGE)
        self._clock = self._client.register_script(_CLOCK)
        self._skipped: set[str] = set()  # entries that are not events, warned about once

    def agree_clock(self, data_end: float, wall: float) -> tuple[float, float]:
        """The data clock's origin every worker shares, (data end, wall time), both epoch seconds: the
        stored one, unless it reads earlier than ``data_end`` at ``wall`` (a later snapshot, or replayed
        events past it), which then replaces it."""
        stored_end, stored_wall = self._clock(keys=[self.location.clock], args=[repr(data_end), repr(wall)])
        return float(stored_end), float(stored_wall)

    def _check_durability(self) -> None:
        try:
            found = {name: _text(self._client.config_get(name).get(name, b"")) for name in _DURABLE}
        except redis.ResponseError as exc:
            logger.warning("%s: CONFIG GET is refused (%s), so appendonly and appendfsync cannot be checked; "
                           "acknowledged events survive a crash of Redis only with appendonly yes and appendfsync "
                           "always", self.location, exc)
            return
        if found != _DURABLE:
            have = ", ".join(f"{k} {v or '(unset)'}" for k, v in found.items())
            want = ", ".join(f"{k} {v}" for k, v in _DURABLE.items())
            raise InputError(f"the Redis event log at {self.location} runs with {have}; expected {want}, so that an acknowledged event "
                             "survives a crash of Redis (set them in redis.conf, or CONFIG SET appendonly yes and "
                             "CONFIG SET appendfsync always)")

    def append(self, events: list[Event]) -> AppendResult:
        """Add the events not seen before, in one atomic step; acknowledged once Redis has fsync'd them.

        One event_id for two different events in ``events`` is an :class:`EventsError` and nothing is
        written; an id the log holds for this event is a duplicate, one it holds for a different event
        is in ``conflicts`` and nothing is written (checked in the same atomic step)."""
        _check_repeats(events)
        result = AppendResult()
        if not events:
            return result
        args: list[str | bytes] = []
        for event in events:
            line = _line(event).rstrip(b"\n")
            args += [event.event_id, _fingerprint(line), line]
        start, end, flags, conflicts = self._append(keys=[self.location.stream, self.location.ids], args=args)
        if conflicts:
            result.conflicts = [_text(c) for c in conflicts]
            return result
        for event, flag in zip(events, flags, strict=True):
            if flag:
                result.new.append(event)
            else:
                result.duplicates.append(event.event_id)
        if result.new:
            result.start, result.end = _text(start), _text(end)
        return result

    def conflicts(self, events: list[Event]) -> list[str]:
        """The ids of ``events`` that the log holds for a different event (a resend is no conflict)."""
        if not events:
            return []
        held = self._client.hmget(self.location.ids, [e.event_id for e in events])
        return [e.event_id for e, fingerprint in zip(events, held, strict=True)
                if fingerprint is not None and _text(fingerprint) != _fingerprint(_line(e).rstrip(b"\n"))]

    def _entries(self, after: str | None = None, until: str = "+") -> Iterator[tuple[str, dict]]:
        """(entry id, stored record) of every entry after ``after`` (None: from the first) up to ``until``
        (included; "+": the end), in order; an entry that is not an event is an InputError naming it."""
        for entry_id, line in self._lines(after, until):
            yield entry_id, self._record(entry_id, line)

    def _lines(self, after: str | None = None, until: str = "+") -> Iterator[tuple[str, bytes]]:
        """(entry id, line) of every entry after ``after`` up to ``until``, in order."""
        low = "-" if after is None else f"({after}"
        while True:
            try:
                count, ids, lines = self._range(keys=[self.location.stream], args=[low, until, READ_CHUNK])
            except redis.ResponseError as exc:
                raise InputError(f"{self.location}: cannot read after position {after!r} ({exc}); expected a "
                                 "stream entry id such as 1700000000000-0, or 0-0 for the start") from None
            if count == 0:
                return
            ids, lines = ids.decode().split(" "), lines.split(b"\n")
            if len(lines) != count:
                raise InputError(f"{self.location}: an entry among {ids[0]} to {ids[-1]} holds a line break; "
                                 "expected one event as JSON per entry, as the event log writes it. Something "
                                 "else wrote to the stream: delete that entry (XDEL).")
            yield from zip(ids, lines, strict=True)
            if count < READ_CHUNK:
                return
            low = f"({ids[-1]}"

    def _record(self, entry_id: str, line: bytes) -> dict:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("event_id"), str):
            raise InputError(f"{self.location}: entry {entry_id} is not an event; expected a field 'e' holding one "
                             "event as JSON, as the event log writes it. Something else wrote to the stream: "
                             "delete that entry (XDEL).")
        return record

    def _event(self, entry_id: str, record: dict) -> Event:
        try:
            return Event.model_validate(record, context={_STORED: True})
        except ValidationError as exc:
            problems = "; ".join(": ".join(p) for p in map(_problem, exc.errors(include_url=False)))
            raise InputError(f"{self.location}: entry {entry_id}, event {record.get('event_id')!r} breaks the "
                             f"contract ({problems}); expected events as the event log writes them") from None

    def records(self) -> Iterator[dict]:
        """Every event of the log as stored (parsed JSON), in order."""
        for _, record in self._entries():
            yield record

    def read(self) -> Iterator[Event]:
        """Every event of the log, in the order appended."""
        for entry_id, record in self._entries():
            yield self._event(entry_id, record)

    def read_after(self, position: Position) -> tuple[list[Event], str]:
        """The events after the entry id ``position`` up to the end, and the id of the last entry read
        (``position`` when there is none). An entry that is not an event is skipped with a warning."""
        events, position = [], str(position)
        for entry_id, event in self._events(position):
            if event is not None:
                events.append(event)
            position = entry_id
        return events, position

    def _events(self, after: str | None = None, until: str = "+") -> Iterator[tuple[str, Event | None]]:
        """(entry id, event) of the entries after ``after``; None for one that is not an event (something
        else wrote it: logged once, so a worker following the log goes on)."""
        for entry_id, line in self._lines(after, until):
            try:
                yield entry_id, self._event(entry_id, self._record(entry_id, line))
            except InputError as exc:
                if entry_id not in self._skipped:
                    self._skipped.add(entry_id)
                    logger.warning("%s; skipped", exc)
                yield entry_id, None

    def end(self) -> str:
        """The id of the log's last entry now (:attr:`start_position` for an empty log)."""
        last = self._client.xrevrange(self.location.stream, count=1)
        return _text(last[0][0]) if last else self.start_position

    def chunks(self) -> Iterator[tuple[list[Event], str]]:
        """The log's events in order, :data:`CHUNK_EVENTS` at a time, each with the log's end when the
        read began (what is appended meanwhile is left to :meth:`read_after` that end)."""
        end, chunk = self.end(), []
        if end != self.start_position:
            for _, event in self._events(until=end):
                if event is None:
                    continue
                chunk.append(event)
                if len(chunk) == CHUNK_EVENTS:
                    yield chunk, end
                    chunk = []
        yield chunk, end

    def customer_events(self, customer_id: str) -> list[dict]:
        """The events of ``customer_id`` (compared as trimmed text), as stored."""
        wanted = customer_id.strip()
        return [r for r in self.records() if str(r.get(CUSTOMER_ID, "")).strip() == wanted]

    def remove_customers(self, customer_ids: Collection[str]) -> Removal:
        """Delete the events of ``customer_ids`` (trimmed text) and their ids, so an id can be taken again.

        The deletion is one transaction that happens only if nothing was appended since the scan (else
        the new entries are scanned too and it is tried again), so no event of theirs stays behind."""
        wanted = {c.strip() for c in customer_ids}
        removal, entries, event_ids = Removal(), [], []
        index, last = 0, None
        with self._client.pipeline() as pipe:
            while True:
                pipe.watch(self.location.stream)
                for entry_id, record in self._entries(last):
                    customer = record.get(CUSTOMER_ID)
                    if isinstance(customer, str) and customer.strip() in wanted:
                        removal.removed[customer.strip()] += 1
                        removal.positions.append(index)
                        entries.append(entry_id)
                        event_ids.append(record["event_id"])
                    index, last = index + 1, entry_id
                if not entries:
                    pipe.unwatch()
                    return removal
                pipe.multi()
                pipe.xdel(self.location.stream, *entries)
                pipe.hdel(self.location.ids, *event_ids)
                try:
                    pipe.execute()
                except redis.WatchError:  # appended meanwhile: scan what came after ``last`` too
                    continue
                return removal

    def forget(self, customer_ids: Collection[str]) -> Counter[str]:
        """Delete the events of ``customer_ids``; returns how many were removed per customer id."""
        return self.remove_customers(customer_ids).removed

    def __len__(self) -> int:
        return self._client.hlen(self.location.ids)

    def __contains__(self, event_id: object) -> bool:
        return isinstance(event_id, str) and bool(self._client.hexists(self.location.ids, event_id.strip()))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
