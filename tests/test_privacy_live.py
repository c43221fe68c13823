"""``privacy forget`` and ``export`` over the segments worker's stores in the state folder (issue 16): the
trigger outbox and the timers journal lose exactly the customer's lines (every other byte kept), the export
holds them, a store that cannot be read (or a running service holding the outbox) stops the forget before
anything is written, and the cursors stay right: the webhook sends the next undelivered entry after a
forget, and the segments worker takes the event log from the next unhandled event."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.event_log import EventLog, parse_events
from features.io import read_tombstones
from sendwise.cli import app
from sendwise.privacy import live_stores
from serving.outbox import ENTER, SegmentTracker, Transition, TriggerOutbox
from serving.segments import SegmentSet
from serving.triggers import DelayedTriggers
from serving.webhook import WebhookSender

VICTIM = "V-4471"
T0 = datetime(2026, 12, 1, 12, 0)
SEGMENTS = SegmentSet.parse({
    "segments": [{"name": "regulars", "when": "orders_count >= 3"}],
    "triggers": [{"name": "cart-reminder", "after": "add_to_cart", "unless": "order", "within": "1h"}],
})
runner = CliRunner()


def enter(customer_id: str, n: int = 1) -> Transition:
    return Transition(f"{customer_id}-{n}", customer_id, "regulars", ENTER, T0 + timedelta(minutes=n), seq=n)


class Shop:
    """A data directory with two of VICTIM's orders, an empty exposure log and a state folder whose outbox,
    timers journal and event log hold VICTIM's lines among others'."""

    def __init__(self, root: Path) -> None:
        self.root, self.data, self.state = root, root / "data", root / "exposures" / "state"
        self.data.mkdir()
        (self.data / "orders.csv").write_text(
            "order_id,customer_id,product_id,quantity,unit_price,ordered_at\n"
            + "".join(f"o{i},{c},p1,1,2.5,2024-01-0{i + 1} 10:00:00\n" for i, c in enumerate(["c1", VICTIM, "c2"])))
        self.state.mkdir(parents=True)
        (root / "exposures" / "exposures.jsonl").write_text("")
        self.outbox, self.timers = self.state / "outbox.jsonl", self.state / "timers.jsonl"
        self.webhook_cursor, self.segments_cursor = self.state / "webhook.cursor", self.state / "segments.cursor"
        self.events = self.state / "events.jsonl"

    def fill(self) -> None:
        """Transitions and timers of c1, c2, c3 and VICTIM, as the service writes them (a torn line of
        VICTIM's in the middle of the outbox: a kill mid-write, ended by the next open)."""
        box = TriggerOutbox(self.outbox)
        box.append([enter("c1"), enter(VICTIM)])
        box.close()
        with open(self.outbox, "ab") as f:
            f.write(b'{"id":"torn","customer_id":"' + VICTIM.encode() + b'","na')
        box = TriggerOutbox(self.outbox)
        box.append([enter("c2"), enter(VICTIM, 2), enter("c3")])
        timers = DelayedTriggers(SEGMENTS.triggers, box, self.timers)
        for i, customer in enumerate(["c1", VICTIM, "c2"]):
            timers.on_event(customer, "add_to_cart", T0, f"cart-{i}")
        timers.on_event(VICTIM, "order", T0 + timedelta(minutes=5), "order-1")
        timers.close()
        box.close()

    def cli(self, command: str, *extra: str) -> tuple[int, str]:
        result = runner.invoke(app, ["privacy", command, VICTIM, "--data", str(self.data), "--no-mlruns",
                                     "--exposure-log", str(self.root / "exposures" / "exposures.jsonl"),
                                     "--state-dir", str(self.state), *extra])
        return result.exit_code, result.output

    def files(self) -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in self.root.rglob("*") if p.is_file()}


@pytest.fixture
def shop(tmp_path: Path) -> Shop:
    return Shop(tmp_path)


def without_victim(data: bytes) -> bytes:
    return b"".join(line for line in data.splitlines(keepends=True) if VICTIM.encode() not in line)


def test_forget_removes_exactly_the_customers_lines_and_export_holds_them(shop: Shop) -> None:
    shop.fill()
    outbox, timers = shop.outbox.read_bytes(), shop.timers.read_bytes()
    assert [len(data.splitlines()) - len(without_victim(data).splitlines()) for data in (outbox, timers)] == [3, 2]
    # their lines: two enters and the torn one; an arm and a disarm

    code, output = shop.cli("export")
    doc = json.loads(output)
    assert code == 0 and [r["id"] for r in doc["outbox"]] == [f"{VICTIM}-1", f"{VICTIM}-2"]  # not the torn one
    assert [(r["op"], r["id"]) for r in doc["timers"]] == [("arm", "cart-1"), ("disarm", "cart-1")]

    code, output = shop.cli("forget")
    assert code == 0, output
    assert shop.outbox.read_bytes() == without_victim(outbox)  # every other line byte for byte
    assert shop.timers.read_bytes() == without_victim(timers)
    assert b"torn" not in shop.outbox.read_bytes()
    assert "2 transitions removed" in " ".join(output.split()) and "2 records removed" in " ".join(output.split())

    # the service opens what the forget left: c1 and c2 still in their segment and armed, VICTIM nowhere
    box = TriggerOutbox(shop.outbox)
    tracker = SegmentTracker(SEGMENTS, box)
    assert [tracker.members(c) for c in ("c1", "c2", VICTIM)] == [["regulars"], ["regulars"], []]
    timers_again = DelayedTriggers(SEGMENTS.triggers, box, shop.timers)
    assert [a.customer_id for a in timers_again.armed] == ["c1", "c2"]
    timers_again.close()
    box.close()
    assert json.loads(shop.cli("export")[1])["outbox"] == []


@pytest.mark.parametrize(("store", "damage"), [
    ("outbox", b'{"id":"c9-1","customer_id":"c9"}\nnot a transition\n'),
    ("timers", b'{"op":"arm"\n'),
    ("webhook_cursor", b'{"offset": "soon"}'),
    ("segments_cursor", b"twelve"),
])
def test_a_store_that_cannot_be_read_fails_the_forget_and_changes_nothing(shop: Shop, store: str,
                                                                          damage: bytes) -> None:
    shop.fill()
    path = getattr(shop, store)
    with open(path, "ab" if path.suffix == ".jsonl" else "wb") as f:
        f.write(damage)
    before = shop.files()
    code, output = shop.cli("forget")
    assert code == 2, output
    assert str(path) in "".join(output.split()), output  # named (rich wraps long lines)
    assert "Nothing was changed" in " ".join(output.split())
    assert shop.files() == before  # no tombstone, no line removed anywhere
    assert VICTIM not in read_tombstones(shop.data)


def test_forget_is_refused_while_a_service_holds_the_outbox(shop: Shop) -> None:
    shop.fill()
    before = shop.files()
    running = TriggerOutbox(shop.outbox)  # what a running service's segments worker holds
    try:
        code, output = shop.cli("forget")
    finally:
        running.close()
    assert code == 2 and "held by a running service" in " ".join(output.split()), output
    assert shop.files() == before
    assert shop.cli("forget")[0] == 0  # stopped: the same forget goes through


class Receiver(BaseHTTPRequestHandler):
    received: list[dict]

    def do_POST(self) -> None:
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict]]]:
    received: list[dict] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("R", (Receiver,), {"received": received}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()


def deliver(shop: Shop, url: str) -> None:
    box = TriggerOutbox(shop.outbox)
    WebhookSender(url, "s3cret", box, shop.webhook_cursor, timeout=5).deliver_pending()
    box.close()


def test_the_webhook_sends_the_next_undelivered_entry_after_a_forget(shop: Shop, receiver) -> None:
    url, received = receiver
    box = TriggerOutbox(shop.outbox)
    box.append([enter("c1"), enter(VICTIM), enter("c2")])
    box.close()
    deliver(shop, url)
    assert [r["id"] for r in received] == ["c1-1", f"{VICTIM}-1", "c2-1"]
    assert json.loads(shop.webhook_cursor.read_text())["last_delivered"] == "c2-1"
    box = TriggerOutbox(shop.outbox)
    box.append([enter(VICTIM, 2), enter("c3"), enter(VICTIM, 3), enter("c4")])  # not delivered yet
    box.close()

    assert shop.cli("forget")[0] == 0
    received.clear()
    deliver(shop, url)
    assert [r["id"] for r in received] == ["c3-1", "c4-1"]  # none skipped, none repeated, none of VICTIM's


def test_a_cursor_on_the_customers_last_delivered_entry_moves_to_the_kept_one_before_it(shop: Shop, receiver) -> None:
    url, received = receiver
    box = TriggerOutbox(shop.outbox)
    box.append([enter("c1"), enter(VICTIM)])
    box.close()
    deliver(shop, url)
    box = TriggerOutbox(shop.outbox)
    box.append([enter("c2")])
    box.close()
    assert shop.cli("forget")[0] == 0
    assert json.loads(shop.webhook_cursor.read_text()) == {"offset": len(shop.outbox.read_bytes().splitlines(True)[0]),
                                                           "last_delivered": "c1-1"}  # no id of VICTIM's kept
    received.clear()
    deliver(shop, url)
    assert [r["id"] for r in received] == ["c2-1"]


def test_the_segments_cursor_counts_the_events_left_before_it(shop: Shop) -> None:
    customers = ["c1", VICTIM, "c2", VICTIM, "c3", VICTIM]
    with EventLog(shop.events) as log:
        log.append(parse_events({"events": [
            {"event_id": f"e{i}", "customer_id": c, "event_type": "product_view", "product_id": "p1",
             "occurred_at": "2024-01-05T10:00:00Z"} for i, c in enumerate(customers)]}))
    shop.segments_cursor.write_text("4")  # the worker handled e0..e3; e4 and e5 are next
    TriggerOutbox(shop.outbox).close()  # a service with segments ran here
    code, output = shop.cli("forget")
    assert code == 0, output
    handled = int(shop.segments_cursor.read_text())
    with EventLog(shop.events) as log:
        events = [e.event_id for e in log.read()]
    assert events == ["e0", "e2", "e4"]
    assert events[handled:] == ["e4"]  # what the worker replays after a restart (serving.live_segments.replayed)


def test_a_forget_killed_between_the_cursor_and_the_outbox_resends_at_worst(shop: Shop, receiver,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The webhook cursor is written before the outbox is replaced: a crash between the two leaves a
    smaller offset against the old outbox, possibly inside a line; the next forget and delivery skip nothing."""
    url, received = receiver
    box = TriggerOutbox(shop.outbox)
    box.append([enter("c1"), enter(VICTIM), enter("c2")])
    box.close()
    deliver(shop, url)
    box = TriggerOutbox(shop.outbox)
    box.append([enter(VICTIM, 2), enter("c3")])
    box.close()
    old = shop.outbox.read_bytes()
    write = live_stores._write

    def killed_at_the_outbox(path: Path, data: bytes) -> None:
        if path.name == "outbox.jsonl":
            raise RuntimeError("killed")
        write(path, data)

    monkeypatch.setattr(live_stores, "_write", killed_at_the_outbox)
    assert shop.cli("forget")[0] != 0
    assert shop.outbox.read_bytes() == old and json.loads(shop.webhook_cursor.read_text())["offset"] < len(old)
    monkeypatch.setattr(live_stores, "_write", write)
    assert shop.cli("forget")[0] == 0  # run again, as the failed one's message says
    received.clear()
    deliver(shop, url)
    ids = [r["id"] for r in received]
    assert ids[-1] == "c3-1" and set(ids) <= {"c2-1", "c3-1"}  # c2 resent at worst, c3 not skipped
