"""The trigger outbox: every segment enter and exit and every delayed trigger's fire, appended durably.

One JSON line per :class:`Transition`::

    {"id": "<sha256 hex>", "customer_id": "c1", "name": "churn-risk", "kind": "enter",
     "at": "2026-12-01T18:00:00+00:00", "seq": 1, "webhook": true}

The ``id`` is derived from what the transition is, never from when it was written: for an enter or
exit, from the customer, the segment, the kind and ``seq`` (the customer's n-th transition of that
segment: enters are odd, exits even); for a fire, from the trigger, the customer and the event that
armed it. :meth:`TriggerOutbox.append` writes only ids it has not seen (rebuilt from the file when it
is opened), so no transition is ever in the outbox twice, even when the work that makes one is
replayed after a crash.

Appends are one ``write`` on an ``O_APPEND`` file, forced to disk with ``fsync`` (default) before
:meth:`~TriggerOutbox.append` returns; a process killed mid-write leaves at most one torn last line,
which readers skip (it is ended with a newline when the file is next opened). One process writes a
file: the outbox holds an exclusive ``flock`` on it, and a second writer gets :class:`OutboxBusyError`.

:class:`SegmentTracker` keeps each customer's membership (rebuilt from the outbox when it starts) and
appends the transitions of an update. A customer the outbox has never seen is in no segment, so their
first update emits an enter for every segment they are in; the first run of a service over existing
customers is thus a backfill of their memberships (``seq`` 1), after which only changes are written.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from features.errors import SendwiseError
from serving.segments import SegmentSet

ENTER, EXIT, FIRE = "enter", "exit", "fire"


class OutboxBusyError(SendwiseError):
    """Another process (or another open outbox in this one) already writes the outbox file."""


def transition_id(customer_id: str, name: str, kind: str, key: str | int) -> str:
    """The id of a transition: the same transition always gets the same id."""
    return hashlib.sha256("\x1f".join((customer_id, name, kind, str(key))).encode()).hexdigest()


@dataclass(frozen=True)
class Transition:
    """A customer entering or leaving a segment (``seq``), or a delayed trigger firing (``event_id``:
    the event that armed it, ``armed_at``: its time); ``webhook`` False keeps it from the webhook."""

    id: str
    customer_id: str
    name: str
    kind: str
    at: datetime
    seq: int | None = None
    event_id: str | None = None
    armed_at: datetime | None = None
    webhook: bool = True

    def record(self) -> dict:
        """The outbox line's object (the webhook's body)."""
        out: dict = {"id": self.id, "customer_id": self.customer_id, "name": self.name, "kind": self.kind,
                     "at": self.at.isoformat()}
        if self.seq is not None:
            out["seq"] = self.seq
        if self.event_id is not None:
            out["event_id"] = self.event_id
        if self.armed_at is not None:
            out["armed_at"] = self.armed_at.isoformat()
        return out | {"webhook": self.webhook}


def read_lines(path: Path, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """Each whole line (ending in a newline) of ``path`` from byte ``offset``, with the offset after it;
    a last line without its newline (being written, or torn by a kill) is not read."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f:
            if not line.endswith(b"\n"):
                return
            offset += len(line)
            yield offset, line


def parse_line(line: bytes) -> dict | None:
    """A JSON-object line, or None for one that is not (a torn line a kill left)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("id"), str) else None


def write_all(fd: int, data: bytes, fsync: bool) -> None:
    """Append ``data`` to ``fd`` whole (a short write is finished before anything else), then fsync it."""
    written = os.write(fd, data)
    while written < len(data):
        written += os.write(fd, data[written:])
    if fsync:
        os.fsync(fd)


class TriggerOutbox:
    """Append-only JSON lines of transitions, each id at most once."""

    def __init__(self, path: Path | str, fsync: bool = True) -> None:
        self.path, self.fsync = Path(path), fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise OutboxBusyError(f"the trigger outbox {self.path} is open for writing elsewhere (another worker or "
                                  "service): one process writes an outbox; close the other first.") from None
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":  # a killed writer left half a line
            self._write(b"\n")
        self._seen = {r["id"] for r in self.records()}

    def records(self, offset: int = 0) -> Iterator[dict]:
        """Every transition written, in order (from byte ``offset``)."""
        for _, record in self.entries(offset):
            if record is not None:
                yield record

    def entries(self, offset: int = 0) -> Iterator[tuple[int, dict | None]]:
        """``(offset after the line, its record or None when it does not parse)`` from byte ``offset``."""
        for end, line in read_lines(self.path, offset):
            yield end, parse_line(line)

    def __contains__(self, transition_id: str) -> bool:
        return transition_id in self._seen

    def append(self, transitions: Sequence[Transition]) -> list[Transition]:
        """Write those of ``transitions`` whose id is not in the outbox yet (one write, fsynced when
        asked); returns them. When it returns they survive the process being killed."""
        with self._lock:
            new, ids = [], set()
            for t in transitions:
                if t.id not in self._seen and t.id not in ids:
                    new.append(t)
                    ids.add(t.id)
            if new:
                self._write("".join(json.dumps(t.record(), separators=(",", ":")) + "\n" for t in new).encode())
                self._seen |= ids
            return new

    def _write(self, data: bytes) -> None:
        write_all(self._fd, data, self.fsync)

    def close(self) -> None:
        """Release the file (and its lock)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class SegmentTracker:
    """Each customer's segments, updated from their signals, every change appended to the outbox."""

    def __init__(self, segments: SegmentSet, outbox: TriggerOutbox) -> None:
        self.segments, self.outbox = segments, outbox
        self._lock = threading.Lock()
        self._seq: dict[str, dict[str, int]] = {}  # customer -> segment -> transitions so far (odd: a member)
        for record in outbox.records():
            if record.get("kind") in (ENTER, EXIT) and isinstance(record.get("seq"), int):
                seqs = self._seq.setdefault(str(record["customer_id"]), {})
                seqs[record["name"]] = max(seqs.get(record["name"], 0), record["seq"])

    def members(self, customer_id: str) -> list[str]:
        """The sorted segments ``customer_id`` is in (none for a customer never updated)."""
        with self._lock:
            seqs = self._seq.get(customer_id, {})
        return sorted(name for name in self.segments.names if seqs.get(name, 0) % 2 == 1)

    def update(self, customer_id: str, values: dict, at: datetime) -> list[Transition]:
        """Evaluate the segments on ``values`` (the customer's signals at ``at``, the service's clock),
        append an enter or exit for each segment whose membership changed and return them. A segment
        no longer in the file is left as it was (no exit is written for it)."""
        return self.update_many([(customer_id, values)], at)

    def update_many(self, updates: Sequence[tuple[str, dict]], at: datetime) -> list[Transition]:
        """:meth:`update` for several ``(customer_id, values)`` in order (a customer may repeat), with one
        write (and one fsync) for all their transitions."""
        evaluated = [(customer_id, set(self.segments.members(values))) for customer_id, values in updates]
        with self._lock:
            pending: dict[str, dict[str, int]] = {}
            changes = []
            for customer_id, now_in in evaluated:
                seqs = pending.setdefault(customer_id, dict(self._seq.get(customer_id, {})))
                for name in self.segments.names:
                    was_in = seqs.get(name, 0) % 2 == 1
                    if was_in != (name in now_in):
                        seqs[name] = seqs.get(name, 0) + 1
                        kind = EXIT if was_in else ENTER
                        changes.append(Transition(transition_id(customer_id, name, kind, seqs[name]), customer_id,
                                                  name, kind, at, seq=seqs[name]))
            if changes:
                self.outbox.append(changes)  # raises before memory changes when the write fails
                self._seq.update((c, seqs) for c, seqs in pending.items() if seqs)
            return changes
