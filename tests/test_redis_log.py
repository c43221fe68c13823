"""The event log in Redis against a real redis-server (append-only file, fsync on every write, started
here on a free port of 127.0.0.1): each event_id once however many workers append, one order for every
reader, namespaces apart, a server that would lose acknowledged events refused, forget removing a
customer's entries and ids, acknowledged events surviving a SIGKILLed server; and the same frames,
records and forgets from a file log and a Redis log holding the same events."""

from __future__ import annotations

import hashlib
import random
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import redis
from redis_server import free_port, start_redis, stop_redis

from features import redis_log
from features.errors import InputError
from features.event_log import Event, EventLog, EventsError, held_rows
from features.event_store import (
    forget_in_source,
    open_event_log,
    source_customer_events,
    source_frames,
    source_records,
)
from features.redis_log import RedisEventLog, RedisLocation
from features.schema import Table


def view(event_id: str, customer: str = "c1", product: str = "p1", at: str = "2024-03-01T10:00:00Z") -> Event:
    return Event(event_id=event_id, customer_id=customer, event_type="product_view", occurred_at=at,
                 product_id=product)


def order(event_id: str, customer: str = "c1", at: str = "2024-03-02T09:30:00Z") -> Event:
    return Event(event_id=event_id, customer_id=customer, event_type="order", occurred_at=at,
                 lines=[{"product_id": "p1", "quantity": 2, "unit_price": 3.5},
                        {"product_id": "p2", "quantity": -1, "unit_price": 10}])


@pytest.fixture
def redis_url(online_store: str) -> str:
    """The session's redis-server (appendonly yes, appendfsync always; conftest.online_store)."""
    return online_store


@pytest.fixture
def location(redis_url: str) -> RedisLocation:
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    return RedisLocation(redis_url, "shop")


@pytest.fixture
def log(location: RedisLocation) -> Iterator[RedisEventLog]:
    with RedisEventLog(location) as opened:
        yield opened


def entry_ids(location: RedisLocation) -> list[str]:
    with redis.Redis.from_url(location.url, decode_responses=True) as client:
        return [entry_id for entry_id, _ in client.xrange(location.stream)]


def test_append_reports_new_duplicates_and_positions(log: RedisEventLog, location: RedisLocation) -> None:
    first = log.append([view("e1"), order("e2"), view("e3", "c2")])
    assert [e.event_id for e in first.new] == ["e1", "e2", "e3"] and first.duplicates == []
    assert (first.start, first.end) == ("0-0", entry_ids(location)[-1])

    second = log.append([view("e1"), view("e4")])  # a resend and a new one
    assert [e.event_id for e in second.new] == ["e4"] and second.duplicates == ["e1"]
    assert second.start == first.end and second.end == entry_ids(location)[-1] != first.end
    assert log.read_after(second.start) == ([view("e4")], second.end)
    assert log.read_after(second.end) == ([], second.end)
    assert log.read_after(RedisEventLog.start_position) == ([view("e1"), order("e2"), view("e3", "c2"), view("e4")],
                                                            second.end)

    nothing = log.append([view("e4")])
    assert nothing.new == [] and (nothing.start, nothing.end) == (None, None)
    assert len(log) == 4 and "e2" in log and " e2 " in log and "e9" not in log and 2 not in log
    assert list(log.read()) == [view("e1"), order("e2"), view("e3", "c2"), view("e4")]


def test_the_stream_holds_the_file_logs_lines_and_their_sha1(log: RedisEventLog, location: RedisLocation,
                                                             tmp_path: Path) -> None:
    with EventLog(tmp_path / "events.jsonl") as file_log:
        file_log.append([view("e1"), order("e2")])
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    log.append([view("e1"), order("e2")])
    with redis.Redis.from_url(location.url) as client:
        assert [fields[b"e"] for _, fields in client.xrange(location.stream)] == lines
        assert client.hgetall(location.ids) == {b"e1": hashlib.sha1(lines[0]).hexdigest().encode(),
                                                b"e2": hashlib.sha1(lines[1]).hexdigest().encode()}


def test_a_batch_repeating_an_id(log: RedisEventLog) -> None:
    result = log.append([view("e1"), view("e1"), view("e2")])
    assert [e.event_id for e in result.new] == ["e1", "e2"] and result.duplicates == ["e1"]
    with pytest.raises(EventsError, match=r"events\[2\].event_id.*'e3' is also events\[0\]'s, a different event"):
        log.append([view("e3"), view("e4"), view("e3", "c2")])
    assert len(log) == 2 and "e3" not in log  # all or nothing


def test_conflicts_are_ids_held_for_another_event(log: RedisEventLog, location: RedisLocation) -> None:
    log.append([view("e1"), order("e2")])
    with RedisEventLog(location) as other:  # another worker computes the same fingerprints
        assert other.conflicts([view("e1"), view("e2"), view("e3"), view("e1", product="p9")]) == ["e2", "e1"]
    assert log.conflicts([]) == []


def test_two_workers_appending_at_once_apply_each_event_once(location: RedisLocation) -> None:
    events = [view(f"e{i}", f"c{i % 7}") for i in range(600)]
    workers = [RedisEventLog(location), RedisEventLog(location)]
    appended: list[list[str]] = [[], []]
    together = threading.Barrier(2)

    def work(number: int) -> None:
        mine = events[:]
        random.Random(number).shuffle(mine)  # each sends every event, in its own order
        together.wait()
        for start in range(0, len(mine), 25):
            appended[number] += [e.event_id for e in workers[number].append(mine[start:start + 25]).new]

    threads = [threading.Thread(target=work, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(appended[0] + appended[1]) == sorted(e.event_id for e in events)  # each new to one worker only
    seen = [workers[n].read_after("0-0") for n in (0, 1)]
    assert seen[0] == seen[1] and sorted(e.event_id for e in seen[0][0]) == sorted(e.event_id for e in events)
    assert len(workers[0]) == len(entry_ids(location)) == 600
    for worker in workers:
        worker.close()


def test_reads_in_chunks(log: RedisEventLog, monkeypatch: pytest.MonkeyPatch) -> None:
    events = [view(f"e{i}") for i in range(10)]
    log.append(events)
    monkeypatch.setattr(redis_log, "READ_CHUNK", 3)
    assert list(log.read()) == events
    middle, _ = log.read_after(log.append([view("e10")]).start)
    assert middle == [view("e10")]


def test_chunks_end_where_the_log_ended_when_the_read_began(log: RedisEventLog,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert list(log.chunks()) == [([], "0-0")]
    events = [view(f"e{i}") for i in range(5)]
    end = log.append(events).end
    monkeypatch.setattr(redis_log, "CHUNK_EVENTS", 2)
    monkeypatch.setattr(redis_log, "READ_CHUNK", 3)
    chunks = []
    for chunk in log.chunks():
        chunks.append(chunk)
        log.append([view(f"late{len(chunks)}")])  # after the read began: left to read_after(end)
    assert chunks == [(events[:2], end), (events[2:4], end), (events[4:], end)]
    assert [e.event_id for e in log.read_after(end)[0]] == ["late1", "late2", "late3"]


def test_namespaces_are_apart(location: RedisLocation) -> None:
    other = RedisLocation(location.url, "other-shop")
    with RedisEventLog(location) as shop, RedisEventLog(other) as second:
        shop.append([view("e1")])
        assert second.append([view("e1", "c9")]).new == [view("e1", "c9")]
        assert list(shop.read()) == [view("e1")] and list(second.read()) == [view("e1", "c9")]
    with pytest.raises(InputError, match=r"namespace 'a:b' is not valid: it must match"):
        RedisLocation(location.url, "a:b")


def test_a_server_that_does_not_fsync_every_write_is_refused(tmp_path: Path) -> None:
    port = free_port()
    server = start_redis(port)  # appendonly no
    try:
        location = RedisLocation(f"redis://127.0.0.1:{port}/0", "shop")
        with pytest.raises(InputError, match=r"runs with appendonly no, appendfsync everysec; expected appendonly "
                                             r"yes, appendfsync always"):
            RedisEventLog(location)
        with redis.Redis(host="127.0.0.1", port=port) as client:
            client.config_set("appendonly", "yes")
            client.config_set("appendfsync", "everysec")
            with pytest.raises(InputError, match=r"appendonly yes, appendfsync everysec; expected"):
                RedisEventLog(location)
        with RedisEventLog(location, check_durability=False) as log:  # the caller's choice
            assert log.append([view("e1")]).new == [view("e1")]
    finally:
        stop_redis(server)


def test_a_server_that_refuses_config_is_trusted_with_a_warning(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    server = start_redis(port, tmp_path, "--rename-command", "CONFIG", "")  # as managed Redis services do
    try:
        with caplog.at_level("WARNING", logger="features.redis_log"), \
                RedisEventLog(RedisLocation(f"redis://127.0.0.1:{port}/0", "shop")) as log:
            assert log.append([view("e1")]).new == [view("e1")]
        assert [r.getMessage() for r in caplog.records if "CONFIG GET is refused" in r.getMessage()
                and "appendonly yes and appendfsync always" in r.getMessage()]
    finally:
        stop_redis(server)


@pytest.mark.parametrize("secret", ["worker:s3cret@", "", "?password=s3cret"])
def test_a_server_not_running_is_named_without_its_password(secret: str) -> None:
    port = free_port()
    user, query = (secret, "") if secret.endswith("@") else ("", secret)
    location = RedisLocation(f"redis://{user}127.0.0.1:{port}/0{query}", "shop")
    with pytest.raises(InputError, match=rf"redis://127.0.0.1:{port}/0 stream sendwise:shop:events cannot "
                                         r"be reached .*expected a redis-server running there") as caught:
        RedisEventLog(location)
    assert "s3cret" not in str(caught.value) and "s3cret" not in str(location) and "s3cret" not in repr(location)


def test_an_entry_another_writer_left_is_named(log: RedisEventLog, location: RedisLocation) -> None:
    log.append([view("e1")])
    with redis.Redis.from_url(location.url) as client:
        foreign = client.xadd(location.stream, {"x": "1"}).decode()
        with pytest.raises(InputError, match=rf"entry {foreign} is not an event; expected a field 'e'"):
            list(log.read())
        client.xdel(location.stream, foreign)
        client.xadd(location.stream, {"e": '{"event_id":\n"e2"}'})
        with pytest.raises(InputError, match=r"holds a line break; expected one event as JSON per entry"):
            log.read_after("0-0")
    with pytest.raises(InputError, match=r"cannot read after position 'nonsense'"):
        log.read_after("nonsense")


def test_forget_removes_entries_and_ids(log: RedisEventLog, location: RedisLocation) -> None:
    log.append([view("e1", "c1"), view("e2", "c2"), order("e3", "c1"), view("e4", "c3"), view("e5", "c2")])
    removal = log.remove_customers([" c1 ", "c3", "c-none"])
    assert removal.removed == Counter({"c1": 2, "c3": 1}) and removal.positions == [0, 2, 3]
    assert list(log.read()) == [view("e2", "c2"), view("e5", "c2")]
    assert len(log) == 2 and "e1" not in log and len(entry_ids(location)) == 2
    assert log.append([view("e1", "c1")]).new == [view("e1", "c1")]  # its id is free again
    assert log.forget(["c-none"]) == Counter()


def test_forget_also_removes_what_is_appended_while_it_scans(log: RedisEventLog, location: RedisLocation) -> None:
    log.append([view("e1", "c1"), view("e2", "c2")])

    class Racing(RedisEventLog):
        """Another worker appends an event of c1 just after the first scan, before the deletion."""

        raced = False

        def _entries(self, after: str | None = None) -> Iterator[tuple[str, dict]]:
            yield from super()._entries(after)
            if not self.raced:
                self.raced = True
                log.append([view("e3", "c1")])

    with Racing(location) as forgetting:
        removal = forgetting.remove_customers(["c1"])
    assert removal.removed == Counter({"c1": 2}) and removal.positions == [0, 2]
    assert list(log.read()) == [view("e2", "c2")] and "e3" not in log


def test_acknowledged_events_survive_a_killed_server(tmp_path: Path) -> None:
    port = free_port()
    server = start_redis(port, tmp_path)
    try:
        location = RedisLocation(f"redis://127.0.0.1:{port}/0", "shop")
        with RedisEventLog(location) as log:
            acknowledged = log.append([view(f"e{i}") for i in range(50)]).end
        stop_redis(server)  # SIGKILL: nothing flushed on the way out
        server = start_redis(port, tmp_path)
        with RedisEventLog(location) as log:
            assert log.read_after("0-0") == ([view(f"e{i}") for i in range(50)], acknowledged)
            assert log.append([view("e0")]).duplicates == ["e0"]
    finally:
        stop_redis(server)


def test_a_file_log_and_a_redis_log_give_the_same_tables(location: RedisLocation, tmp_path: Path) -> None:
    events = [view("e1", "c1"), order("e2", "c1"), view("e3", "c2", at="2024-03-03T00:00:00Z"), order("e4", "c2"),
              Event(event_id="e5", customer_id="c3", event_type="add_to_cart", occurred_at="2024-03-04T08:00:00Z")]
    path = tmp_path / "events.jsonl"
    assert {t: len(f) for t, f in source_frames(path).items()} == {Table.EVENTS: 0, Table.ORDERS: 0}  # no file yet
    for source in (path, location):
        log = open_event_log(source)
        log.append(events)
        log.close()
    file_frames, redis_frames = source_frames(path), source_frames(location)
    assert set(file_frames) == set(redis_frames) == {Table.EVENTS, Table.ORDERS}
    assert len(redis_frames[Table.ORDERS]) == 4 and len(redis_frames[Table.EVENTS]) == 3
    for table in file_frames:
        pd.testing.assert_frame_equal(redis_frames[table], file_frames[table])
    assert list(source_records(location)) == list(source_records(path))
    assert source_customer_events(location, " c2 ") == source_customer_events(path, "c2") != []

    con = duckdb.connect()
    con.execute("CREATE TABLE orders AS SELECT 'e2' AS order_id")
    con.execute("CREATE TABLE events AS SELECT 'c2' AS customer_id, 'product_view' AS event_type, "
                "'p1' AS product_id, TIMESTAMP '2024-03-03 00:00:00' AS occurred_at")
    assert held_rows(con, source_records(location)) == held_rows(con, source_records(path)) == {"e2", "e3"}

    assert forget_in_source(location, ["c1"]) == forget_in_source(path, ["c1"]) == Counter({"c1": 2})
    assert list(source_records(location)) == list(source_records(path)) != []


def test_an_id_another_worker_took_for_a_different_event_is_a_conflict_and_nothing_is_written(
        log: RedisEventLog, location: RedisLocation) -> None:
    """The check and the write are one step: a worker whose own check came before the other's write
    still gets the conflict, not a silent duplicate."""
    other = RedisEventLog(location)
    assert other.append([view("e1", customer="c1")]).new
    result = log.append([view("e2"), view("e1", customer="c2")])  # e1 names another customer's view here
    assert result.conflicts == ["e1"] and result.new == [] and result.duplicates == []
    assert entry_ids(location) and len(log) == 1 and "e2" not in log
    assert log.append([view("e1", customer="c1")]).duplicates == ["e1"]  # the same event again: a repeat
    other.close()
