"""The trigger outbox and what writes and reads it: segment enters and exits (no transition ever written
twice, membership rebuilt after a restart, nothing acknowledged lost to a SIGKILL), the webhook (a real
HTTP server on 127.0.0.1 that fails twice: one signed delivery per transition, none resent after a
restart) and delayed triggers (once per cart, after the deadline, not after an order, after a restart)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from features.errors import InputError
from serving.outbox import ENTER, EXIT, FIRE, OutboxBusyError, SegmentTracker, Transition, TriggerOutbox
from serving.segments import SegmentSet
from serving.triggers import DelayedTriggers
from serving.webhook import DELIVERY_HEADER, SIGNATURE_HEADER, WebhookSender, check_webhook, signature, verify

ROOT = Path(__file__).resolve().parents[1]
PREAMBLE = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
T0 = datetime(2026, 12, 1, 12, 0)
SEGMENTS = SegmentSet.parse({
    "segments": [{"name": "regulars", "when": "orders_count >= 3"}, {"name": "browsing", "when": "views_1d > 0"}],
    "triggers": [{"name": "cart-reminder", "after": "add_to_cart", "unless": "order", "within": "1h"},
                 {"name": "silent", "after": "checkout_start", "unless": "order", "within": "30m", "webhook": False}],
})


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[TriggerOutbox]:
    box = TriggerOutbox(tmp_path / "outbox.jsonl")
    yield box
    box.close()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# -- outbox and segment tracker ------------------------------------------------------------------------


def test_a_transition_is_written_once_even_when_appended_again(tmp_path: Path, outbox: TriggerOutbox) -> None:
    t = Transition("id-1", "c1", "regulars", ENTER, T0, seq=1)
    assert outbox.append([t, t]) == [t]
    assert outbox.append([t]) == []
    outbox.close()
    reopened = TriggerOutbox(outbox.path)  # the ids seen are rebuilt from the file
    assert "id-1" in reopened and reopened.append([t]) == []
    reopened.close()
    assert lines(outbox.path) == [{"id": "id-1", "customer_id": "c1", "name": "regulars", "kind": "enter",
                                   "at": "2026-12-01T12:00:00", "seq": 1, "webhook": True}]


def test_one_writer_per_outbox_file(outbox: TriggerOutbox) -> None:
    with pytest.raises(OutboxBusyError, match="open for writing elsewhere"):
        TriggerOutbox(outbox.path)


def test_a_torn_last_line_is_skipped_and_the_next_write_starts_a_new_line(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    path.write_text(json.dumps({"id": "a", "kind": "enter"}) + '\n{"id": "b", "ki')  # a kill mid-write
    box = TriggerOutbox(path)
    box.append([Transition("c", "c1", "regulars", ENTER, T0, seq=1)])
    assert [r["id"] for r in box.records()] == ["a", "c"]
    box.close()


def test_the_tracker_writes_enters_and_exits_and_rebuilds_membership_after_a_restart(outbox: TriggerOutbox) -> None:
    tracker = SegmentTracker(SEGMENTS, outbox)
    # a customer the outbox has never seen is in no segment: the first update enters every segment they are in
    first = tracker.update("c1", {"orders_count": 3, "views_1d": 2}, T0)
    assert [(t.name, t.kind, t.seq) for t in first] == [("regulars", ENTER, 1), ("browsing", ENTER, 1)]
    assert tracker.update("c1", {"orders_count": 4, "views_1d": 1}, T0 + timedelta(minutes=1)) == []
    left = tracker.update("c1", {"orders_count": 4, "views_1d": 0}, T0 + timedelta(minutes=2))
    assert [(t.name, t.kind, t.seq) for t in left] == [("browsing", EXIT, 2)]
    assert tracker.update("c2", {"orders_count": None, "views_1d": 0}, T0) == []
    assert tracker.members("c1") == ["regulars"] and tracker.members("c2") == [] and tracker.members("c9") == []
    outbox.close()
    reopened = TriggerOutbox(outbox.path)
    again = SegmentTracker(SEGMENTS, reopened)
    assert again.members("c1") == ["regulars"]
    back = again.update("c1", {"orders_count": 4, "views_1d": 1}, T0 + timedelta(minutes=3))
    assert [(t.name, t.kind, t.seq) for t in back] == [("browsing", ENTER, 3)]
    reopened.close()
    records = lines(outbox.path)
    assert [(r["name"], r["kind"], r["seq"]) for r in records] == [
        ("regulars", ENTER, 1), ("browsing", ENTER, 1), ("browsing", EXIT, 2), ("browsing", ENTER, 3)]
    assert len({r["id"] for r in records}) == 4


def test_a_batch_of_updates_is_one_write_in_order(outbox: TriggerOutbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker, writes = SegmentTracker(SEGMENTS, outbox), []
    append = outbox.append
    monkeypatch.setattr(outbox, "append", lambda transitions: writes.append(len(transitions)) or append(transitions))
    changes = tracker.update_many([("c1", {"orders_count": 3}), ("c2", {"views_1d": 1}), ("c1", {"orders_count": 0}),
                                   ("c3", {"orders_count": 0})], T0)
    assert [(t.customer_id, t.name, t.kind, t.seq) for t in changes] == [
        ("c1", "regulars", ENTER, 1), ("c2", "browsing", ENTER, 1), ("c1", "regulars", EXIT, 2)]
    assert writes == [3] and tracker.members("c1") == [] and tracker.members("c2") == ["browsing"]


def test_a_failed_write_changes_no_membership(outbox: TriggerOutbox, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = SegmentTracker(SEGMENTS, outbox)

    def full_disk(_transitions) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outbox, "append", full_disk)
    with pytest.raises(OSError):
        tracker.update("c1", {"orders_count": 5}, T0)
    assert tracker.members("c1") == []
    monkeypatch.undo()
    assert [t.kind for t in tracker.update("c1", {"orders_count": 5}, T0)] == [ENTER]


def test_a_sigkill_loses_no_acknowledged_transition_and_writes_none_twice(tmp_path: Path) -> None:
    path, acks = tmp_path / "outbox.jsonl", tmp_path / "acks"
    code = PREAMBLE + (
        "from datetime import datetime\n"
        "from serving.outbox import SegmentTracker, TriggerOutbox\n"
        "from serving.segments import SegmentSet\n"
        "segments = SegmentSet.parse({'segments': [{'name': 'regulars', 'when': 'orders_count >= 3'}]})\n"
        f"tracker = SegmentTracker(segments, TriggerOutbox({str(path)!r}))\n"
        f"acks = open({str(acks)!r}, 'a', buffering=1)\n"
        "i = 0\n"
        "while True:\n"
        "    for t in tracker.update(f'c{i % 7}', {'orders_count': (i // 7) % 2 * 5}, datetime(2026, 1, 1)):\n"
        "        acks.write(t.id + '\\n')\n"
        "    i += 1\n")
    writer = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not (acks.exists() and len(acks.read_text().split()) > 300):
            assert writer.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    box = TriggerOutbox(path)  # the kill released the writer's lock
    tracker = SegmentTracker(SegmentSet.parse({"segments": [{"name": "regulars", "when": "orders_count >= 3"}]}), box)
    for customer in [f"c{i}" for i in range(7)]:  # the restart goes on from what the killed writer left
        member = tracker.members(customer) == ["regulars"]
        assert [t.kind for t in tracker.update(customer, {"orders_count": 0 if member else 5}, T0)] == [
            EXIT if member else ENTER]
    records = list(box.records())
    ids = [r["id"] for r in records]
    assert set(acks.read_text().split()) <= set(ids) and len(ids) == len(set(ids))
    for customer in {r["customer_id"] for r in records}:  # each customer alternates enter, exit, enter...
        mine = [r for r in records if r["customer_id"] == customer]
        assert [r["seq"] for r in mine] == list(range(1, len(mine) + 1))
        assert [r["kind"] for r in mine] == [ENTER if r["seq"] % 2 else EXIT for r in mine]
    box.close()


# -- webhook -------------------------------------------------------------------------------------------


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1 that answers 503 to its first ``failures`` requests."""

    def __init__(self, failures: int) -> None:
        self.failures, self.requests, self.accepted = failures, 0, []
        super().__init__(("127.0.0.1", 0), self.Handler)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            server: Receiver = self.server  # type: ignore[assignment]
            body = self.rfile.read(int(self.headers["Content-Length"]))
            server.requests += 1
            if server.requests <= server.failures:
                self.send_response(503)
            else:
                server.accepted.append((body, dict(self.headers)))
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(failures=2)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def sender(receiver: Receiver, outbox: TriggerOutbox, tmp_path: Path) -> WebhookSender:
    return WebhookSender(receiver.url, "s3cret", outbox, tmp_path / "webhook.cursor", backoff_base=0.01,
                         backoff_cap=0.05, jitter=0.5, poll_interval=0.01, random_state=0)


def wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_webhook_delivers_each_transition_once_signed_after_retries_and_none_again_after_a_restart(
        tmp_path: Path, outbox: TriggerOutbox, receiver: Receiver) -> None:
    tracker = SegmentTracker(SEGMENTS, outbox)
    tracker.update("c1", {"orders_count": 3, "views_1d": 1}, T0)
    tracker.update("c1", {"orders_count": 3, "views_1d": 0}, T0 + timedelta(hours=1))
    silent = Transition("no-hook", "c1", "silent", FIRE, T0, event_id="e9", webhook=False)
    outbox.append([silent])
    first = sender(receiver, outbox, tmp_path).start()
    wait_for(lambda: len(receiver.accepted) == 3)
    first.stop()
    written = outbox.path.read_bytes().splitlines()
    assert receiver.requests == 5 and first.attempts == 5  # two 503s, then one POST per transition
    assert [body for body, _ in receiver.accepted] == written[:3]  # in order, the outbox line as it is
    for body, headers in receiver.accepted:
        assert verify("s3cret", body, headers[SIGNATURE_HEADER]) and headers[DELIVERY_HEADER] == json.loads(body)["id"]
        assert headers[SIGNATURE_HEADER] != signature("other", body)
    assert json.loads(receiver.accepted[0][0])["kind"] == ENTER

    restarted = sender(receiver, outbox, tmp_path)  # a new process on the same cursor
    assert restarted.deliver_pending() == 0 and receiver.requests == 5
    tracker.update("c2", {"orders_count": 9}, T0)
    assert restarted.deliver_pending() == 1 and receiver.requests == 6
    assert json.loads(receiver.accepted[-1][0])["customer_id"] == "c2"


def test_stopping_a_sender_that_retries_leaves_the_entry_for_the_next_start(
        tmp_path: Path, outbox: TriggerOutbox, receiver: Receiver) -> None:
    receiver.failures = 10**6
    outbox.append([Transition("x", "c1", "regulars", ENTER, T0, seq=1)])
    running = sender(receiver, outbox, tmp_path).start()
    wait_for(lambda: receiver.requests >= 3)
    running.stop()
    assert running.offset == 0 and not receiver.accepted
    receiver.failures = 0
    assert sender(receiver, outbox, tmp_path).deliver_pending() == 1 and len(receiver.accepted) == 1


@pytest.mark.parametrize(("url", "secret", "expected"), [
    ("ftp://example.com/hook", "s", "absolute http(s) URL"),
    ("/hooks", "s", "absolute http(s) URL"),
    ("https://example.com/hook", "", "needs a secret"),
    ("https://example.com/hook", None, "needs a secret"),
])
def test_a_webhook_needs_an_http_url_and_a_secret(url: str, secret: str | None, expected: str) -> None:
    with pytest.raises(InputError, match=re.escape(expected)):
        check_webhook(url, secret)


def test_backoff_doubles_up_to_the_cap_less_the_jitter(tmp_path: Path, outbox: TriggerOutbox) -> None:
    s = WebhookSender("https://example.com/h", "k", outbox, tmp_path / "c", backoff_base=1, backoff_cap=8,
                      jitter=0.25, random_state=0)
    delays = [s.delay(attempt) for attempt in range(6)]
    for full, got in zip([1, 2, 4, 8, 8, 8], delays, strict=True):
        assert 0.75 * full <= got <= full


# -- delayed triggers ----------------------------------------------------------------------------------


@pytest.fixture
def timers(tmp_path: Path, outbox: TriggerOutbox) -> Iterator[DelayedTriggers]:
    triggers = DelayedTriggers(SEGMENTS.triggers, outbox, tmp_path / "timers.jsonl")
    yield triggers
    triggers.close()


def test_a_cart_fires_once_after_the_deadline(timers: DelayedTriggers) -> None:
    timers.on_event("c1", "add_to_cart", T0, "e1")
    timers.on_event("c1", "add_to_cart", T0 + timedelta(minutes=20), "e2")  # the same cart: no new deadline
    timers.on_event("c1", "product_view", T0 + timedelta(minutes=30), "e3")
    assert timers.due(T0 + timedelta(minutes=59)) == []
    fired = timers.due(T0 + timedelta(hours=1))
    assert [(t.customer_id, t.name, t.kind, t.event_id, t.at) for t in fired] == [
        ("c1", "cart-reminder", FIRE, "e1", T0 + timedelta(hours=1))]
    assert timers.due(T0 + timedelta(hours=3)) == [] and timers.armed == []
    timers.on_event("c1", "add_to_cart", T0 + timedelta(hours=4), "e4")  # a new cart
    assert [t.event_id for t in timers.due(T0 + timedelta(hours=6))] == ["e4"]


@pytest.mark.parametrize(("order_at", "fires"), [
    (timedelta(minutes=30), False),
    (timedelta(hours=1), False),  # at the deadline: within the hour
    (timedelta(minutes=-5), True),  # an order before the cart
    (timedelta(minutes=61), True),  # too late, even when it reaches the timers before the tick
])
def test_an_order_within_the_window_disarms(timers: DelayedTriggers, order_at: timedelta, fires: bool) -> None:
    timers.on_event("c1", "add_to_cart", T0, "e1")
    timers.on_event("c2", "add_to_cart", T0, "e2")
    timers.on_event("c1", "order", T0 + order_at, "o1")
    fired = timers.due(T0 + timedelta(hours=2))
    assert sorted(t.customer_id for t in fired) == (["c1", "c2"] if fires else ["c2"])


def test_armed_timers_fire_after_a_restart_once(tmp_path: Path, outbox: TriggerOutbox) -> None:
    state = tmp_path / "timers.jsonl"
    timers = DelayedTriggers(SEGMENTS.triggers, outbox, state)
    timers.on_event("c1", "add_to_cart", T0, "e1")
    timers.on_event("c2", "add_to_cart", T0, "e2")
    timers.on_event("c2", "order", T0 + timedelta(minutes=5), "o2")
    timers.on_event("c3", "checkout_start", T0, "e3")
    timers.close()
    outbox.close()
    box = TriggerOutbox(outbox.path)  # the restart: new objects on the same files
    restarted = DelayedTriggers(SEGMENTS.triggers, box, state)
    assert [(a.customer_id, a.event_id) for a in restarted.armed] == [("c3", "e3"), ("c1", "e1")]
    fired = restarted.due(T0 + timedelta(hours=1))
    assert [(t.customer_id, t.name, t.webhook) for t in fired] == [("c3", "silent", False),
                                                                   ("c1", "cart-reminder", True)]
    restarted.on_event("c1", "add_to_cart", T0, "e1")  # the arming event replayed: that cart has fired
    restarted.close()
    again = DelayedTriggers(SEGMENTS.triggers, box, state)
    assert again.armed == [] and again.due(T0 + timedelta(days=1)) == []
    again.close()
    box.close()
    assert [r["event_id"] for r in lines(outbox.path)] == ["e3", "e1"]


def test_a_fire_whose_journal_write_failed_is_not_written_again(tmp_path: Path, outbox: TriggerOutbox,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "timers.jsonl"
    timers = DelayedTriggers(SEGMENTS.triggers, outbox, state)
    timers.on_event("c1", "add_to_cart", T0, "e1")

    def crash(_records) -> None:
        raise OSError(5, "Input/output error")  # the fire is in the outbox, its "fired" never journalled

    monkeypatch.setattr(timers, "_journal", crash)
    with pytest.raises(OSError):
        timers.due(T0 + timedelta(hours=1))
    timers.close()
    restarted = DelayedTriggers(SEGMENTS.triggers, outbox, state)
    assert len(restarted.armed) == 1 and restarted.due(T0 + timedelta(hours=2)) == []
    assert restarted.armed == []
    restarted.close()
    assert [r["kind"] for r in lines(outbox.path)] == [FIRE]
