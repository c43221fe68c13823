"""Several workers on one online store (Redis), as ``bentoml serve`` runs them with ``SENDWISE_WORKERS``:
an event that one worker takes is in the very next answer of another; the segments worker runs in
exactly one of them and sees the events every worker takes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pandas as pd
import redis
from conftest import stop_server, wait_until_ready
from redis_server import free_port

from serving.live_segments import OUTBOX_FILE

ROOT = Path(__file__).resolve().parents[1]
SEGMENTS = "segments:\n  - name: carted\n    when: \"cart_abandoned_1d == true\"\n"


def _connection_to_each_worker(base: str, workers: int) -> dict[int, httpx.Client]:
    """One keep-alive connection per worker (a connection stays with the worker that accepted it)."""
    found: dict[int, httpx.Client] = {}
    for _ in range(200):
        client = httpx.Client(base_url=base, timeout=30)
        pid = client.get("/model_info").json()["worker"]
        if pid in found:
            client.close()
        else:
            found[pid] = client
        if len(found) == workers:
            return found
    raise AssertionError(f"only {len(found)} of {workers} workers answered 200 new connections")


def _action(client: httpx.Client, customer_id: str) -> str:
    answer = client.post("/next_best_action", json={"customer_id": customer_id})
    assert answer.status_code == 200, answer.text
    return answer.json()["action"]


def _post(client: httpx.Client, *events: dict) -> None:
    answer = client.post("/events", json={"events": list(events)})
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == len(events), answer.text


def test_an_event_taken_by_one_worker_is_in_the_next_answer_of_the_other(served_env: dict, online_store: str,
                                                                         demo_dir: Path, tmp_path: Path) -> None:
    redis.Redis.from_url(online_store).flushall()
    (tmp_path / "segments.yaml").write_text(SEGMENTS)
    port = free_port()
    env = os.environ | served_env | {
        "BENTOML_DO_NOT_TRACK": "true", "SENDWISE_WORKERS": "2", "SENDWISE_ONLINE_STORE": online_store,
        "SENDWISE_EXPOSURE_LOG": str(tmp_path / "exposures.jsonl"), "SENDWISE_STATE_DIR": str(tmp_path / "state"),
        "SENDWISE_RELOAD_SECONDS": "0", "SENDWISE_SEGMENTS": str(tmp_path / "segments.yaml")}
    with open(tmp_path / "log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:Sendwise", "--host",
                                   "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(server, base, tmp_path / "log")
        (one, a), (two, b) = _connection_to_each_worker(base, 2).items()
        assert one != two
        now = datetime.fromisoformat(a.get("/model_info").json()["now"])
        customers = pd.read_parquet(demo_dir / "customers.parquet")["customer_id"].astype(str)
        newsletter = [c for c in customers[:200] if _action(a, c) == "newsletter"][:3]
        assert newsletter, "no demo customer gets a plain newsletter"
        product = str(pd.read_parquet(demo_dir / "products.parquet")["product_id"].iloc[0])
        for i, cid in enumerate(newsletter):
            taker, other = (a, b) if i % 2 == 0 else (b, a)
            stamp = now.isoformat() + "Z"
            _post(taker, {"event_id": f"w-cart-{cid}", "customer_id": cid, "event_type": "add_to_cart",
                          "product_id": product, "occurred_at": stamp})
            assert _action(other, cid) == "cart_recovery"  # the other worker, right after the 2xx
            assert other.get(f"/segments/{cid}").json()["segments"] == ["carted"]
            _post(other, {"event_id": f"w-order-{cid}", "customer_id": cid, "event_type": "order",
                          "occurred_at": stamp, "lines": [{"product_id": product, "quantity": 1, "unit_price": 5.0}]})
            assert _action(taker, cid) != "cart_recovery"  # bought: back on the first worker too
        # one outbox, written by one worker, with each customer's enter and exit once
        deadline = time.monotonic() + 30
        outbox = tmp_path / "state" / OUTBOX_FILE
        while True:
            records = [json.loads(line) for line in outbox.read_text().splitlines()] if outbox.exists() else []
            moves = sorted((r["customer_id"], r["kind"]) for r in records if r.get("name") == "carted")
            if len(moves) >= 2 * len(newsletter) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert moves == sorted((c, kind) for c in newsletter for kind in ("enter", "exit")), records
    finally:
        stop_server(server)
    lines = (tmp_path / "log").read_text()
    assert "Traceback" not in lines, lines[-3000:]
