"""Online equals batch through the service: the demo shop's last 7 days, posted to ``POST /events`` in
time order onto a service whose snapshot is 7 days old, give every customer the features the batch
build computes at the data's end; and so does the same service restarted over its event log."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import redis
from conftest import same_feature_value
from starlette.testclient import TestClient

from features.build import build_features
from features.io import load_data_dir
from features.schema import (
    CHANGED_AT,
    CUSTOMER_ID,
    EVENT_TYPE,
    OCCURRED_AT,
    ORDER_ID,
    ORDERED_AT,
    PRODUCT_ID,
    QUANTITY,
    SIGNUP_AT,
    UNIT_PRICE,
    Table,
)
from features.snapshot import data_end, write_snapshot
from features.tables import Tables
from serving.reload import RELOAD_ENV

DAYS = 7


def _frames(tables: Tables) -> dict[Table, pd.DataFrame]:
    return {t: tables.con.execute(f"SELECT * FROM {t.value}").df() for t in Table}


def _events(frames: dict[Table, pd.DataFrame], cut: pd.Timestamp) -> list[dict]:
    """The orders and events at or after ``cut`` as ``/events`` bodies, in time order."""
    events = frames[Table.EVENTS]
    events = events[events[OCCURRED_AT] >= cut]
    out = [(row[OCCURRED_AT], {"event_id": f"ev-{i}", "customer_id": row[CUSTOMER_ID], "event_type": row[EVENT_TYPE],
                               "occurred_at": row[OCCURRED_AT].isoformat() + "Z",
                               **({"product_id": row[PRODUCT_ID]} if isinstance(row[PRODUCT_ID], str) else {})})
           for i, row in events.iterrows()]
    orders = frames[Table.ORDERS]
    for order_id, lines in orders[orders[ORDERED_AT] >= cut].groupby(ORDER_ID):
        first = lines.iloc[0]
        out.append((first[ORDERED_AT], {
            "event_id": str(order_id), "customer_id": first[CUSTOMER_ID], "event_type": "order",
            "occurred_at": first[ORDERED_AT].isoformat() + "Z",
            "lines": [{"product_id": r[PRODUCT_ID], "quantity": int(r[QUANTITY]), "unit_price": float(r[UNIT_PRICE])}
                      for _, r in lines.iterrows()]}))
    return [body for _, body in sorted(out, key=lambda pair: pair[0])]



def _mismatches(service, batch: pd.DataFrame, end) -> list[tuple]:
    """(customer, feature, online, batch) wherever the service's online features at ``end`` differ."""
    out = []
    for cid, row in batch.iterrows():
        online = service.profiles.features(cid, end)
        assert online is not None, cid
        out += [(cid, name, online[name], value) for name, value in row.items()
                if name != "as_of" and not same_feature_value(online[name], value)]
    return out


@pytest.mark.parametrize("store", ["file", "redis"])
def test_the_last_week_posted_to_events_equals_the_batch_build(store: str, served_env: dict[str, str],
                                                               demo_tables: Tables, tmp_path: Path,
                                                               request: pytest.FixtureRequest) -> None:
    """File: a restart replays the log. Redis: a second worker on the same online store replays what
    is there, then follows what the first takes after it started."""
    end = data_end(demo_tables) + timedelta(microseconds=1)
    cut = pd.Timestamp(end - timedelta(days=DAYS))
    frames = _frames(demo_tables)
    # the service's data: signups and attribute changes of the week left out (no event carries them)
    shop = tmp_path / "shop"
    shop.mkdir()
    for table, frame in frames.items():
        if table is Table.CUSTOMERS:
            frame = frame[frame[SIGNUP_AT].isna() | (frame[SIGNUP_AT] < cut)]
        if table is Table.CUSTOMER_CHANGES:
            frame = frame[frame[CHANGED_AT] < cut]
        frame.to_parquet(shop / f"{table.value}.parquet", index=False)
    served, _ = load_data_dir(shop, tmp_path / "rejects")
    write_snapshot(served.before(cut.to_pydatetime()), tmp_path / "snapshot.parquet", cut.to_pydatetime())

    mp = pytest.MonkeyPatch()
    env = served_env | {"SENDWISE_DATA": str(shop), "SENDWISE_SNAPSHOT": str(tmp_path / "snapshot.parquet"),
                        "SENDWISE_EXPOSURE_LOG": str(tmp_path / "exposures.jsonl"), "SENDWISE_CLOCK": "wall",
                        RELOAD_ENV: "0"}
    if store == "redis":
        url = request.getfixturevalue("online_store")
        redis.Redis.from_url(url).flushall()
        env |= {"SENDWISE_ONLINE_STORE": url}
    for key, value in env.items():
        mp.setenv(key, value)
    import bentoml

    from serving.service import Sendwise

    bodies = _events(frames, cut)
    assert len(bodies) > 100  # a real week of traffic
    try:
        with TestClient(Sendwise.to_asgi()) as client:
            def post(part: list[dict]) -> None:
                for start in range(0, len(part), 200):
                    answer = client.post("/events", json={"events": part[start:start + 200]})
                    assert answer.status_code == 200, answer.text

            half = len(bodies) // 2
            post(bodies[:half])
            second = Sendwise() if store == "redis" else None  # a second worker, started half-way
            post(bodies[half:])
            service = bentoml.get_current_service()
            batch = build_features(served, end).set_index(CUSTOMER_ID)
            assert _mismatches(service, batch, end) == []
            assert len(service.profiles.online.touched()) > 50
            if second is not None:  # it followed the first worker's events
                second.profiles.follow()
                assert _mismatches(second, batch, end) == []
                second.stop_reloading()
            # a restart replays the log onto the data from before the snapshot: the same, although the
            # shop's files hold the week too (held rows are those of the data the store reads)
            restarted = Sendwise()
            assert _mismatches(restarted, batch, end) == []
            restarted.stop_reloading()
    finally:
        mp.undo()
