"""An event log in Redis (the online store several workers share) as a source of the project's data and
a store of ``privacy export`` and ``forget``, against a real redis-server: training reads its rows as it
reads a file log's, export lists a customer's events, forget deletes them (the segments worker's cursor
lowered by those it had counted) and refuses a server it cannot reach before writing anything."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis
from redis_server import free_port

from features.errors import InputError
from features.event_log import Event, EventLog, parse_events
from features.io import load_data_dir
from features.redis_log import RedisEventLog, RedisLocation
from sendwise.privacy.export import export_customer
from sendwise.privacy.forget import forget_customers
from serving.outbox import TriggerOutbox

VICTIM = "V-4471"
NOW = datetime(2024, 3, 1)


def log_events(*rows: tuple[str, str, str]) -> list[Event]:
    """(event_id, customer, event_type) on Jan 20: product views, or orders of 2 x p1 @ 2.5."""
    return parse_events({"events": [
        {"event_id": i, "customer_id": c, "event_type": t, "occurred_at": "2024-01-20T10:00:00Z",
         **({"lines": [{"product_id": "p1", "quantity": 2, "unit_price": 2.5}]} if t == "order" else {"product_id": "p1"})}
        for i, c, t in rows]}, now=NOW)


EVENTS = log_events(("w1", VICTIM, "order"), ("e1", "c1", "product_view"), ("e2", VICTIM, "product_view"),
                    ("o2", "c2", "order"), ("e3", "c2", "product_view"))  # o2: an order id the files hold


@pytest.fixture
def redis_url(online_store: str) -> str:
    """The session's redis-server (appendonly yes, appendfsync always; conftest.online_store)."""
    return online_store


@pytest.fixture
def location(redis_url: str) -> Iterator[RedisLocation]:
    """The shop's log in Redis, holding :data:`EVENTS`."""
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    location = RedisLocation(redis_url, "shop")
    with RedisEventLog(location) as log:
        log.append(EVENTS)
    return location


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Orders o0 (c1), o1 (VICTIM), o2 (c2) in January."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "orders.csv").write_text(
        "order_id,customer_id,product_id,quantity,unit_price,ordered_at\n"
        + "".join(f"o{i},{c},p1,1,2.5,2024-01-0{i + 1} 10:00:00\n" for i, c in enumerate(["c1", VICTIM, "c2"])))
    return data


def test_training_reads_a_redis_log_as_it_reads_a_file_log(location: RedisLocation, data: Path,
                                                           tmp_path: Path) -> None:
    with EventLog(tmp_path / "events.jsonl") as file_log:
        file_log.append(EVENTS)
    loaded = {}
    for name, source in (("file", file_log.path), ("redis", location)):
        tables, report = load_data_dir(data, tmp_path / "rejects", now=NOW, event_log=source)
        orders = tables.con.sql("SELECT order_id, customer_id, quantity FROM orders ORDER BY order_id").fetchall()
        events = tables.con.sql("SELECT customer_id, event_type FROM events ORDER BY customer_id").fetchall()
        warnings = [w.replace(str(source), "LOG") for w in report.warnings]
        loaded[name] = (orders, events, report.event_log, warnings)
    assert loaded["redis"] == loaded["file"]
    orders, events, _, warnings = loaded["redis"]
    assert [o[0] for o in orders] == ["o0", "o1", "o2", "w1"]  # o2 is the files' already: once
    assert events == [(VICTIM, "product_view"), ("c1", "product_view"), ("c2", "product_view")]
    assert any("1 orders row(s) of the event log LOG left out" in w for w in warnings)


def test_forget_deletes_a_customers_events_in_redis_and_export_lists_them(location: RedisLocation, data: Path,
                                                                          tmp_path: Path) -> None:
    before = export_customer(VICTIM, data, event_log=location)
    assert [e["event_id"] for e in before["events"]] == ["w1", "e2"]
    assert before["features"]["orders_count"] == 2  # o1 in the files and w1 in the log

    state = tmp_path / "state"
    state.mkdir()
    TriggerOutbox(state / "outbox.jsonl").close()  # a service with segments ran here
    (state / "segments.cursor").write_text("3")  # its worker handled w1, e1, e2; o2 and e3 are next
    report = forget_customers([f" {VICTIM} "], data, event_log=location, state_dir=state)
    assert report.events == 2 and report.found[VICTIM] == 3  # o1 in orders.csv, w1 and e2 in Redis
    assert f"event log {location}" in report.stores and not report.failed

    with RedisEventLog(location) as log:
        kept = [e.event_id for e in log.read()]
        assert kept == ["e1", "o2", "e3"] and len(log) == 3 and "w1" not in log
    assert kept[int((state / "segments.cursor").read_text()):] == ["o2", "e3"]  # nothing skipped, nothing redone
    assert export_customer(VICTIM, data, event_log=location)["events"] == []


def test_a_redis_log_out_of_reach_stops_the_forget_before_anything_is_written(data: Path) -> None:
    files = {p: p.read_bytes() for p in data.rglob("*")}
    gone = RedisLocation(f"redis://127.0.0.1:{free_port()}/0", "shop")
    with pytest.raises(InputError, match=r"sendwise:shop:events cannot be reached"):
        forget_customers([VICTIM], data, event_log=gone)
    assert {p: p.read_bytes() for p in data.rglob("*")} == files  # no tombstone either


def test_the_project_commands_search_its_online_store_and_the_file_log_from_before(redis_url: str, data: Path,
                                                                                   tmp_path: Path) -> None:
    """`sendwise privacy export/forget --project` of a project with `serve.online_store` read and clean
    the log in Redis (the project's keys) and a file log the service wrote before the move."""
    from typer.testing import CliRunner

    from sendwise.cli import app
    from sendwise.project import create_project

    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    project = create_project(tmp_path / "shop", data=data)
    settings = project.root / "sendwise.yaml"
    settings.write_text(settings.read_text() + f"\nserve:\n  online_store: {redis_url}\n")
    with RedisEventLog(RedisLocation(redis_url, project.name)) as log:
        log.append(EVENTS[:3])  # w1, e2 of the victim, e1 of c1
    with EventLog(project.event_log) as old:
        old.append(log_events(("old-1", VICTIM, "product_view"), ("old-2", "c1", "product_view")))
    runner = CliRunner()
    base = ["--project", str(project.root), "--no-mlruns", "--no-exposure-log"]
    exported = runner.invoke(app, ["privacy", "export", VICTIM, *base])
    assert exported.exit_code == 0, exported.output
    assert sorted(e["event_id"] for e in json.loads(exported.output)["events"]) == ["e2", "old-1", "w1"]
    forgot = runner.invoke(app, ["privacy", "forget", VICTIM, *base])
    assert forgot.exit_code == 0, forgot.output
    with RedisEventLog(RedisLocation(redis_url, project.name)) as log:
        assert [r["event_id"] for r in log.records()] == ["e1"]
    assert [r["event_id"] for r in EventLog(project.event_log).records()] == ["old-2"]


def test_commands_refuse_a_file_log_when_the_service_records_redis_and_no_url_is_set(
        redis_url: str, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service started with SENDWISE_ONLINE_STORE in its own environment records where its log is; a
    cron `sendwise run` or a `privacy forget` without the variable stops, naming it, instead of reading
    the file log that lacks the events (and reporting a forget done while Redis holds them)."""
    from typer.testing import CliRunner

    from sendwise.cli import app
    from sendwise.project import create_project, load_project, serve_settings
    from serving.config import ServeConfig

    monkeypatch.delenv("SENDWISE_ONLINE_STORE", raising=False)
    monkeypatch.delenv("SENDWISE_WORKERS", raising=False)
    project = create_project(tmp_path / "shop", data=data)
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    started = ServeConfig(**(serve_settings(project) | {"online_store": redis_url, "workers": 2}))
    started.open_event_log().append(EVENTS[:1])  # what `serve` does with the variable set
    with pytest.raises(InputError, match="keeps its events in Redis .*set SENDWISE_ONLINE_STORE"):
        _ = load_project(project.root).event_source
    forgot = CliRunner().invoke(app, ["privacy", "forget", VICTIM, "--project", str(project.root), "--no-mlruns",
                                      "--no-exposure-log"])
    assert forgot.exit_code == 2 and "SENDWISE_ONLINE_STORE" in forgot.output, forgot.output
    monkeypatch.setenv("SENDWISE_ONLINE_STORE", redis_url)
    assert load_project(project.root).event_source == RedisLocation(redis_url, project.name)
    monkeypatch.setenv("SENDWISE_WORKERS", "3")  # not in sendwise.yaml: the variable applies
    assert ServeConfig.from_env(**serve_settings(load_project(project.root))).workers == 3


def test_a_file_log_from_before_the_move_is_copied_into_the_online_store_once(redis_url: str, data: Path,
                                                                               tmp_path: Path) -> None:
    from serving.config import ServeConfig, recorded_event_log

    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    state = tmp_path / "state"
    with EventLog(state / "events.jsonl") as before:
        before.append(EVENTS[:2])
    config = ServeConfig(data=data, state_dir=state, online_store=redis_url, project="shop")
    config.open_event_log().close()
    with RedisEventLog(RedisLocation(redis_url, "shop")) as log:
        assert [r["event_id"] for r in log.records()] == ["w1", "e1"]
        log.append(EVENTS[2:3])
    assert recorded_event_log(state)["imported"] == (state / "events.jsonl").stat().st_size
    config.open_event_log().close()  # again: nothing copied twice, the order kept
    with RedisEventLog(RedisLocation(redis_url, "shop")) as log:
        assert [r["event_id"] for r in log.records()] == ["w1", "e1", "e2"]
