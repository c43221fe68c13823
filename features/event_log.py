"""The event log: events taken by ``POST /events`` (and the stream consumer), validated against the data
contract and appended durably, one JSON line each, before they are acknowledged.

An :class:`Event` passes the rules the contract applies to a row of ``events`` (an ``order``: to its
lines as rows of ``orders``, ``order_id`` = ``event_id``): ids are trimmed text (1 to
:data:`MAX_ID_LENGTH` characters, no control or invisible formatting characters), the event type is
one of the contract's or ``order``, quantities are non-zero whole numbers within the contract's limit
(negative: a return), prices finite, not negative, within the limit; no line repeats another exactly.
``occurred_at`` is stored as naive UTC: a moment with an offset is converted, one without is a local
time of the shop's time zone (as :mod:`features.timezones` reads tables, daylight saving time included),
and one more than :data:`FUTURE_TOLERANCE` after the service's clock is refused, as the contract
refuses future rows. :func:`parse_events` reads a request's body, all or nothing.

:class:`EventLog` appends: each new event is written as one line, flushed and ``fsync``'d (unless
``fsync=False``) before :meth:`EventLog.append` returns, so an acknowledged event survives a killed
process (and, with fsync, a power cut). An ``event_id`` already in the log, or repeated in a batch, is
acknowledged and ignored. Writers hold an exclusive ``flock`` while they append and first read what
other processes appended, so several processes share one log and still apply each id once; readers
hold a shared one while they find the end of the complete lines. A line torn by a killed writer is
skipped on read with one warning and cut off before the next append. ``privacy forget`` rewrites the
log (:func:`forget_customers`) under the exclusive lock and renames the new file in place; a writer
holding the old file reopens the path.

:func:`event_log_frames` gives the log as contract tables (``events``, ``orders``); ``load_data_dir(...,
event_log=...)`` adds them to a data directory's tables, so that training reads them.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import math
import os
import tempfile
import threading
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Protocol, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb
import pandas as pd
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from features.errors import InputError
from features.schema import (
    CUSTOMER_ID,
    EVENT_TYPE,
    MAX_PRICE,
    MAX_QUANTITY,
    OCCURRED_AT,
    ORDER_ID,
    ORDERED_AT,
    PRODUCT_ID,
    QUANTITY,
    SPECS,
    UNIT_PRICE,
    EventType,
    Table,
)
from features.timezones import SHIFTED_FROM, SHIFTED_UNTIL, check_timezone
from features.validate import now_utc

__all__ = ["EVENT_TYPES", "FUTURE_TOLERANCE", "MAX_EVENTS", "MAX_ID_LENGTH", "ORDER", "AppendResult", "Event",
           "EventBatch", "EventLog", "EventLogLike", "EventsError", "OrderLine", "Position", "customer_events",
           "event_log_frames", "forget_customers", "held_rows", "parse_events", "records_frames"]

logger = logging.getLogger(__name__)

ORDER = "order"  # the event type of a purchase: its lines are rows of ``orders``
EVENT_TYPES = (*(e.value for e in EventType), ORDER)
MAX_ID_LENGTH = 200
MAX_EVENTS = 10_000  # per batch
FUTURE_TOLERANCE = timedelta(minutes=5)  # clocks differ: a moment this far after the service's clock is fine
MAX_PROBLEMS = 20  # named in one error message; the rest are counted
EVENT_FIELDS = ("event_id", "customer_id", "event_type", "occurred_at", "product_id", "lines")
LINE_FIELDS = (PRODUCT_ID, QUANTITY, UNIT_PRICE)
_STORED = "stored"  # validation context key: a line of the log (naive UTC, no future check)
_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}  # control, formatting, surrogate, private use, line breaks
_SHIFTED = (datetime.fromisoformat(SHIFTED_FROM), datetime.fromisoformat(SHIFTED_UNTIL))
_READ_CHUNK = 1 << 24
_ID_PREFIX = b'{"event_id":"'  # how every line of the log starts


def _expected_id() -> str:
    return f"text of 1 to {MAX_ID_LENGTH} characters without control characters"


EXPECTED = {  # what each field must hold, for messages
    "event_id": _expected_id() + ", unique per event",
    CUSTOMER_ID: _expected_id(),
    PRODUCT_ID: _expected_id(),
    EVENT_TYPE: f"one of {', '.join(EVENT_TYPES)}",
    OCCURRED_AT: SPECS[Table.EVENTS].column(OCCURRED_AT).expected,
    "lines": "a list of order lines, each {product_id, quantity, unit_price}",
    QUANTITY: f"a non-zero whole number (negative: a return) within ±{MAX_QUANTITY:,.0f}",
    UNIT_PRICE: f"a finite number from 0 to {MAX_PRICE:,.0f}",
    "events": f"a list of 1 to {MAX_EVENTS:,} events",
}


def _shown(value: object) -> str:
    """A value as it may appear in a message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _identifier(value: object, info: ValidationInfo) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"got {type(value).__name__} {_shown(value)}; expected {EXPECTED[info.field_name]}")  # noqa: TRY004 - pydantic reports ValueError
    text = value.strip()
    if not text:
        raise ValueError(f"empty; expected {EXPECTED[info.field_name]}")
    if len(text) > MAX_ID_LENGTH:
        raise ValueError(f"{len(text):,} characters; expected {EXPECTED[info.field_name]}")
    bad = None if text.isprintable() else next((c for c in text if unicodedata.category(c) in _INVISIBLE), None)
    if bad is not None:
        raise ValueError(f"holds the control character U+{ord(bad):04X}; expected {EXPECTED[info.field_name]}")
    return text


def _optional_identifier(value: object, info: ValidationInfo) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None  # as the contract reads an empty product_id
    return _identifier(value, info)


def _number(value: object, name: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"got {_shown(value)}; expected {EXPECTED[name]}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"got {type(value).__name__} {_shown(value)}; expected {EXPECTED[name]}")  # noqa: TRY004 - pydantic reports ValueError
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise ValueError(f"got {_shown(value)}; expected {EXPECTED[name]}")
    return value


def _quantity(value: object) -> int:
    number = _number(value, QUANTITY)
    if number != int(number):
        raise ValueError(f"got {number}, not a whole number; expected {EXPECTED[QUANTITY]}")
    if number == 0:
        raise ValueError(f"zero; expected {EXPECTED[QUANTITY]}")
    if abs(number) > MAX_QUANTITY:
        raise ValueError(f"got {number:,.0f}; expected {EXPECTED[QUANTITY]}")
    return int(number)


def _unit_price(value: object) -> float:
    number = float(_number(value, UNIT_PRICE))
    if number < 0 or number > MAX_PRICE:
        raise ValueError(f"got {number:,}; expected {EXPECTED[UNIT_PRICE]}")
    return number


Identifier = Annotated[str, BeforeValidator(_identifier)]
OptionalIdentifier = Annotated[str | None, BeforeValidator(_optional_identifier)]


@functools.cache
def _zone(timezone: str | None) -> ZoneInfo | None:
    """The shop's zone (None: UTC); an unknown name is an InputError."""
    name = check_timezone(timezone)
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(f"time zone {timezone!r} is not in this system's time zone database; expected an IANA "
                         "name such as Europe/London (install the tzdata package for more).") from None


def _local_to_utc(moment: datetime, zone: ZoneInfo | None) -> datetime:
    """Naive ``moment``, a local time in ``zone``, as naive UTC: a time skipped by daylight saving time
    has the offset before the change, a repeated one is the later, as :mod:`features.timezones` does."""
    if zone is None or not _SHIFTED[0] <= moment <= _SHIFTED[1]:
        return moment
    early, late = moment.replace(tzinfo=zone, fold=0), moment.replace(tzinfo=zone, fold=1)
    chosen = early
    if early.utcoffset() != late.utcoffset():  # repeated (both exist) or skipped (neither does)
        exists = late.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == moment
        chosen = late if exists else early
    return chosen.astimezone(UTC).replace(tzinfo=None)


def _moment(value: object) -> datetime:
    """A datetime from an ISO 8601 text (or a datetime); naive or aware as written."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError(f"got {type(value).__name__} {_shown(value)}; expected {EXPECTED[OCCURRED_AT]}")  # noqa: TRY004 - pydantic reports ValueError
    text = value.strip()
    head, _, offset = text.rpartition(" ")  # Shopify's "2024-03-01 10:15:00 +0100"
    if head and offset[:1] in "+-" and offset[1:2].isdigit():
        text = head + offset
    if text[-1:] in "zZ":
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"got {_shown(value)}; expected {EXPECTED[OCCURRED_AT]}") from None


class OrderLine(BaseModel):
    """One line of an order: a row of ``orders``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    product_id: Identifier
    quantity: Annotated[int, BeforeValidator(_quantity)]
    unit_price: Annotated[float, BeforeValidator(_unit_price)]


class Event(BaseModel):
    """One event: a row of ``events``, or for ``order`` the order whose lines are rows of ``orders``.

    Validation context (``model_validate(data, context=...)``): ``timezone``, the shop's IANA zone of
    naive times (default UTC), and ``now``, the service's clock (default: the wall clock)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Identifier
    customer_id: Identifier
    event_type: str
    occurred_at: datetime
    product_id: OptionalIdentifier = None
    lines: list[OrderLine] | None = Field(None, validate_default=True)

    @field_validator("event_type", mode="before")
    @classmethod
    def _event_type(cls, value: object) -> str:
        if not isinstance(value, str) or value.strip() not in EVENT_TYPES:
            raise ValueError(f"unknown event type {_shown(value)}; expected {EXPECTED[EVENT_TYPE]}")
        return value.strip()

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _occurred_at(cls, value: object, info: ValidationInfo) -> datetime:
        context = info.context or {}
        moment = _moment(value)
        try:
            if context.get(_STORED):
                return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
            if moment.tzinfo is not None:
                moment = moment.astimezone(UTC).replace(tzinfo=None)
            else:
                moment = _local_to_utc(moment, _zone(context.get("timezone")))
        except OverflowError:  # 0001-01-01 east of UTC, 9999-12-31 west of it
            raise ValueError(f"got {_shown(value)}, outside the years a moment in UTC can hold; expected an ISO 8601 "
                             "time such as 2024-03-01T12:30:00Z") from None
        now = context.get("now") or now_utc()
        now = now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now
        if moment > now + FUTURE_TOLERANCE:
            raise ValueError(f"{moment:%Y-%m-%dT%H:%M:%S}Z is in the future (after {now:%Y-%m-%dT%H:%M:%S}Z); "
                             f"expected a moment that has happened, at most {FUTURE_TOLERANCE.seconds // 60} minutes "
                             "after the service's clock")
        return moment

    @field_validator("product_id")
    @classmethod
    def _product_of_order(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get(EVENT_TYPE) == ORDER:
            raise ValueError(f"given on an order; expected the order's products in its lines, and no {PRODUCT_ID}")
        return value

    @field_validator("lines")
    @classmethod
    def _lines(cls, value: list[OrderLine] | None, info: ValidationInfo) -> list[OrderLine] | None:
        kind = info.data.get(EVENT_TYPE)
        if kind == ORDER and not value:
            raise ValueError(f"{'missing' if value is None else 'empty'}; expected an order's lines: "
                             f"{EXPECTED['lines']}")
        if kind is not None and kind != ORDER and value is not None:
            raise ValueError(f"given on an event of type {kind}; expected lines only on an {ORDER}")
        first: dict[OrderLine, int] = {}
        for i, line in enumerate(value or []):
            if line in first:  # the contract rejects an exact duplicate row
                raise ValueError(f"lines[{i}] repeats lines[{first[line]}] exactly; expected each line once "
                                 "(add up their quantities)")
            first[line] = i
        return value


class EventBatch(BaseModel):
    """The body of ``POST /events``."""

    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)


class EventsError(InputError):
    """Events that break the contract; ``problems`` holds (field, what was wrong; expected what)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        shown = [f"{where}: {what}" if where else what for where, what in problems[:MAX_PROBLEMS]]
        more = f"; and {len(problems) - MAX_PROBLEMS:,} more" if len(problems) > MAX_PROBLEMS else ""
        super().__init__("; ".join(shown) + more)


def _where(loc: tuple) -> str:
    """``("events", 3, "lines", 0, "quantity")`` as ``events[3].lines[0].quantity``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _problem(error: dict, single: bool = False) -> tuple[str, str]:
    """(field, what was wrong; expected what) for one pydantic error of an event (``single``) or a body."""
    loc, kind = tuple(error["loc"]), error["type"]
    name = next((p for p in reversed(loc) if isinstance(p, str)), "")
    if "lines" in loc[:-1]:
        owner, allowed = "an order line", LINE_FIELDS
    elif len(loc) == 1 and not single:
        owner, allowed = "the body", ("events",)
    else:
        owner, allowed = "an event", EVENT_FIELDS
    if kind == "extra_forbidden":
        return _where(loc), f"not a field of {owner}; expected only {', '.join(allowed)}"
    if kind == "missing":
        return _where(loc), f"missing; expected {EXPECTED.get(name, 'a value')}"
    if kind == "model_type":
        what = "an order line" if name == "lines" else "an event"
        return _where(loc), f"got {type(error['input']).__name__}; expected {what} (a JSON object)"
    message = error["msg"].removeprefix("Value error, ")
    if "; expected" not in message:
        message += f"; expected {EXPECTED.get(name, 'a valid value')}"
    return _where(loc), message


def _check_repeats(events: list[Event], where: str = "events") -> None:
    """An EventsError naming both positions where one event_id holds two different events."""
    first: dict[str, int] = {}
    problems = []
    for i, event in enumerate(events):
        j = first.setdefault(event.event_id, i)
        if j != i and events[j] != event:
            problems.append((f"{where}[{i}].event_id", (f"{event.event_id!r} is also {where}[{j}]'s, a different "
                             "event; expected one event per event_id (the same event twice is taken once)")))
    if problems:
        raise EventsError(problems)


def parse_events(payload: object, timezone: str | None = None, now: datetime | None = None) -> list[Event]:
    """The events of a ``POST /events`` body, ``{"events": [...]}`` or one event object, all or nothing.

    Naive ``occurred_at`` values are local times of ``timezone`` (the shop's; None: UTC); a moment more
    than :data:`FUTURE_TOLERANCE` after ``now`` (default: the wall clock) is refused. Every bad field is
    named in one :class:`EventsError`. The same event twice stays twice here (the log takes it once);
    one ``event_id`` for two different events is an error naming both positions."""
    context, single = {"timezone": timezone, "now": now}, True
    _zone(timezone)  # an unknown zone is the caller's error, not the events'
    if not isinstance(payload, dict):
        raise EventsError([("", (f"got {type(payload).__name__}; expected a JSON object: {{\"events\": [...]}} "
                                 "or one event"))])
    try:
        if "events" not in payload:
            single = True
            return [Event.model_validate(payload, context=context)]
        single = False
        events = payload["events"]
        if isinstance(events, list) and not 1 <= len(events) <= MAX_EVENTS:
            raise EventsError([("events", (f"{len(events):,} events; expected 1 to {MAX_EVENTS:,} per request "
                                           "(split a larger batch)"))])
        batch = EventBatch.model_validate(payload, context=context).events
    except ValidationError as exc:
        raise EventsError([_problem(e, single) for e in exc.errors(include_url=False)]) from None
    _check_repeats(batch)
    return batch


def _line(event: Event) -> bytes:
    """The log's line for ``event``: compact JSON, ASCII, ``occurred_at`` in UTC with its Z."""
    record: dict[str, Any] = {"event_id": event.event_id, CUSTOMER_ID: event.customer_id,
                              EVENT_TYPE: event.event_type, OCCURRED_AT: event.occurred_at.isoformat() + "Z"}
    if event.product_id is not None:
        record[PRODUCT_ID] = event.product_id
    if event.lines is not None:
        record["lines"] = [line.model_dump() for line in event.lines]
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _event_id(line: bytes, path: Path, number: int) -> str:
    """The event_id of a line of the log; the log writes it first, so most lines need no full parse."""
    if line.startswith(_ID_PREFIX):
        end = line.find(b'"', len(_ID_PREFIX))
        if end > 0 and b"\\" not in line[len(_ID_PREFIX):end]:
            return line[len(_ID_PREFIX):end].decode()
    try:
        record = json.loads(line)
        event_id = record["event_id"]
        if isinstance(event_id, str):
            return event_id
    except (ValueError, TypeError, KeyError):
        pass
    raise _damaged(path, number, "is not an event")


def _damaged(path: Path, number: int, what: str) -> InputError:
    return InputError(f"{path}: line {number:,} {what}; expected one event as JSON per line, as the event log "
                      "writes it. Something else changed the file: restore it from a backup, or move the line out "
                      "(its events are then not in the data).")


def _complete_end(fd: int, size: int) -> int:
    """The end of the last complete line (newline included) of the first ``size`` bytes of ``fd``."""
    end = size
    while end > 0:
        start = max(0, end - (1 << 16))
        chunk = os.pread(fd, end - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def _read_lines(fd: int, start: int, end: int) -> Iterator[bytes]:
    """The complete lines of ``fd`` between ``start`` and ``end`` (a line end), newlines stripped."""
    rest = b""
    while start < end:
        chunk = os.pread(fd, min(_READ_CHUNK, end - start), start)
        if not chunk:
            break
        start += len(chunk)
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        yield from parts


def _warn_torn(path: Path, size: int, end: int, cut: bool = False) -> None:
    done = "cut off" if cut else "skipped (the next append cuts them off)"
    logger.warning("%s: the last %d byte(s) are a line a killed writer left unfinished, its event never "
                   "acknowledged: %s", path, size - end, done)


def _records(path: Path) -> Iterator[dict]:
    """The events of the log at ``path`` as parsed JSON, in order, each event_id once (the first); a
    torn last line skipped with one warning; a bad line before it an InputError naming it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # writers hold LOCK_EX while they write: no half line of theirs is seen
        try:
            size = os.fstat(fd).st_size
            end = _complete_end(fd, size)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        if end < size:
            _warn_torn(path, size, end)
        seen: set[str] = set()
        for number, line in enumerate(_read_lines(fd, 0, end), 1):
            try:
                record = json.loads(line)
            except ValueError:
                raise _damaged(path, number, "is not JSON") from None
            if not isinstance(record, dict) or not isinstance(record.get("event_id"), str):
                raise _damaged(path, number, "is not an event")
            if record["event_id"] not in seen:
                seen.add(record["event_id"])
                yield record
    finally:
        os.close(fd)


def _stored_event(record: dict, path: Path | str) -> Event:
    try:
        return Event.model_validate(record, context={_STORED: True})
    except ValidationError as exc:
        raise InputError(f"{path}: event {record.get('event_id')!r} breaks the contract "
                         f"({'; '.join(': '.join(p) for p in map(_problem, exc.errors(include_url=False)))}); "
                         "expected events as the event log writes them. Restore the file from a backup.") from None


Position = int | str  # where a log ends: a byte offset in a file, a stream entry id in Redis


@dataclass
class AppendResult:
    """What :meth:`EventLog.append` did: the events written, and the ids it acknowledged and ignored."""

    new: list[Event] = field(default_factory=list)  # not seen before, in order: now in the log
    duplicates: list[str] = field(default_factory=list)  # already in the log, or repeated in the batch
    start: Position | None = None  # the log's end just before the new events (None: nothing written)
    end: Position | None = None  # the log's end just after them
    conflicts: list[str] = field(default_factory=list)  # ids the log holds for a different event: nothing written


CHUNK_EVENTS = 10_000  # events read at a time when a log is replayed


class EventLogLike(Protocol):
    """What the service needs of an event log: a file (:class:`EventLog`) or the shared one in Redis
    (:class:`features.redis_log.RedisEventLog`)."""

    shared: bool  # other processes append too: follow it with read_after
    start_position: Position  # the position of an empty log

    def append(self, events: list[Event]) -> AppendResult: ...
    def conflicts(self, events: list[Event]) -> list[str]: ...
    def read_after(self, position: Position) -> tuple[list[Event], Position]: ...
    def chunks(self) -> Iterator[tuple[list[Event], Position]]: ...
    def records(self) -> Iterator[dict]: ...
    def __len__(self) -> int: ...
    def __contains__(self, event_id: object) -> bool: ...
    def close(self) -> None: ...


class EventLog:
    """An append-only JSON-lines file of events, each event_id once; shared by threads and processes.

    Positions are byte offsets; one service process writes it (``shared`` is False: nothing it did not
    append itself appears in it while it runs, but for a forget's rewrite)."""

    shared = False
    start_position: Position = 0

    def __init__(self, path: Path | str, fsync: bool = True) -> None:
        self.path, self.fsync = Path(path), fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd = -1
        with self._lock:
            self._hold(fcntl.LOCK_SH)
            try:
                self._catch_up(cut=False)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _open(self) -> None:
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._ids: dict[str, int] = {}  # event_id -> hash of its line (this process's), to tell a resend from a reuse
        self._end = 0  # bytes of complete lines read into _ids
        self._number = 0  # lines read
        if created and self.fsync:  # the new file's name must survive a power cut too
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def _hold(self, kind: int) -> None:
        """Take ``kind`` of flock on the file now at ``path``, reopening it when a rewrite replaced it."""
        while True:
            if self._fd < 0:
                self._open()
            fcntl.flock(self._fd, kind)
            try:
                if os.path.samestat(os.fstat(self._fd), os.stat(self.path)):
                    return
            except FileNotFoundError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    def _catch_up(self, cut: bool) -> None:
        """Read the ids other writers appended; with ``cut`` (exclusive lock held), cut off a torn last line."""
        size = os.fstat(self._fd).st_size
        if size < self._end:  # shortened by something else than a writer: read it again
            self._ids, self._end, self._number = {}, 0, 0
        if size == self._end:
            return
        end = _complete_end(self._fd, size)
        for line in _read_lines(self._fd, self._end, end):
            self._number += 1
            self._ids[_event_id(line, self.path, self._number)] = hash(line.rstrip(b"\n"))
        self._end = end
        if end < size and cut:
            _warn_torn(self.path, size, end, cut=True)
            os.ftruncate(self._fd, end)

    def append(self, events: list[Event]) -> AppendResult:
        """Write the events not seen before, one line each, and fsync them (with ``fsync``) before returning.

        All or nothing: one event_id for two different events is an :class:`EventsError` and nothing
        is written; an id the log holds for a different event is in ``conflicts`` and nothing is written
        (checked under the writers' lock: no other writer slips in between); a failed write is cut off
        again and raised."""
        _check_repeats(events)
        with self._lock:
            self._hold(fcntl.LOCK_EX)
            try:
                self._catch_up(cut=True)
                result, batch = AppendResult(), set()
                result.conflicts = [e.event_id for e in events if e.event_id in self._ids
                                    and self._ids[e.event_id] != hash(_line(e).rstrip(b"\n"))]
                if result.conflicts:
                    return result
                for event in events:
                    if event.event_id in self._ids or event.event_id in batch:
                        result.duplicates.append(event.event_id)
                    else:
                        batch.add(event.event_id)
                        result.new.append(event)
                if result.new:
                    lines = [_line(e) for e in result.new]
                    result.start = self._end
                    self._write(b"".join(lines))
                    result.end = self._end
                    self._ids.update((e.event_id, hash(line.rstrip(b"\n")))
                                     for e, line in zip(result.new, lines, strict=True))
                    self._number += len(result.new)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        return result

    def _write(self, data: bytes) -> None:
        try:
            written = 0
            while written < len(data):  # a short write: finish it before anything else is appended
                written += os.write(self._fd, data[written:])
            if self.fsync:
                os.fsync(self._fd)
        except BaseException:
            os.ftruncate(self._fd, self._end)  # none of the batch stays: it was not acknowledged
            raise
        self._end += len(data)

    def read(self) -> Iterator[Event]:
        """Every event of the log, in the order appended."""
        for record in _records(self.path):
            yield _stored_event(record, self.path)

    def records(self) -> Iterator[dict]:
        """Every event of the log as stored (parsed JSON), in order."""
        return _records(self.path)

    def chunks(self) -> Iterator[tuple[list[Event], Position]]:
        """The log's events in order, :data:`CHUNK_EVENTS` at a time, each with the log's end when the
        read began (its one writer, the service, replays it before it takes events)."""
        end, chunk = self.end(), []
        for record in _records(self.path):
            chunk.append(_stored_event(record, self.path))
            if len(chunk) == CHUNK_EVENTS:
                yield chunk, end
                chunk = []
        yield chunk, end

    def end(self) -> int:
        """The log's end now (after its last complete line)."""
        self._synced()
        return self._end

    def read_after(self, position: Position) -> tuple[list[Event], Position]:
        """The events after byte ``position`` up to the log's end now, and that end."""
        with self._lock:
            self._hold(fcntl.LOCK_SH)
            try:
                end = _complete_end(self._fd, os.fstat(self._fd).st_size)
                lines = list(_read_lines(self._fd, int(position), end))
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        return [_stored_event(json.loads(line), self.path) for line in lines], end

    def conflicts(self, events: list[Event]) -> list[str]:
        """The ids of ``events`` that the log holds for a different event (a resend of the same event is
        no conflict: :meth:`append` takes it as a repeat)."""
        ids = self._synced()
        return [e.event_id for e in events if e.event_id in ids and ids[e.event_id] != hash(_line(e).rstrip(b"\n"))]

    def _synced(self) -> dict[str, int]:
        with self._lock:
            self._hold(fcntl.LOCK_SH)
            try:
                self._catch_up(cut=False)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            return self._ids

    def __len__(self) -> int:
        return len(self._synced())

    def __contains__(self, event_id: object) -> bool:
        return isinstance(event_id, str) and event_id.strip() in self._synced()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def event_log_frames(path: Path | str) -> dict[Table, pd.DataFrame]:
    """The log file as contract tables (see :func:`records_frames`); empty frames for a log that does not exist."""
    return records_frames(_records(Path(path)), str(path))


def records_frames(records: Iterable[dict], where: str) -> dict[Table, pd.DataFrame]:
    """Stored events as contract tables: ``events`` (every event but orders) and ``orders`` (a row per
    line, ``order_id`` = ``event_id``), timestamps naive UTC.

    The records are taken as the log wrote them (validated when appended), without validating each
    event again; one that lacks a field is an InputError naming ``where`` and the event."""
    events, orders = [], []
    for record in records:
        try:
            if record[EVENT_TYPE] == ORDER:
                orders.extend((record["event_id"], record[CUSTOMER_ID], line[PRODUCT_ID], line[QUANTITY],
                               line[UNIT_PRICE], record[OCCURRED_AT]) for line in record["lines"])
            else:
                events.append((record[CUSTOMER_ID], record[EVENT_TYPE], record.get(PRODUCT_ID), record[OCCURRED_AT]))
        except (KeyError, TypeError):
            _stored_event(record, where)  # names what is wrong
            raise
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
                         "event log writes them. Restore it from a backup.") from None
    return frames


def held_rows(con: duckdb.DuckDBPyConnection, records: Iterable[dict]) -> set[str]:
    """Ids of the events (as the log stores them) that the contract tables of ``con`` hold already: an
    order whose order id the ``orders`` table has, an event whose row the ``events`` table has (every
    column equal). The shop's next export may hold what the service took as events: applying them onto
    such data would count them twice (:func:`features.io.load_data_dir` leaves the same rows out)."""
    orders, events = [], []
    for record in records:
        if record.get(EVENT_TYPE) == ORDER:
            orders.append(record["event_id"])
        else:
            events.append((record["event_id"], record[CUSTOMER_ID], record[EVENT_TYPE], record.get(PRODUCT_ID),
                           record[OCCURRED_AT]))
    held: set[str] = set()
    if orders:
        con.register("_log_order_ids", pd.DataFrame({"event_id": orders}))
        try:
            held |= {r[0] for r in con.execute(f"SELECT event_id FROM _log_order_ids WHERE event_id IN "
                                               f"(SELECT CAST({ORDER_ID} AS VARCHAR) FROM orders)").fetchall()}
        finally:
            con.unregister("_log_order_ids")
    if events:
        frame = pd.DataFrame(events, columns=["event_id", CUSTOMER_ID, EVENT_TYPE, PRODUCT_ID, OCCURRED_AT])
        frame[OCCURRED_AT] = pd.to_datetime(frame[OCCURRED_AT], format="ISO8601", utc=True).dt.tz_localize(None)
        same = " AND ".join(f"d.{c} IS NOT DISTINCT FROM l.{c}" for c in (CUSTOMER_ID, EVENT_TYPE, PRODUCT_ID,
                                                                           OCCURRED_AT))
        con.register("_log_events", frame)
        try:
            held |= {r[0] for r in con.execute(f"SELECT l.event_id FROM _log_events l WHERE EXISTS "
                                               f"(SELECT 1 FROM events d WHERE {same})").fetchall()}
        finally:
            con.unregister("_log_events")
    return held


def customer_events(path: Path | str, customer_id: str) -> list[dict]:
    """The events of ``customer_id`` (compared as trimmed text) in the log, as stored."""
    wanted = customer_id.strip()
    return [r for r in _records(Path(path)) if str(r.get(CUSTOMER_ID, "")).strip() == wanted]


def forget_customers(path: Path | str, customer_ids: Collection[str]) -> Counter[str]:
    """Rewrite the log without the events of ``customer_ids`` (trimmed text); returns how many were removed
    per customer id (empty: none, and the log is left untouched). Every other line is kept byte for
    byte, a torn last line dropped. The rewrite holds the writers' exclusive lock and replaces the file
    atomically (temp file, fsync, rename), so no event appended before or after it is lost; a symlinked
    log has its target rewritten; the file keeps its permissions. A log that does not exist is an error."""
    path = Path(os.path.realpath(path))
    wanted = {c.strip() for c in customer_ids}
    removed: Counter[str] = Counter()
    with open(path, "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when ``handle`` closes, after the rename
        fd = handle.fileno()
        end = _complete_end(fd, os.fstat(fd).st_size)
        kept = []
        for number, line in enumerate(_read_lines(fd, 0, end), 1):
            try:
                record = json.loads(line)
            except ValueError:
                raise _damaged(path, number, "is not JSON") from None
            customer = record.get(CUSTOMER_ID) if isinstance(record, dict) else None
            if isinstance(customer, str) and customer.strip() in wanted:
                removed[customer.strip()] += 1
            else:
                kept.append(line + b"\n")
        if not removed:
            return removed
        out, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(out, os.fstat(fd).st_mode & 0o777)
            with os.fdopen(out, "wb") as target:
                target.writelines(kept)
                target.flush()
                os.fsync(target.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return removed
