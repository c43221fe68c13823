"""Events in, fresh decisions out (serving/live.py): ``POST /events`` logs durably and applies once,
the very next next-best-action reflects an event, a bad batch is refused whole with the field
named, and a restart replays the log. Every test runs on both paths: the embedded file log, and the
online store in Redis that several workers share."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis
from starlette.testclient import TestClient

from features.event_log import EventLogLike
from serving.reload import RELOAD_ENV


def _service(env: dict[str, str], log: Path):
    """The service in-process (no reload thread) over ``log``, and its client."""
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    mp.setenv("SENDWISE_EVENT_LOG", str(log))
    mp.setenv(RELOAD_ENV, "0")
    import bentoml

    from serving.service import Sendwise

    return mp, bentoml, Sendwise


@pytest.fixture(scope="module", params=["file", "redis"])
def live(request: pytest.FixtureRequest, served_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    # a file log of its own per path: on the Redis path, a file log left there is copied into Redis
    log = tmp_path_factory.mktemp(f"events-{request.param}") / "events.jsonl"
    env = served_env | {"SENDWISE_EXPOSURE_LOG": str(tmp_path_factory.mktemp("exp") / "exposures.jsonl"),
                        "SENDWISE_EVENT_LOG": str(log)}
    if request.param == "redis":
        url = request.getfixturevalue("online_store")
        redis.Redis.from_url(url).flushall()
        env |= {"SENDWISE_ONLINE_STORE": url}
    mp, bentoml, sendwise = _service(env, log)
    with TestClient(sendwise.to_asgi()) as client:
        yield bentoml.get_current_service(), client, env
    mp.undo()


@pytest.fixture
def log(live) -> Path:
    """The service's file log (on the Redis path: where one would be copied from)."""
    return Path(live[2]["SENDWISE_EVENT_LOG"])


def _logged(service) -> EventLogLike:
    """The service's event log (the file, or the stream in Redis), read again."""
    return service.profiles.log


def _now(client: TestClient) -> datetime:
    info = client.get("/model_info").json()
    assert info["clock"] == "data"  # the demo shop's data is historical
    return datetime.fromisoformat(info["now"])


def _emailable_newsletter_customer(service) -> str:
    """A customer the policy would send a plain newsletter: consent, no cart, no views, no suppression."""
    table = service.state.customers
    for cid in table.row:
        s = table.signals(cid)
        if (s.get("email_consent") and not s.get("unsubscribed") and not s.get("cart_abandoned_1d")
                and not s.get("views_1d") and (s.get("emails_sent_7d") or 0) < 3):
            return cid
    raise AssertionError("the demo shop has no emailable customer without a cart")


def _action(client: TestClient, cid: str) -> str:
    response = client.post("/next_best_action", json={"customer_id": cid})
    assert response.status_code == 200, response.text
    return response.json()["action"]


def _post(client: TestClient, *events: dict):
    return client.post("/events", json={"events": list(events)})


def test_model_info_reports_the_service_clock(live) -> None:
    service, client, _ = live
    now = _now(client)
    assert now >= service.state.as_of and now - service.state.as_of < timedelta(hours=1)


def test_an_add_to_cart_then_the_order_then_an_unsubscribe_change_the_very_next_decision(live, log: Path) -> None:
    service, client, _ = live
    cid = _emailable_newsletter_customer(service)
    product = str(service.state.lookup.product_ids[0])
    before = _action(client, cid)
    assert before != "cart_recovery"
    at = _now(client)
    cart = {"event_id": f"cart-{cid}", "customer_id": cid, "event_type": "add_to_cart", "product_id": product,
            "occurred_at": at.isoformat() + "Z"}
    answer = _post(client, cart)
    assert answer.status_code == 200 and answer.json()["accepted"] == 1, answer.text
    assert f"cart-{cid}" in _logged(service)  # logged before the answer
    assert _action(client, cid) == "cart_recovery"

    order = {"event_id": f"order-{cid}", "customer_id": cid, "event_type": "order", "occurred_at":
             (_now(client)).isoformat() + "Z", "lines": [{"product_id": product, "quantity": 1, "unit_price": 9.5}]}
    assert _post(client, order).json()["accepted"] == 1
    assert _action(client, cid) != "cart_recovery"
    assert client.post("/score", json={"customer_id": cid}).json()["known"] is True

    unsubscribe = {"event_id": f"unsub-{cid}", "customer_id": cid, "event_type": "unsubscribe",
                   "occurred_at": _now(client).isoformat() + "Z"}
    assert _post(client, unsubscribe).json()["accepted"] == 1
    assert _action(client, cid) == "suppress"


def test_a_repeated_event_id_is_acknowledged_and_ignored(live, log: Path) -> None:
    service, client, _ = live
    cid = next(iter(service.state.customers.row))
    event = {"event_id": f"view-{cid}", "customer_id": cid, "event_type": "product_view",
             "product_id": str(service.state.lookup.product_ids[1]), "occurred_at": _now(client).isoformat() + "Z"}
    version = service.profiles.version(cid) or 0
    first = _post(client, event).json()
    n = len(_logged(service))
    again = _post(client, event).json()
    assert (first["accepted"], again["accepted"], again["duplicates"]) == (1, 0, [f"view-{cid}"])
    assert len(_logged(service)) == n
    assert service.profiles.version(cid) == version + 1  # applied once


def test_a_bad_event_refuses_the_whole_batch_naming_the_field(live, log: Path) -> None:
    service, client, _ = live
    cid = next(iter(service.state.customers.row))
    n = len(_logged(service))
    good = {"event_id": "fine-1", "customer_id": cid, "event_type": "email_open",
            "occurred_at": _now(client).isoformat() + "Z"}
    bad = dict(good, event_id="bad-1", occurred_at="yesterday-ish")
    answer = _post(client, good, bad)
    assert answer.status_code == 400
    assert "events[1].occurred_at" in answer.json()["error"]
    future = dict(good, event_id="bad-2", occurred_at=(_now(client) + timedelta(days=3)).isoformat() + "Z")
    assert "events[0].occurred_at" in _post(client, future).json()["error"]
    assert client.post("/events", json={"events": []}).status_code == 400  # at least one event
    assert len(_logged(service)) == n and "fine-1" not in _logged(service)  # all or nothing


def test_a_restarted_service_replays_the_log(live, log: Path) -> None:
    service, client, env = live
    cid = _emailable_newsletter_customer(service)
    at = _now(client)
    cart = {"event_id": f"restart-cart-{cid}", "customer_id": cid, "event_type": "add_to_cart",
            "product_id": str(service.state.lookup.product_ids[2]), "occurred_at": at.isoformat() + "Z"}
    assert _post(client, cart).json()["accepted"] == 1
    features = service.profiles.features(cid)
    mp, _, sendwise = _service(env, log)
    try:
        restarted = sendwise()
        assert restarted.profiles.version(cid) == service.profiles.version(cid)
        again = restarted.profiles.features(cid)
        assert again["cart_abandoned_1d"] is True and features["cart_abandoned_1d"] is True
        assert restarted.profiles.clock.now() >= at  # the data clock is past every logged event
    finally:
        mp.undo()


def test_a_forgotten_customers_events_are_acknowledged_but_not_kept(live, log: Path, tmp_path: Path) -> None:
    from features.io import write_tombstones
    from features.tombstones import Tombstones
    from serving.forgotten import ForgottenCustomers

    service, client, _ = live
    write_tombstones(tmp_path, Tombstones().adding(["gone-42"]))
    kept_forgotten = service.forgotten
    service.forgotten = ForgottenCustomers(tmp_path)
    try:
        at = _now(client).isoformat() + "Z"
        answer = _post(client, {"event_id": "gone-view", "customer_id": "gone-42", "event_type": "email_open",
                                "occurred_at": at},
                       {"event_id": "kept-view", "customer_id": "still-here", "event_type": "email_open",
                        "occurred_at": at}).json()
    finally:
        service.forgotten = kept_forgotten
    assert (answer["accepted"], answer["forgotten"]) == (1, 1)
    assert "gone-view" not in _logged(service) and "kept-view" in _logged(service)
    assert service.profiles.version("gone-42") is None


def test_one_customers_fresh_scores_equal_the_batch_scoring_of_the_same_features(live) -> None:
    """score_row (no frame, used after an event) and score_features (the snapshot's) agree: buyers and prospects."""
    import pandas as pd

    from training.scoring import score_features, score_row

    service = live[0]
    state = service.state
    ids = list(state.customers.row)[:60]
    values = [service.profiles.features(cid) for cid in ids]
    batch = score_features(pd.DataFrame([{"customer_id": c, **v} for c, v in zip(ids, values, strict=True)]),
                           state.churn, state.propensity)
    assert (batch["churn_probability"].isna().any() and batch["churn_probability"].notna().any())  # both kinds
    for (_, row), v in zip(batch.iterrows(), values, strict=True):
        one = score_row(v, state.churn, state.propensity)
        for name, expected in row.items():
            if name == "customer_id":
                continue
            got = one[name]
            if isinstance(expected, float):
                assert (pd.isna(got) and pd.isna(expected)) or got == pytest.approx(expected, rel=1e-6), (name, got)
            else:
                assert got == expected or (pd.isna(got) and pd.isna(expected)), (name, got, expected)


def test_an_event_the_data_already_holds_is_logged_but_not_counted_twice(live, demo_tables, log: Path) -> None:
    """A late event from before the snapshot that the shop's files hold too (a stream's history, an
    export that overlaps) changes no feature; the batch load leaves the same row out."""
    service, client, _ = live
    as_of = service.profiles.online.as_of
    cid, kind, product, at = demo_tables.con.execute(
        "SELECT customer_id, event_type, product_id, occurred_at FROM events WHERE event_type = 'product_view' "
        "AND occurred_at < ? ORDER BY occurred_at DESC LIMIT 1", [as_of]).fetchall()[0]
    moment = service.profiles.clock.now() + timedelta(minutes=1)
    before = service.profiles.features(cid, moment)
    event = {"event_id": f"held-{cid}", "customer_id": cid, "event_type": kind, "occurred_at": at.isoformat() + "Z",
             **({"product_id": product} if product else {})}
    assert _post(client, event).json()["accepted"] == 1
    assert service.profiles.features(cid, moment) == before
    assert f"held-{cid}" in _logged(service)


def test_an_event_id_reused_for_another_event_is_a_409_and_nothing_is_taken(live, log: Path) -> None:
    service, client, _ = live
    cid = list(service.state.customers.row)[3]
    at = _now(client).isoformat() + "Z"
    first = {"event_id": f"reused-{cid}", "customer_id": cid, "event_type": "email_open", "occurred_at": at}
    assert _post(client, first).json()["accepted"] == 1
    assert _post(client, first).json()["duplicates"] == [f"reused-{cid}"]  # a resend: fine
    n = len(_logged(service))
    other = dict(first, event_type="unsubscribe")
    fresh = {"event_id": f"fresh-{cid}", "customer_id": cid, "event_type": "email_open", "occurred_at": at}
    answer = _post(client, fresh, other)
    assert answer.status_code == 409 and answer.json()["conflicts"] == [f"reused-{cid}"]
    assert len(_logged(service)) == n and f"fresh-{cid}" not in _logged(service)


def test_a_log_that_cannot_take_events_is_a_503_and_answers_go_on(live, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk (file) or the online store away (Redis): nothing acknowledged, the sender told to send
    again; the send-time answers keep coming from what the worker has applied."""
    service, client, _ = live
    cid = next(iter(service.state.customers.row))
    error = redis.ConnectionError("Connection refused") if service.profiles.log.shared else OSError(28, "No space")

    def fail(*_: object) -> None:
        raise error

    monkeypatch.setattr(service.profiles.log, "append", fail)
    monkeypatch.setattr(service.profiles.log, "read_after", fail)
    answer = _post(client, {"event_id": f"lost-{cid}", "customer_id": cid, "event_type": "email_open",
                            "occurred_at": _now(client).isoformat() + "Z"})
    assert answer.status_code == 503 and "nothing of it was acknowledged: send it again" in answer.json()["error"]
    assert client.post("/next_best_action", json={"customer_id": cid}).status_code == 200
