"""Delayed triggers: "``after`` an event, unless an ``unless`` event comes ``within`` the window", fired
once per cart from a timer, after a restart too.

An ``after`` event (say ``add_to_cart``) arms the trigger for its customer with the deadline
``at + within``, unless it is armed already (a second add-to-cart joins the same cart: the deadline
stays the first one's). An ``unless`` event (say ``order``) at or before the deadline disarms it;
one after the deadline comes too late: the trigger fires. :meth:`DelayedTriggers.due` fires every
armed trigger whose deadline has passed, as a ``fire`` transition in the outbox (at the deadline, with
the arming event's id), and then the customer's next ``after`` event arms a new cart.

Armed triggers are kept in a journal (``state_path``, JSON lines: ``arm``, ``disarm``, ``fired``),
fsynced before :meth:`~DelayedTriggers.on_event` returns, and read back (then compacted) when new
objects open the same files. A fire's id comes from the trigger, the customer and the arming event, so
a fire written just before a crash, whose ``fired`` the journal missed, is not written again. Time is
always given (the service's clock), never read here.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from features.io import atomic_write
from serving.outbox import FIRE, Transition, TriggerOutbox, parse_line, read_lines, transition_id, write_all
from serving.segments import Trigger


@dataclass(frozen=True)
class Armed:
    trigger: str
    customer_id: str
    event_id: str
    armed_at: datetime
    deadline: datetime

    def record(self, op: str) -> dict:
        return {"op": op, "id": self.event_id, "trigger": self.trigger, "customer_id": self.customer_id,
                "armed_at": self.armed_at.isoformat(), "deadline": self.deadline.isoformat()}

    @classmethod
    def of(cls, record: dict) -> Armed:
        return cls(record["trigger"], record["customer_id"], record["id"],
                   datetime.fromisoformat(record["armed_at"]), datetime.fromisoformat(record["deadline"]))


class DelayedTriggers:
    """The armed timers of ``triggers``, kept durably in ``state_path``; fires go to ``outbox``."""

    def __init__(self, triggers: Sequence[Trigger], outbox: TriggerOutbox, state_path: Path | str,
                 fsync: bool = True) -> None:
        self.triggers, self.outbox, self.state_path, self.fsync = tuple(triggers), outbox, Path(state_path), fsync
        self._lock = threading.Lock()
        self._armed: dict[tuple[str, str], Armed] = {}
        names = {t.name for t in self.triggers}
        for _, line in read_lines(self.state_path):
            record = parse_line(line)
            if record is None or record.get("trigger") not in names:
                continue  # a torn last line, or a trigger no longer in the file
            key = (record["trigger"], record["customer_id"])
            if record.get("op") == "arm":
                self._armed[key] = Armed.of(record)
            elif key in self._armed and self._armed[key].event_id == record["id"]:
                del self._armed[key]
        text = "".join(json.dumps(a.record("arm")) + "\n" for a in self._armed.values())
        atomic_write(self.state_path, lambda tmp: Path(tmp).write_text(text))  # compacted: what is armed now
        self._fd = os.open(self.state_path, os.O_WRONLY | os.O_APPEND)

    @property
    def armed(self) -> list[Armed]:
        """The armed timers, by deadline."""
        with self._lock:
            return sorted(self._armed.values(), key=lambda a: (a.deadline, a.trigger, a.customer_id))

    def _fire_id(self, armed: Armed) -> str:
        return transition_id(armed.customer_id, armed.trigger, FIRE, armed.event_id)

    def on_event(self, customer_id: str, event_type: str, at: datetime, event_id: str) -> None:
        """Arm or disarm the triggers this event starts or stops (journalled before it returns)."""
        with self._lock:
            changes: dict[tuple[str, str], Armed | None] = {}
            records = []
            for trigger in self.triggers:
                key = (trigger.name, customer_id)
                current = self._armed.get(key)
                if event_type == trigger.after and current is None:
                    armed = Armed(trigger.name, customer_id, event_id, at, at + trigger.delay)
                    if self._fire_id(armed) not in self.outbox:  # else this cart fired already (a replay)
                        changes[key] = armed
                        records.append(armed.record("arm"))
                elif event_type == trigger.unless and current and current.armed_at <= at <= current.deadline:
                    changes[key] = None
                    records.append(current.record("disarm"))
            self._journal(records)  # raises before memory changes when the write fails
            for key, armed in changes.items():
                if armed is None:
                    del self._armed[key]
                else:
                    self._armed[key] = armed

    def due(self, now: datetime) -> list[Transition]:
        """Fire every armed trigger whose deadline is at or before ``now``: append the fires to the outbox
        (each once, ever) and return those written now."""
        with self._lock:
            ready = sorted((a for a in self._armed.values() if a.deadline <= now), key=lambda a: a.deadline)
            if not ready:
                return []
            webhook = {t.name: t.webhook for t in self.triggers}
            fires = [Transition(self._fire_id(a), a.customer_id, a.trigger, FIRE, a.deadline, event_id=a.event_id,
                                armed_at=a.armed_at, webhook=webhook[a.trigger]) for a in ready]
            written = self.outbox.append(fires)
            self._journal([a.record("fired") for a in ready])
            for a in ready:
                del self._armed[(a.trigger, a.customer_id)]
            return written

    def _journal(self, records: list[dict]) -> None:
        if not records:
            return
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        write_all(self._fd, data, self.fsync)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
