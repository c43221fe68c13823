"""The segments worker's stores in the service's state folder, for ``privacy forget`` and ``export``: the
trigger outbox (``outbox.jsonl``, :mod:`serving.outbox`), the delayed triggers' journal (``timers.jsonl``,
:mod:`serving.triggers`), and the two cursors that count into them and into the event log:
``webhook.cursor`` (the byte offset in the outbox of the next entry to deliver, :mod:`serving.webhook`) and
``segments.cursor`` (how many events of the event log the worker handled, :mod:`serving.live_segments`).

**The service must be stopped.** A running service holds the outbox open with an exclusive ``flock``,
keeps appending to the file it opened (a file renamed over it would not be seen: its later transitions
and timers would go to the replaced file and be lost) and keeps its cursors and each customer's segments
and timers in memory (it would write its own counts over the ones corrected here). So
:meth:`LiveStores.open` takes that same lock without waiting and refuses when the service holds it
(:class:`ServiceRunningError`), and keeps it until :meth:`LiveStores.close`: a service started meanwhile
fails with "the trigger outbox ... is open for writing elsewhere"; start it again after the forget.

Everything is read and checked when the stores are opened, before the forget writes anything: a line
that is not what the service writes (a store that cannot be read) is an ``InputError`` naming the file
and line. A torn line (what a writer killed mid-write leaves: an unfinished last line, or in the outbox
an unfinished record that the next open ended with a newline) carries nothing any reader sees, but may
hold a part of an id: a rewrite drops every such line. Every other line is kept byte for byte; a store
is rewritten only when something in it goes (temp file, fsync, rename, then the folder fsynced; a
symlinked store has its target rewritten; the file keeps its permissions).

The cursors are kept right:

* ``webhook.cursor`` is moved to the new offset of the first entry it had not delivered: the bytes of
  the kept lines that began before the old offset (an offset inside a line, left by a crash, counts that
  line as passed, as the webhook's reader does). It is written *before* the outbox is replaced, so a
  crash between the two leaves a smaller offset against the old outbox: entries already delivered are
  sent again (the webhook is at least once, with an id the receiver dedupes on), none is skipped.
* ``segments.cursor`` is lowered by the removed events among those it had counted (each ``event_id``
  counted once, at its first line, as the service replays the log). It is written *before* the event
  log is rewritten, so a crash between the two makes the worker handle those last events again after a
  restart, which changes nothing (memberships are compared with the outbox, a fired cart is not armed
  again); it never skips one.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from features.errors import InputError
from features.event_store import EventSource, source_records
from features.io import atomic_write
from features.redis_log import RedisLocation
from features.schema import CUSTOMER_ID
from serving.live_segments import OUTBOX_FILE, SEGMENTS_CURSOR_FILE, TIMERS_FILE, WEBHOOK_CURSOR_FILE
from serving.outbox import read_lines

__all__ = ["OUTBOX", "SEGMENTS_CURSOR", "TIMERS", "WEBHOOK_CURSOR", "LiveStores", "ServiceRunningError",
           "customer_records"]

# the names serving.live_segments.LiveSegments gives them in the state folder
OUTBOX, TIMERS, WEBHOOK_CURSOR, SEGMENTS_CURSOR = OUTBOX_FILE, TIMERS_FILE, WEBHOOK_CURSOR_FILE, SEGMENTS_CURSOR_FILE
_RECORD_START = b'{"id":"'  # how the outbox writes every record: a torn one starts so


class ServiceRunningError(InputError):
    """The running service holds the outbox: the forget cannot rewrite its stores."""


@dataclass(frozen=True)
class _Line:
    start: int  # byte offset in the file
    data: bytes  # newline included, when it has one
    record: dict | None  # None: a torn line

    @property
    def customer(self) -> str | None:
        return None if self.record is None else self.record[CUSTOMER_ID].strip()


def _read(path: Path, what: str, torn_inside: bool) -> list[_Line]:
    """Every line of ``path``; a blank or torn line (the unfinished last one and, with ``torn_inside``, an
    unfinished outbox record ended by the next open) has no record; any other line that is not a JSON object with a
    text ``id`` and ``customer_id`` is an InputError naming it."""
    lines, end = [], 0
    for end, data in read_lines(path):
        start, body = end - len(data), data.rstrip(b"\n")
        try:
            record = json.loads(body)
        except ValueError:
            if not body.strip() or torn_inside and (body.startswith(_RECORD_START) or _RECORD_START.startswith(body)):
                lines.append(_Line(start, data, None))
                continue
            raise _damaged(path, what, len(lines) + 1, "is not JSON") from None
        if not (isinstance(record, dict) and isinstance(record.get("id"), str)
                and isinstance(record.get(CUSTOMER_ID), str)):
            raise _damaged(path, what, len(lines) + 1, f"has no text id and {CUSTOMER_ID}")
        lines.append(_Line(start, data, record))
    size = path.stat().st_size
    if size > end:  # a last line without its newline: a write a kill cut short, never acknowledged
        with open(path, "rb") as f:
            f.seek(end)
            lines.append(_Line(end, f.read(), None))
    return lines


def _damaged(path: Path, what: str, number: int, how: str) -> InputError:
    return InputError(f"{path}: line {number:,} {how}; expected one {what} as JSON per line, as the service writes "
                      "it. Something else changed the file: restore it from a backup, or move the line out, and run "
                      "the same command again. Nothing was changed.")


def _log_records(event_log: EventSource | str) -> Iterator[dict]:
    """The events of the log as stored, in order (each with a text ``event_id``); a line of a file log that
    is not an event is an InputError naming it."""
    if isinstance(event_log, RedisLocation):
        yield from source_records(event_log)
        return
    for number, (_, data) in enumerate(read_lines(Path(event_log)), 1):
        try:
            record = json.loads(data)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("event_id"), str):
            raise _damaged(Path(event_log), "event", number, "is not an event")
        yield record


def customer_records(state: Path | str, customer_id: str) -> dict[str, list[dict]]:
    """The outbox's and the timers journal's records of ``customer_id`` (trimmed text) in the state folder
    ``state``, as stored: ``{"outbox": [...], "timers": [...]}`` (empty where there is no such file)."""
    state, wanted = Path(state), customer_id.strip()
    found: dict[str, list[dict]] = {}
    for key, name, what, torn_inside in (("outbox", OUTBOX, "transition", True), ("timers", TIMERS, "timer", False)):
        path = state / name
        lines = _read(path, what, torn_inside) if path.exists() else []
        found[key] = [line.record for line in lines if line.record is not None and line.customer == wanted]
    return found


def _write(path: Path, data: bytes) -> None:
    """Replace ``path`` (its target, when a symlink) with ``data``: temp file, fsync, rename, folder fsync."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    directory = os.open(Path(os.path.realpath(path)).parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _unchanged(path: Path, seen: os.stat_result | None) -> None:
    now = os.stat(path) if path.exists() else None
    if (seen is None) != (now is None) or (seen and now and (seen.st_ino, seen.st_size, seen.st_mtime_ns)
                                           != (now.st_ino, now.st_size, now.st_mtime_ns)):
        raise InputError(f"{path} changed while the forget ran (something else writes it: is a service running "
                         "on this state folder?); stop it and run the same forget again.")


class LiveStores:
    """The outbox, timers and cursors of one state folder, read, checked and locked for one forget."""

    def __init__(self, state: Path | str) -> None:
        self.state = Path(state)
        self.outbox, self.timers = self.state / OUTBOX, self.state / TIMERS
        self.webhook_cursor, self.segments_cursor = self.state / WEBHOOK_CURSOR, self.state / SEGMENTS_CURSOR
        self._fd = -1

    @classmethod
    def open(cls, state: Path | str) -> LiveStores:
        """Lock the outbox (refused while the service holds it) and read and check every store: an
        InputError names the first that cannot be read, and nothing is written."""
        stores = cls(state)
        try:
            stores._lock()
            stores._check()
        except BaseException:
            stores.close()
            raise
        return stores

    def _lock(self) -> None:
        if not self.outbox.exists():
            return
        self._fd = os.open(self.outbox, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServiceRunningError(
                f"the trigger outbox {self.outbox} is held by a running service (its segments worker writes it, "
                f"{TIMERS} and the cursors in {self.state}, and would not see them rewritten): stop the service, "
                "run the same forget, then start it again. Nothing was changed.") from None

    def _check(self) -> None:
        self._outbox = _read(self.outbox, "transition", True) if self.outbox.exists() else []
        self._timers = _read(self.timers, "timer", False) if self.timers.exists() else []
        self._offset, self._cursor = self._read_webhook_cursor()
        self._handled = self._read_segments_cursor()
        self._seen = {p: os.stat(p) if p.exists() else None
                      for p in (self.outbox, self.timers, self.webhook_cursor, self.segments_cursor)}

    def _read_webhook_cursor(self) -> tuple[int, dict]:
        if not self.webhook_cursor.exists():
            return 0, {}
        try:
            cursor = json.loads(self.webhook_cursor.read_bytes())
            offset = cursor["offset"]
        except (ValueError, TypeError, KeyError):
            cursor, offset = None, None
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise InputError(f"{self.webhook_cursor} is not a webhook cursor; expected {{\"offset\": BYTES, ...}} as "
                             "the webhook writes it. Restore it from a backup (or delete it to deliver the whole "
                             "outbox again) and run the same command again. Nothing was changed.")
        complete = sum(len(line.data) for line in self._outbox if line.data.endswith(b"\n"))
        if offset > complete:
            raise InputError(f"{self.webhook_cursor} points at byte {offset:,}, past the end of {self.outbox} "
                             f"({complete:,} bytes of whole lines); expected an offset within it. Restore the pair "
                             "from a backup and run the same command again. Nothing was changed.")
        return offset, cursor

    def _read_segments_cursor(self) -> int:
        if not self.segments_cursor.exists():
            return 0
        text = self.segments_cursor.read_text(errors="replace").strip()
        if not text.isdigit():
            raise InputError(f"{self.segments_cursor} holds {text[:40]!r}; expected the count of events handled, as "
                             "the segments worker writes it. Restore it from a backup and run the same command again. "
                             "Nothing was changed.")
        return int(text)

    @property
    def names(self) -> list[str]:
        """The stores there are, in words."""
        return [f"{what} {path}" for what, path in (("trigger outbox", self.outbox), ("timers", self.timers))
                if path.exists()]

    def lower_segments_cursor(self, event_log: EventSource | str, customer_ids: Collection[str]) -> int:
        """Before ``event_log`` (a file, or a log in Redis) loses the events of ``customer_ids``: lower
        ``segments.cursor`` by their events it counted; returns by how many. An event log that cannot be
        read is an InputError (and the cursor is left)."""
        if not self.segments_cursor.exists() or not self._handled:
            return 0
        _unchanged(self.segments_cursor, self._seen[self.segments_cursor])
        wanted = {c.strip() for c in customer_ids}
        counted, kept, old_ids, new_ids = 0, 0, set(), set()
        for record in _log_records(event_log):
            if counted >= self._handled:
                break
            event_id, customer = record["event_id"], record.get(CUSTOMER_ID)
            if event_id not in old_ids:
                old_ids.add(event_id)
                counted += 1
            if not (isinstance(customer, str) and customer.strip() in wanted) and event_id not in new_ids:
                new_ids.add(event_id)
                kept += 1
        lowered = counted - kept
        if lowered:
            self._handled -= lowered
            _write(self.segments_cursor, str(self._handled).encode())
            self._seen[self.segments_cursor] = os.stat(self.segments_cursor)
        return lowered

    def forget(self, customer_ids: Collection[str]) -> dict[str, Counter[str]]:
        """Rewrite the timers journal and the outbox without the lines of ``customer_ids`` (and torn
        lines), the webhook cursor moved first; returns the records removed per customer, per store
        name (``outbox``, ``timers``). A store changed since :meth:`open` is an InputError."""
        wanted = {c.strip() for c in customer_ids}
        removed = {"timers": self._rewrite(self.timers, self._timers, wanted)}
        kept = [line for line in self._outbox if line.record is not None and line.customer not in wanted]
        if len(kept) == len(self._outbox):
            removed["outbox"] = Counter()
            return removed
        _unchanged(self.outbox, self._seen[self.outbox])
        passed = [line for line in kept if line.start < self._offset]
        cursor = dict(self._cursor, offset=sum(len(line.data) for line in passed))
        gone = {line.record["id"] for line in self._outbox if line.record is not None and line.customer in wanted}
        if cursor.get("last_delivered") in gone:  # an id derived from the customer's
            cursor["last_delivered"] = passed[-1].record["id"] if passed else ""
        if cursor != self._cursor and self.webhook_cursor.exists():
            _unchanged(self.webhook_cursor, self._seen[self.webhook_cursor])
            _write(self.webhook_cursor, json.dumps(cursor).encode())
        removed["outbox"] = self._rewrite(self.outbox, self._outbox, wanted)
        return removed

    def _rewrite(self, path: Path, lines: list[_Line], wanted: set[str]) -> Counter[str]:
        kept = [line for line in lines if line.record is not None and line.customer not in wanted]
        removed = Counter(c for line in lines if (c := line.customer) is not None and c in wanted)
        if len(kept) < len(lines):
            _unchanged(path, self._seen[path])
            _write(path, b"".join(line.data for line in kept))
        return removed

    def close(self) -> None:
        """Release the outbox's lock."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
