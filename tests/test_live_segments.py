"""Segments and triggers online (serving/live_segments.py): membership follows each event, every
enter goes to the outbox and to a signed webhook, ``GET /segments/{customer_id}`` answers it, and a
delayed trigger fires once from the timer."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

import pytest
from starlette.testclient import TestClient

from serving.reload import RELOAD_ENV

SEGMENTS = """\
segments:
  - name: carted
    when: {signal: cart_abandoned_1d, op: "==", value: true}
  - name: regulars
    when: "orders_count >= 2"
triggers:
  - {name: cart-reminder, after: add_to_cart, unless: order, within: 1h}
"""
SECRET = "whsec-test-7d1f"


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict, str, str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        self.received.append((json.loads(body), self.headers["x-sendwise-signature"], expected))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def receiver():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks", _Receiver.received
    server.shutdown()


@pytest.fixture(scope="module")
def live(served_env: dict[str, str], receiver, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("segments")
    (root / "segments.yaml").write_text(SEGMENTS)
    mp = pytest.MonkeyPatch()
    for key, value in served_env.items():
        mp.setenv(key, value)
    mp.setenv("SENDWISE_EXPOSURE_LOG", str(root / "exposures.jsonl"))
    mp.setenv("SENDWISE_SEGMENTS", str(root / "segments.yaml"))
    mp.setenv("SENDWISE_WEBHOOK_URL", receiver[0])
    mp.setenv("SENDWISE_WEBHOOK_SECRET", SECRET)
    mp.setenv(RELOAD_ENV, "0")
    import bentoml

    from serving.service import Sendwise

    with TestClient(Sendwise.to_asgi()) as client:
        yield bentoml.get_current_service(), client, root / "state"
    mp.undo()


def _outbox(state: Path) -> list[dict]:
    path = state / "outbox.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_membership_follows_an_event_into_the_outbox_the_webhook_and_get_segments(live, receiver) -> None:
    service, client, state = live
    table = service.state.customers
    cid = next(c for c in table.row if not table.signals(c).get("cart_abandoned_1d"))
    assert "carted" not in client.get(f"/segments/{cid}").json()["segments"]
    now = service.profiles.clock.now()
    event = {"event_id": f"seg-cart-{cid}", "customer_id": cid, "event_type": "add_to_cart",
             "product_id": str(service.state.lookup.product_ids[0]), "occurred_at": now.isoformat() + "Z"}
    assert client.post("/events", json={"events": [event]}).json()["accepted"] == 1
    answer = client.get(f"/segments/{cid}").json()
    assert answer["known"] is True and "carted" in answer["segments"]
    service.segments.drain()
    enters = [r for r in _outbox(state) if r["customer_id"] == cid and r["kind"] == "enter"]
    assert [r["name"] for r in enters if r["name"] == "carted"] == ["carted"]
    deadline = time.time() + 10
    while time.time() < deadline and not any(r[0]["customer_id"] == cid for r in receiver[1]):
        time.sleep(0.1)
    delivered = [r for r in receiver[1] if r[0]["customer_id"] == cid and r[0]["name"] == "carted"]
    assert len(delivered) == 1
    _, signature, expected = delivered[0]
    assert signature == f"sha256={expected}"  # signed with the secret

    # the delayed trigger: armed by the cart, fired once when the clock passes its hour
    fired = service.segments.triggers.due(now + timedelta(hours=2))
    assert [(t.customer_id, t.name) for t in fired] == [(cid, "cart-reminder")]
    assert service.segments.triggers.due(now + timedelta(hours=3)) == []


def test_an_unknown_customer_has_no_segments_and_a_bad_id_is_a_400(live) -> None:
    _, client, _ = live
    assert client.get("/segments/nobody-at-all").json() == {"customer_id": "nobody-at-all", "known": False,
                                                            "segments": []}
    bad = client.get("/segments/a%0Ab")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "customer_id"


def test_without_a_segments_file_the_route_says_how_to_set_one(served_env: dict[str, str], tmp_path: Path) -> None:
    mp = pytest.MonkeyPatch()
    for key, value in served_env.items():
        mp.setenv(key, value)
    mp.setenv("SENDWISE_EXPOSURE_LOG", str(tmp_path / "exposures.jsonl"))
    mp.setenv(RELOAD_ENV, "0")
    for name in ("SENDWISE_SEGMENTS", "SENDWISE_WEBHOOK_URL", "SENDWISE_WEBHOOK_SECRET"):
        mp.delenv(name, raising=False)
    from serving.service import Sendwise

    try:
        with TestClient(Sendwise.to_asgi()) as client:
            answer = client.get("/segments/17850")
        assert answer.status_code == 404 and "SENDWISE_SEGMENTS" in answer.json()["error"]
    finally:
        mp.undo()


def test_a_cart_older_than_its_window_arms_nothing(live) -> None:
    """A backfilled or replayed add-to-cart of three hours ago would fire a reminder at once: it arms nothing."""
    service, client, _ = live
    table = service.state.customers
    cid = list(table.row)[-1]
    old = service.profiles.clock.now() - timedelta(hours=3)
    event = {"event_id": f"old-cart-{cid}", "customer_id": cid, "event_type": "add_to_cart",
             "product_id": str(service.state.lookup.product_ids[0]), "occurred_at": old.isoformat() + "Z"}
    assert client.post("/events", json={"events": [event]}).json()["accepted"] == 1
    service.segments.drain()
    assert cid not in {a.customer_id for a in service.segments.triggers.armed}
    assert service.segments.handled >= 1
