"""The Redis Streams consumer against a real redis-server (started here on a free port, bound to
127.0.0.1, nothing saved): every published event lands once in a real event log, rejects go to the
dead-letter stream, a failing ingest leaves its entries pending, and a consumer SIGKILLed between the
durable append and the acknowledgement loses and doubles nothing."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis_server import free_port, start_redis, stop_redis

from features.errors import InputError
from features.event_log import Event, EventLog
from serving.stream import (
    GROUP_ENV,
    MAX_EVENT_BYTES,
    STREAM_ENV,
    URL_ENV,
    RedisUnavailableError,
    StreamConsumer,
    consumer_from_env,
)

ROOT = Path(__file__).resolve().parents[1]
STREAM, GROUP = "shop-events", "sendwise"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """This module's own redis-server, on a free port."""
    port = free_port()
    server = start_redis(port)
    yield f"redis://127.0.0.1:{port}/0"
    stop_redis(server)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    connection.flushall()
    yield connection
    connection.close()


def event(i: int, **changes: object) -> dict:
    """Event number ``i``: every third an order with its lines, the others views and add-to-carts."""
    body: dict = {"event_id": f"e{i}", "customer_id": f"c{i % 7}", "occurred_at": f"2026-11-30T10:{i % 60:02d}:00Z"}
    if i % 3 == 2:
        body |= {"event_type": "order", "lines": [{"product_id": f"p{i % 5}", "quantity": 2, "unit_price": 9.5}]}
    else:
        body |= {"event_type": "product_view" if i % 3 == 0 else "add_to_cart", "product_id": f"p{i % 5}"}
    return body | changes


def publish(client: redis.Redis, *bodies: dict) -> list[str]:
    return [client.xadd(STREAM, {"event": json.dumps(body)}).decode() for body in bodies]


class Recording:
    """``ingest`` for the tests: appends to a real, fsynced event log and keeps what it was told."""

    def __init__(self, path: Path) -> None:
        self.log, self.new, self.duplicates, self.calls = EventLog(path, fsync=True), [], [], 0

    def __call__(self, events: list[Event]) -> None:
        self.calls += 1
        result = self.log.append(events)
        self.new += [e.event_id for e in result.new]
        self.duplicates += result.duplicates


def logged_ids(path: Path) -> list[str]:
    """The event ids in the log, in order, one per record (a repeat would show twice)."""
    return [json.loads(line)["event_id"] for line in path.read_text().splitlines() if line]


def pending(client: redis.Redis) -> int:
    return client.xpending(STREAM, GROUP)["pending"]


def drain(consumer: StreamConsumer) -> None:
    while consumer.run_once():
        pass


def test_published_events_arrive_once_and_nothing_stays_pending(client: redis.Redis, tmp_path: Path) -> None:
    before = publish(client, *(event(i) for i in range(25)))  # published before the group exists: read too
    ingest = Recording(tmp_path / "events.jsonl")
    consumer = StreamConsumer(client, STREAM, GROUP, "worker-1", ingest, batch=10, block_ms=50)
    consumer.start()
    try:
        after = publish(client, *(event(i) for i in range(25, 50)))
        deadline = time.monotonic() + 10
        while len(ingest.new) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        consumer.stop()
    assert len(before + after) == 50
    assert ingest.new == [f"e{i}" for i in range(50)] and ingest.duplicates == []
    assert logged_ids(tmp_path / "events.jsonl") == [f"e{i}" for i in range(50)]
    assert pending(client) == 0
    assert client.xinfo_groups(STREAM)[0]["last-delivered-id"].decode() == after[-1]


def test_an_event_published_twice_is_applied_once(client: redis.Redis, tmp_path: Path) -> None:
    publish(client, *(event(i) for i in range(5)), event(3), event(1))  # repeats in the same read
    conflicting = publish(client, event(4, customer_id="c99"))  # e4's id on another event: the first is kept
    ingest = Recording(tmp_path / "events.jsonl")
    consumer = StreamConsumer(client, STREAM, GROUP, "worker-1", ingest, block_ms=0)
    assert consumer.run_once() == 8
    publish(client, event(2))  # and in a later one
    assert consumer.run_once() == 1
    assert ingest.new == ["e0", "e1", "e2", "e3", "e4"] and sorted(ingest.duplicates) == ["e1", "e2", "e3"]
    assert logged_ids(tmp_path / "events.jsonl") == ["e0", "e1", "e2", "e3", "e4"]
    assert [e.customer_id for e in EventLog(tmp_path / "events.jsonl").read()][4] == "c4"
    [(_, rejected)] = client.xrange(f"{STREAM}.rejects")
    assert rejected[b"entry_id"].decode() == conflicting[0] and b"'e4' is also entry" in rejected[b"reason"]
    assert pending(client) == 0


def test_an_id_the_log_holds_for_another_event_goes_to_the_rejects_stream(client: redis.Redis, tmp_path: Path) -> None:
    """As POST /events answers 409: a later entry reusing e1's id for an unsubscribe is not silently dropped."""
    ingest = Recording(tmp_path / "events.jsonl")
    consumer = StreamConsumer(client, STREAM, GROUP, "worker-1", ingest, block_ms=0, conflicts=ingest.log.conflicts)
    publish(client, event(1))
    assert consumer.run_once() == 1
    reused, _ = publish(client, event(1, event_type="unsubscribe", product_id=None), event(1))  # the resend is fine
    assert consumer.run_once() == 2
    assert ingest.new == ["e1"] and ingest.duplicates == ["e1"]
    [(_, rejected)] = client.xrange(f"{STREAM}.rejects")
    assert rejected[b"entry_id"].decode() == reused and b"already names a different event" in rejected[b"reason"]
    assert pending(client) == 0


def test_an_invalid_message_goes_to_the_rejects_stream_and_blocks_nothing(client: redis.Redis, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    no_customer = event(1)
    del no_customer["customer_id"]
    bad = [{"event": b"{not json"}, {"event": b"\xff\xfe"}, {"event": b"[" * 100_000 + b"]" * 100_000},
           {"payload": json.dumps(event(2))}, {"event": json.dumps(no_customer)},
           {"event": json.dumps(event(3, product_id="p" * MAX_EVENT_BYTES))}]
    publish(client, event(0))
    bad_ids = [client.xadd(STREAM, fields).decode() for fields in bad]
    publish(client, event(4))
    ingest = Recording(tmp_path / "events.jsonl")
    consumer = StreamConsumer(client, STREAM, GROUP, "worker-1", ingest, block_ms=0)
    with caplog.at_level(logging.WARNING, logger="serving.stream"):
        assert consumer.run_once() == 8
    assert ingest.new == ["e0", "e4"] and ingest.calls == 1
    assert pending(client) == 0
    rejects = client.xrange(f"{STREAM}.rejects")
    assert [fields[b"entry_id"].decode() for _, fields in rejects] == bad_ids
    reasons = [fields[b"reason"].decode() for _, fields in rejects]
    assert "JSON" in reasons[0] and "JSON" in reasons[1] and "JSON" in reasons[2]
    assert "'event'" in reasons[3] and "payload" in reasons[3]
    assert "customer_id" in reasons[4]
    assert f"{MAX_EVENT_BYTES:,} allowed" in reasons[5]
    for (_, fields), original in zip(rejects, bad, strict=True):  # the original fields, byte for byte
        assert {k.decode(): v for k, v in fields.items() if k.startswith(b"original.")} == {
            f"original.{k}": v if isinstance(v, bytes) else v.encode() for k, v in original.items()}
    assert sum("rejected" in r.message for r in caplog.records) == 6


def test_a_failing_ingest_leaves_its_entries_pending_until_a_later_run(client: redis.Redis, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    publish(client, *(event(i) for i in range(5)))
    ingest = Recording(tmp_path / "events.jsonl")
    failures = ["disk full"]

    def flaky(events: list[Event]) -> None:
        if failures:
            raise OSError(failures.pop())
        ingest(events)

    consumer = StreamConsumer(client, STREAM, GROUP, "worker-1", flaky, block_ms=0)
    with caplog.at_level(logging.ERROR, logger="serving.stream"):
        assert consumer.run_once() == 0
    assert pending(client) == 5 and ingest.new == []
    assert any("stay pending" in r.message and "disk full" in r.exc_text for r in caplog.records)
    publish(client, event(5))
    assert consumer.run_once() == 5  # its own pending entries first
    assert consumer.run_once() == 1
    assert ingest.new == [f"e{i}" for i in range(6)] and pending(client) == 0


def test_an_entry_deleted_while_pending_is_acknowledged(client: redis.Redis, tmp_path: Path) -> None:
    ids = publish(client, *(event(i) for i in range(3)))
    calls: list[int] = []
    consumer = StreamConsumer(client, STREAM, GROUP, "worker-1", lambda events: calls.append(len(events)) or 1 / 0,
                              block_ms=0)
    consumer.run_once()
    client.xdel(STREAM, ids[1])
    ingest = Recording(tmp_path / "events.jsonl")
    consumer.ingest = ingest
    assert consumer.run_once() == 3
    assert calls == [3] and ingest.new == ["e0", "e2"] and pending(client) == 0


CRASHING_CONSUMER = """
import sys, time
from pathlib import Path
import redis
from features.event_log import EventLog
from serving.stream import StreamConsumer
url, log_path, appended = sys.argv[1:]
log, calls = EventLog(log_path, fsync=True), []

def ingest(events):
    log.append(events)
    calls.append(len(events))
    if len(calls) == 2:  # the second batch is in the log: hold it there, unacknowledged, until killed
        Path(appended).write_text("appended")
        time.sleep(120)

consumer = StreamConsumer(redis.Redis.from_url(url), "shop-events", "sendwise", "worker-1", ingest, batch=10,
                          block_ms=100)
while True:
    consumer.run_once()
"""


@pytest.mark.parametrize("successor", ["worker-1", "worker-2"])
def test_a_consumer_killed_between_append_and_ack_loses_and_doubles_nothing(
        client: redis.Redis, redis_url: str, tmp_path: Path, successor: str) -> None:
    publish(client, *(event(i) for i in range(30)))
    log_path, appended = tmp_path / "events.jsonl", tmp_path / "appended"
    worker = subprocess.Popen([sys.executable, "-c", CRASHING_CONSUMER, redis_url, str(log_path), str(appended)],
                              cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not appended.exists():
            assert worker.poll() is None, "the consumer exited before its second batch"
            assert time.monotonic() < deadline, "the consumer never appended its second batch"
            time.sleep(0.005)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert logged_ids(log_path) == [f"e{i}" for i in range(20)]  # two batches appended, the second not acked
    assert pending(client) == 10

    ingest = Recording(log_path)
    time.sleep(0.1)  # the dead consumer's entries idle longer than the successor's claim_idle_ms
    drain(StreamConsumer(client, STREAM, GROUP, successor, ingest, batch=10, block_ms=0, claim_idle_ms=50))
    assert sorted(ingest.duplicates) == sorted(f"e{i}" for i in range(10, 20))  # delivered again, applied once
    assert ingest.new == [f"e{i}" for i in range(20, 30)]
    assert logged_ids(log_path) == [f"e{i}" for i in range(30)]
    assert pending(client) == 0


def test_the_background_consumer_outlives_a_redis_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    server = start_redis(port)
    client = redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    ingest = Recording(tmp_path / "events.jsonl")
    consumer = StreamConsumer(client, STREAM, GROUP, "worker-1", ingest, block_ms=50)

    def delivered(count: int) -> bool:
        deadline = time.monotonic() + 10
        while len(ingest.new) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(ingest.new) == count

    consumer.start()
    try:
        publish(client, event(0), event(1))
        assert delivered(2)
        with caplog.at_level(logging.WARNING, logger="serving.stream"):
            stop_redis(server)
            time.sleep(0.3)
            server = start_redis(port)  # empty: stream and group are gone, created again on the next read
            publish(client, event(2))
            assert delivered(3)
    finally:
        consumer.stop()
        stop_redis(server)
    assert ingest.new == ["e0", "e1", "e2"]
    assert any(f"Redis at redis://127.0.0.1:{port}/0 cannot be reached" in r.message for r in caplog.records)
    assert any("was deleted; created again" in r.message for r in caplog.records)


def test_redis_out_of_reach_is_an_error_naming_the_url() -> None:
    port = free_port()
    with pytest.raises(RedisUnavailableError, match=f"Redis at redis://127.0.0.1:{port}/3 cannot be reached"):
        StreamConsumer(redis.Redis(host="127.0.0.1", port=port, db=3, retry=Retry(NoBackoff(), 0)), STREAM, GROUP, "worker-1", lambda events: None)


def test_wrong_settings_are_errors_naming_them(client: redis.Redis) -> None:
    with pytest.raises(InputError, match="'batch' parameter of StreamConsumer must be an int >= 1. Got 0"):
        StreamConsumer(client, STREAM, GROUP, "worker-1", lambda events: None, batch=0)
    with pytest.raises(InputError, match="unknown time zone 'Mars/Olympus'"):
        StreamConsumer(client, STREAM, GROUP, "worker-1", lambda events: None, timezone="Mars/Olympus")
    client.set(STREAM, "not a stream")
    with pytest.raises(InputError, match=f"consumer group 'sendwise' on '{STREAM}'.*expected '{STREAM}' to be a stream"):
        StreamConsumer(client, STREAM, GROUP, "worker-1", lambda events: None)


def test_consumer_from_env(client: redis.Redis, redis_url: str) -> None:
    assert consumer_from_env(lambda events: None, environ={}) is None
    with pytest.raises(InputError, match=f"{URL_ENV} is set but {STREAM_ENV} is not"):
        consumer_from_env(lambda events: None, environ={URL_ENV: redis_url})
    with pytest.raises(InputError, match=f"{STREAM_ENV} is set but {URL_ENV} is not"):
        consumer_from_env(lambda events: None, environ={STREAM_ENV: STREAM})
    with pytest.raises(InputError, match=f"{GROUP_ENV} is set but empty"):
        consumer_from_env(lambda events: None, environ={URL_ENV: redis_url, STREAM_ENV: STREAM, GROUP_ENV: " "})
    with pytest.raises(InputError, match=f"{URL_ENV}: expected a Redis URL") as bad:
        consumer_from_env(lambda events: None, environ={URL_ENV: "http://admin:s3cret@host/0", STREAM_ENV: STREAM})
    assert "s3cret" not in str(bad.value)

    consumer = consumer_from_env(lambda events: None, environ={URL_ENV: redis_url, STREAM_ENV: STREAM})
    assert consumer is not None and consumer.consumer == f"{socket.gethostname()}-{os.getpid()}"
    assert [g["name"] for g in client.xinfo_groups(STREAM)] == [GROUP.encode()]
    consumer_from_env(lambda events: None, environ={URL_ENV: redis_url, STREAM_ENV: STREAM, GROUP_ENV: "other"})
    assert sorted(g["name"] for g in client.xinfo_groups(STREAM)) == [b"other", GROUP.encode()]


def test_stop_ends_the_background_thread(client: redis.Redis) -> None:
    consumer = StreamConsumer(client, STREAM, GROUP, "worker-1", lambda events: None, block_ms=50)
    consumer.start()
    with pytest.raises(RuntimeError, match="already running"):
        consumer.start()
    consumer.stop()
    assert not any(t.name == f"sendwise-stream-{STREAM}" for t in threading.enumerate())
