"""The event log (issue 16, item 1): events validated against the contract, all or nothing, a message per
bad field; appended durably (a SIGKILL loses no acknowledged event) and once per event_id; a torn last
line skipped and cut off; its rows in the data that training reads; forgotten and exported by privacy."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.build import build_features
from features.errors import InputError
from features.event_log import Event, EventLog, EventsError, event_log_frames, forget_customers, parse_events
from features.io import load_data_dir, write_tombstones
from features.schema import Table
from features.tombstones import Tombstones
from sendwise.cli import app
from sendwise.privacy.export import export_customer

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2024, 3, 1)
runner = CliRunner()


def event(event_id: str = "e1", customer_id: str = "c", event_type: str = "add_to_cart",
          occurred_at: str = "2024-01-20T10:00:00Z", **more: object) -> dict:
    return {"event_id": event_id, "customer_id": customer_id, "event_type": event_type,
            "occurred_at": occurred_at, **more}


def order(event_id: str = "w1", customer_id: str = "c", occurred_at: str = "2024-01-20T10:00:00Z",
          lines: list | None = None) -> dict:
    return event(event_id, customer_id, "order", occurred_at,
                 lines=lines or [{"product_id": "p1", "quantity": 2, "unit_price": 10.0},
                                 {"product_id": "p2", "quantity": -1, "unit_price": "5"}])


def events(*payloads: dict) -> list[Event]:
    return parse_events({"events": list(payloads)}, now=NOW)


@pytest.mark.parametrize(("field", "value", "says"), [
    ("event_id", " ", "empty; expected text of 1 to 200 characters"),
    ("event_id", "x" * 201, "201 characters; expected text of 1 to 200 characters"),
    ("customer_id", "c\n1", "holds the control character U+000A; expected text"),
    ("customer_id", None, "got NoneType None; expected text"),
    ("event_type", "purchase", "unknown event type 'purchase'; expected one of product_view, add_to_cart"),
    ("occurred_at", "yesterday", "got 'yesterday'; expected a date or timestamp such as 2024-03-01"),
    ("occurred_at", 1706000000, "got int 1706000000; expected a date or timestamp"),
    ("occurred_at", "2024-03-01T00:06:00Z", ("2024-03-01T00:06:00Z is in the future (after 2024-03-01T00:00:00Z); "
                                             "expected a moment that has happened, at most 5 minutes after")),
    ("product_id", 2.5, "got float 2.5; expected text"),
    ("lines", [{"product_id": "p1", "quantity": 1, "unit_price": 1}],
     "given on an event of type add_to_cart; expected lines only on an order"),
    ("colour", "red", "not a field of an event; expected only event_id, customer_id"),
])
def test_each_bad_field_is_named_with_what_was_expected(field: str, value: object, says: str) -> None:
    with pytest.raises(EventsError) as caught:
        events(event("ok"), event("bad") | {field: value})
    assert str(caught.value).startswith(f"events[1].{field}: {says}")
    assert [where for where, _ in caught.value.problems] == [f"events[1].{field}"]


@pytest.mark.parametrize(("line", "field", "says"), [
    ({"quantity": 0}, "quantity", "zero; expected a non-zero whole number (negative: a return)"),
    ({"quantity": 1.5}, "quantity", "got 1.5, not a whole number; expected a non-zero whole number"),
    ({"quantity": True}, "quantity", "got bool True; expected a non-zero whole number"),
    ({"quantity": 2e9}, "quantity", "got 2,000,000,000; expected a non-zero whole number"),
    ({"unit_price": -1}, "unit_price", "got -1.0; expected a finite number from 0 to 1,000,000,000"),
    ({"unit_price": "inf"}, "unit_price", "got inf; expected a finite number"),
    ({"unit_price": None}, "unit_price", "got NoneType None; expected a finite number"),
    ({"sku": "x"}, "sku", "not a field of an order line; expected only product_id, quantity, unit_price"),
])
def test_each_bad_order_line_field_is_named(line: dict, field: str, says: str) -> None:
    lines = [{"product_id": "p1", "quantity": 1, "unit_price": 2.0}, {"product_id": "p2", "quantity": 1,
                                                                        "unit_price": 2.0} | line]
    with pytest.raises(EventsError) as caught:
        events(order(lines=lines))
    assert str(caught.value).startswith(f"events[0].lines[1].{field}: {says}")
    assert len(caught.value.problems) == 1


def test_orders_follow_the_contracts_rules_for_order_lines() -> None:
    with pytest.raises(EventsError, match=r"events\[0\]\.lines: missing; expected an order's lines"):
        events(event(event_type="order"))
    with pytest.raises(EventsError, match=r"events\[0\]\.lines: empty"):
        events(order(lines=[]) | {"lines": []})
    with pytest.raises(EventsError, match=r"events\[0\]\.product_id: given on an order; expected the order's "
                                          "products in its lines"):
        events(order() | {"product_id": "p1"})
    line = {"product_id": "p1", "quantity": 1, "unit_price": 2.0}
    with pytest.raises(EventsError, match=r"lines\[1\] repeats lines\[0\] exactly; expected each line once"):
        events(order(lines=[line, line]))
    (taken,) = events(order())  # a return line (negative quantity) and a price as text are fine
    assert [(li.product_id, li.quantity, li.unit_price) for li in taken.lines] == [("p1", 2, 10.0), ("p2", -1, 5.0)]


def test_a_bad_batch_is_refused_whole_and_every_bad_event_is_named() -> None:
    bad = {"events": [event("e1"), "not an event", event("e3", occurred_at="soon"), event("e4", event_type="x")],
           "extra": 1}
    with pytest.raises(EventsError) as caught:
        parse_events(bad, now=NOW)
    assert [where for where, _ in caught.value.problems] == [
        "events[1]", "events[2].occurred_at", "events[3].event_type", "extra"]
    assert "extra: not a field of the body; expected only events" in str(caught.value)
    for payload, says in (([], "got list; expected a JSON object"),
                          ({"events": []}, "events: 0 events; expected 1 to 10,000"),
                          ({"events": [event()] * 10_001}, "events: 10,001 events; expected 1 to 10,000")):
        with pytest.raises(EventsError, match=says):
            parse_events(payload, now=NOW)
    (single,) = parse_events(event(" e9 ", " c "), now=NOW)  # one event object is a batch of one; ids trimmed
    assert (single.event_id, single.customer_id) == ("e9", "c")


def test_times_are_stored_as_utc_and_naive_ones_are_the_shops_local_times() -> None:
    """New York: 2024-03-10 02:30 does not exist (clocks go forward at 02:00): read with the offset before
    the change, EST, 07:30 UTC; 2024-11-03 01:30 happens twice: the later, EST, 06:30 UTC (as the
    contract's tables, features/timezones.py). An offset wins over the shop's zone."""
    taken = parse_events({"events": [event("a", occurred_at="2024-03-10 02:30"),
                                     event("b", occurred_at="2024-11-03T01:30:00"),
                                     event("c", occurred_at="2024-07-01 12:00:00 +0200"),
                                     event("d", occurred_at="2024-07-01")]}, timezone="America/New_York")
    assert [e.occurred_at for e in taken] == [datetime(2024, 3, 10, 7, 30), datetime(2024, 11, 3, 6, 30),
                                              datetime(2024, 7, 1, 10), datetime(2024, 7, 1, 4)]
    (utc,) = parse_events(event(occurred_at="2024-07-01 12:00"))
    assert utc.occurred_at == datetime(2024, 7, 1, 12)
    (late,) = parse_events(event(occurred_at="2024-03-01T00:04:59Z"), now=NOW)  # within the clocks' tolerance
    assert late.occurred_at == datetime(2024, 3, 1, 0, 4, 59)
    with pytest.raises(InputError, match="unknown time zone 'Mars/Olympus'"):
        parse_events(event(), timezone="Mars/Olympus")


def test_an_event_id_is_taken_once_and_one_id_for_two_events_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "events.jsonl"  # the folder is created
    log = EventLog(path)
    first = log.append(events(event("e1"), event("e2"), event("e1")))  # the same event twice: one event
    assert [e.event_id for e in first.new] == ["e1", "e2"] and first.duplicates == ["e1"]
    again = log.append(events(event("e2"), event("e3")))
    assert [e.event_id for e in again.new] == ["e3"] and again.duplicates == ["e2"]
    with pytest.raises(EventsError, match=r"events\[1\]\.event_id: 'e4' is also events\[0\]'s, a different event"):
        events(event("e4"), event("e4", customer_id="other"))
    with pytest.raises(EventsError, match=r"events\[2\]\.event_id: 'e4' is also events\[0\]'s"):
        log.append([Event.model_validate(event("e4")), Event.model_validate(event("e5")),
                    Event.model_validate(event("e4", event_type="product_view"))])
    assert len(log) == 3 and "e4" not in log and "e5" not in log  # all or nothing: e5 was not written either
    other = EventLog(path)  # another process's log: the ids are read back when it opens
    assert other.append(events(event("e1"), event("e6"))).duplicates == ["e1"]
    assert log.append(events(event("e6"), event("e7"))).duplicates == ["e6"]  # what the other appended is seen
    assert [e.event_id for e in EventLog(path).read()] == ["e1", "e2", "e3", "e6", "e7"]
    assert len(path.read_text().splitlines()) == 5 and path.stat().st_mode & 0o777 == 0o600
    log.append(events(event('é"\\8')))  # escaped in the line: read back whole
    assert 'é"\\8' in EventLog(path) and log.append(events(event('é"\\8'))).duplicates == ['é"\\8']


def test_threads_appending_the_same_ids_write_each_once(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl", fsync=False)
    batches = [events(*(event(f"e{(t * 7 + k) % 40}") for k in range(10))) for t in range(8)]
    new: list[str] = []
    threads = [threading.Thread(target=lambda b=b: new.extend(e.event_id for e in log.append(b).new)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = [json.loads(line)["event_id"] for line in log.path.read_text().splitlines()]
    assert sorted(lines) == sorted(new) and len(set(lines)) == len(lines) == len(log)


WRITER = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
          "from datetime import datetime\n"
          "from features.event_log import Event, EventLog\n"
          "log = EventLog(sys.argv[1])\n"
          "i = 0\n"
          "while True:\n"
          "    batch = [Event(event_id=f'e{i + k}', customer_id=f'c{(i + k) % 10}', event_type='order',\n"
          "                   occurred_at=datetime(2024, 1, 1),  # lines of 1 kB: a kill may land inside one\n"
          "                   lines=[{'product_id': f'p{j}', 'quantity': 1, 'unit_price': 1.0} for j in range(20)])\n"
          "             for k in range(3)]\n"
          "    log.append(batch)\n"
          "    print(' '.join(e.event_id for e in batch), flush=True)\n"
          "    i += 3\n")


def _acknowledged(writer: subprocess.Popen, at_least: int, then=None) -> set[str]:
    """Read the ids ``writer`` printed (each after its append returned) until ``at_least``, call ``then``,
    SIGKILL it and read what it printed before it died."""
    acked: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while len(acked) < at_least:
            assert writer.poll() is None and time.monotonic() < deadline, "the writer stopped"
            acked.extend(writer.stdout.readline().split())
        if then is not None:
            then()
    finally:
        writer.send_signal(signal.SIGKILL)
        rest, _ = writer.communicate()
    return set(acked) | set(rest.split())


def test_a_sigkill_loses_no_acknowledged_event_and_the_log_reads_cleanly(tmp_path: Path, caplog) -> None:
    path = tmp_path / "events.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    acked = _acknowledged(writer, 300)
    with caplog.at_level(logging.WARNING):
        stored = [e.event_id for e in EventLog(path).read()]
    assert acked <= set(stored) and len(stored) == len(set(stored))
    assert len(caplog.records) <= 1  # at most the torn line of the write the kill interrupted
    log = EventLog(path)
    assert log.append(events(event("after"))).new and list(log.read())[-1].event_id == "after"


def test_a_torn_last_line_is_skipped_with_one_warning_and_cut_off_before_the_next_append(
        tmp_path: Path, caplog) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.append(events(event("e1"), event("e2")))
    with open(path, "ab") as handle:  # what a writer killed mid-write leaves
        handle.write(b'{"event_id":"e3","customer_id":"c","event_ty')
    with caplog.at_level(logging.WARNING, logger="features.event_log"):
        assert [e.event_id for e in log.read()] == ["e1", "e2"]
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().endswith(": skipped (the next append cuts them off)")
    assert len(EventLog(path)) == 2 and "e3" not in log
    caplog.clear()
    assert [e.event_id for e in log.append(events(event("e3"))).new] == ["e3"]
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().endswith(": cut off")
    caplog.clear()
    assert [e.event_id for e in log.read()] == ["e1", "e2", "e3"] and not caplog.records
    assert path.read_bytes().endswith(b"\n") and b"event_ty\n" not in path.read_bytes()


def test_a_damaged_line_inside_the_log_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    EventLog(path).append(events(event("e1")))
    with open(path, "ab") as handle:
        handle.write(b"not json\n")
    with pytest.raises(InputError, match=r"events.jsonl: line 2 is not an event; expected one event as JSON per line"):
        EventLog(path)  # a writer refuses to guess which ids the line held
    with pytest.raises(InputError, match=r"events.jsonl: line 2 is not JSON; expected one event as JSON per line"):
        list(event_log_frames(path))


@pytest.fixture
def shop(tiny_frames: dict[str, pd.DataFrame], tmp_path: Path) -> Path:
    """The tiny shop of conftest (customers a, b, c, d; orders o1-o3, r1) as contract files."""
    data = tmp_path / "tables"
    data.mkdir()
    for name, frame in tiny_frames.items():
        frame.to_parquet(data / f"{name}.parquet")
    return data


def test_load_data_dir_adds_the_logs_rows_and_features_see_them(shop: Path, tmp_path: Path) -> None:
    """c never ordered in the files: the log's order w1 (2 x p1 @10, a return of p2 @5) on Jan 20 is
    their first. The log's o1 (an order id the files hold) and c's product_view equal to the file's of
    Jan 31 11:00 are the export's already: left out; so is the event after now. b is forgotten: their log event is skipped like their files'
    rows. n, a customer the files do not know, is fine, as in the contract (a warning)."""
    log = EventLog(tmp_path / "state" / "events.jsonl")
    log.append(events(order("w1", "c"), order("o1", "a"), event("v1", "c", "product_view", product_id="p2"),
                      event("v2", "b", "email_open"), event("dup", "c", "product_view", "2024-01-31 11:00", product_id="p1"),
                      event("v3", "n", "add_to_cart", "2024-01-21T00:00:00Z", product_id="p1")))
    log.append([Event(event_id="late", customer_id="c", event_type="email_open", occurred_at=datetime(2024, 6, 1))])
    write_tombstones(shop, Tombstones().adding(["b"]))
    frames = event_log_frames(log.path)
    assert len(frames[Table.ORDERS]) == 4 and len(frames[Table.EVENTS]) == 5
    assert frames[Table.ORDERS].dtypes["ordered_at"].kind == "M"

    tables, report = load_data_dir(shop, tmp_path / "rejects", now=NOW, event_log=log.path)
    assert report.event_log == {Table.EVENTS: 2, Table.ORDERS: 2}
    assert report.forgotten["events"] == 2  # b's add_to_cart in the file, and v2
    assert any("2 orders row(s) of the event log" in w and "orders the orders table holds" in w
               for w in report.warnings)
    assert any("1 events row(s) of the event log" in w and "events the events table holds" in w
               for w in report.warnings)
    assert any("after 2024-03-01T00:00:00Z" in w for w in report.warnings)
    assert any("customer_id value(s) in events are not in customers" in w for w in report.warnings)
    rows = tables.con.sql("SELECT order_id, customer_id, quantity FROM orders WHERE order_id = 'w1' "
                          "ORDER BY quantity").fetchall()
    assert rows == [("w1", "c", -1.0), ("w1", "c", 2.0)]
    features = build_features(tables, "2024-02-01").set_index("customer_id")
    plain = build_features(load_data_dir(shop, tmp_path / "rejects", now=NOW)[0], "2024-02-01").set_index("customer_id")
    assert plain.loc["c", "orders_count"] == 0 and features.loc["c", "orders_count"] == 1
    assert tables.before(datetime(2024, 1, 21)).count(Table.EVENTS) == 1  # v1: the files' events come later
    unchanged = build_features(load_data_dir(shop, tmp_path / "rejects", now=NOW,
                                             event_log=tmp_path / "none.jsonl")[0], "2024-02-01")
    assert unchanged.equals(plain.reset_index())  # no log yet: the directory alone


def test_privacy_forget_and_export_cover_the_event_log(shop: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["init", "p", "--data", str(shop)]).exit_code == 0
    log = EventLog(tmp_path / "p" / "state" / "events.jsonl")
    log.append(events(order("w1", "c"), event("e1", "a"), event("e2", "c", "product_view", product_id="p1"),
                      event("e3", "a", "email_open")))
    kept = [line for line in log.path.read_bytes().splitlines(keepends=True) if b'"customer_id":"a"' in line]
    options = ["--project", "p", "--no-mlruns", "--no-exposure-log"]

    doc = json.loads(runner.invoke(app, ["privacy", "export", "c", *options]).output)
    assert [e["event_id"] for e in doc["events"]] == ["w1", "e2"] and doc["features"]["orders_count"] == 1
    assert export_customer("a", shop, event_log=log.path)["events"][1]["event_type"] == "email_open"

    out = runner.invoke(app, ["privacy", "forget", "c", *options])
    assert out.exit_code == 0, out.output
    assert "events.jsonl" in out.output and "2 events removed" in out.output
    assert log.path.read_bytes() == b"".join(kept)  # the others' lines byte for byte
    assert log.path.stat().st_mode & 0o777 == 0o600
    assert [e.event_id for e in log.append(events(event("e4", "a"))).new] == ["e4"]  # the open log follows the rewrite
    assert [e.event_id for e in log.read()] == ["e1", "e3", "e4"]

    log.append(events(event("e5", "a"), event("e6", "d")))
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(b"".join(lines[:4]) + b"damaged\n" + lines[4])  # a bad line: forget must not claim success
    before = log.path.read_bytes()
    out = runner.invoke(app, ["privacy", "forget", "a", *options])
    assert out.exit_code == 2 and "could not be searched" in out.output and "line 5 is not JSON" in out.output
    assert log.path.read_bytes() == before


def test_forget_failing_midway_leaves_the_log_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.jsonl"
    EventLog(path).append(events(event("e1", "a"), event("e2", "b")))
    before = path.read_bytes()

    def broken(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="No space left"):
        forget_customers(path, ["a"])
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["events.jsonl"]


def test_forget_while_a_writer_appends_loses_none_of_the_others_events(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    removed = []

    def forget_three_times() -> None:
        for _ in range(3):
            time.sleep(0.05)
            removed.append(forget_customers(path, ["c3"]))

    acked = _acknowledged(writer, 150, forget_three_times)
    stored = [json.loads(line) for line in path.read_bytes().splitlines() if line.endswith(b"}")]
    assert all(r["c3"] for r in removed)
    others = {a for a in acked if int(a[1:]) % 10 != 3}
    assert others <= {r["event_id"] for r in stored}


def test_held_rows_names_the_logged_orders_and_events_the_data_holds(tiny_tables, tmp_path: Path) -> None:
    """What the shop's next export also holds is replayed once, not twice (serving/live.py skips these)."""
    from features.event_log import held_rows

    con = tiny_tables.con
    order_id, customer, ordered_at = con.execute("SELECT order_id, customer_id, ordered_at FROM orders "
                                                 "ORDER BY order_id LIMIT 1").fetchall()[0]
    event = con.execute("SELECT customer_id, event_type, product_id, occurred_at FROM events LIMIT 1").fetchall()[0]
    log = EventLog(tmp_path / "events.jsonl")
    at = ordered_at.isoformat() + "Z"
    log.append(parse_events({"events": [
        {"event_id": str(order_id), "customer_id": customer, "event_type": "order", "occurred_at": at,
         "lines": [{"product_id": "p-x", "quantity": 1, "unit_price": 1.0}]},
        {"event_id": "same-row", "customer_id": event[0], "event_type": event[1], "occurred_at":
         event[3].isoformat() + "Z", **({"product_id": event[2]} if event[2] else {})},
        {"event_id": "new-order", "customer_id": customer, "event_type": "order", "occurred_at": at,
         "lines": [{"product_id": "p-x", "quantity": 1, "unit_price": 1.0}]},
        {"event_id": "new-event", "customer_id": event[0], "event_type": "email_open", "occurred_at": at}]},
        now=datetime(2030, 1, 1)))
    assert held_rows(con, log.records()) == {str(order_id), "same-row"}


@pytest.mark.parametrize(("field", "value"), [("occurred_at", "0001-01-01T00:00:00+05:00"),
                                              ("occurred_at", "9999-12-31T23:59:59-05:00"),
                                              ("lines.0.unit_price", 10**400), ("lines.0.quantity", 10**400)])
def test_values_beyond_what_a_float_or_utc_can_hold_are_named_not_a_crash(field: str, value: object) -> None:
    event = {"event_id": "o-1", "customer_id": "c", "event_type": "order", "occurred_at": "2024-01-01T00:00:00Z",
             "lines": [{"product_id": "p", "quantity": 1, "unit_price": 1.0}]}
    if field == "occurred_at":
        event["occurred_at"] = value
    else:
        event["lines"][0][field.rsplit(".", 1)[1]] = value
    with pytest.raises(InputError, match=re.escape(f"events[0].{field.replace('.0.', '[0].')}: ")):
        parse_events({"events": [event]}, now=datetime(2030, 1, 1))


def test_an_id_another_writer_took_for_a_different_event_is_a_conflict_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    first, second = EventLog(path), EventLog(path)  # two writers (processes) of one file
    assert first.append(events(event("e1", customer_id="c1"))).new
    result = second.append(events(event("e2"), event("e1", customer_id="c2")))
    assert result.conflicts == ["e1"] and result.new == [] and len(EventLog(path)) == 1
    assert second.append(events(event("e1", customer_id="c1"))).duplicates == ["e1"]
