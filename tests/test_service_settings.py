"""A shop's own settings through the whole service (in-process, full HTTP stack): the time zone of
its naive timestamps (SENDWISE_TIMEZONE), its product link template (SENDWISE_PRODUCT_URL) and UTM
parameters (SENDWISE_UTM_SOURCE / SENDWISE_UTM_MEDIUM), and the errors naming a bad one."""

from __future__ import annotations

import logging
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest
from conftest import train_champions
from starlette.testclient import TestClient

from features.errors import InputError
from features.io import load_data_dir
from features.snapshot import snapshot_as_of
from serving.config import ServeConfig
from serving.state import load_states

TOKYO = timedelta(hours=9)  # Asia/Tokyo is UTC+9 all year (no daylight saving time)
TEMPLATE = "https://shop.example/products/{product_id}"
UTM = "utm_source=newsletter&utm_medium=e-mail_v2&utm_campaign=spring&utm_content=product_block"
# The shop's best sellers get these ids and urls (None: none given); their link is the template's
# with the id percent-encoded, or None for '..', which is no path segment.
HOSTILE = [('"><script>alert(1)</script>', None), ("../x?y#z", "javascript:alert(1)"), ("..", None),
           ("Crème brûlée", "//evil.example/x"), ("{{FirstName}}", None)]
SETTINGS = {"SENDWISE_TIMEZONE": "Asia/Tokyo", "SENDWISE_PRODUCT_URL": TEMPLATE,
            "SENDWISE_UTM_SOURCE": "newsletter", "SENDWISE_UTM_MEDIUM": "e-mail_v2"}


def _copy(demo_dir: Path, root: Path) -> Path:
    shutil.copytree(demo_dir, root, ignore=shutil.ignore_patterns("_rejects"))
    return root


@pytest.fixture(scope="module")
def shop(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo shop (naive timestamps: local times in Tokyo here) whose five best sellers have
    hostile ids (in products, orders and events alike) and no url or an unsafe one."""
    root = _copy(demo_dir, tmp_path_factory.mktemp("settings") / "shop")
    orders = pd.read_parquet(root / "orders.parquet")
    recent = orders[orders["ordered_at"] > orders["ordered_at"].max() - timedelta(days=60)]  # popular lists: 90 days
    best = recent["product_id"].value_counts().index[:len(HOSTILE)].tolist()
    renamed = dict(zip(best, [pid for pid, _ in HOSTILE], strict=True))
    for name in ("orders", "events"):
        frame = pd.read_parquet(root / f"{name}.parquet")
        frame["product_id"] = frame["product_id"].replace(renamed)
        frame.to_parquet(root / f"{name}.parquet", index=False)
    products = pd.read_parquet(root / "products.parquet")
    urls = dict(HOSTILE)
    products["product_id"] = products["product_id"].replace(renamed)
    products["url"] = [urls.get(p, u) for p, u in zip(products["product_id"], products["url"], strict=True)]
    products["in_stock"] = True
    products.to_parquet(root / "products.parquet", index=False)
    return root


@pytest.fixture(scope="module")
def mlruns(shop: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Champions trained on the shop read in its time zone: the recommender knows the hostile ids
    (the service recommends only products its recommender knows)."""
    root = tmp_path_factory.mktemp("settings-mlruns")
    tables, _ = load_data_dir(shop, root / "rejects", timezone="Asia/Tokyo")
    train_champions(tables, root / "mlruns")
    tables.con.close()
    return root / "mlruns"


@pytest.fixture(scope="module")
def served(shop: Path, mlruns: Path, tmp_path_factory: pytest.TempPathFactory):
    """(client, the startup warnings) of the service with the shop's settings."""
    state = tmp_path_factory.mktemp("settings-state")
    mp = pytest.MonkeyPatch()
    for key, value in SETTINGS.items():
        mp.setenv(key, value)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("SENDWISE_MLRUNS", str(mlruns))
    mp.setenv("SENDWISE_DATA", str(shop))
    mp.setenv("SENDWISE_EXPOSURE_LOG", str(state / "exposures.jsonl"))
    for name in ("SENDWISE_API_KEY", "SENDWISE_STATE_DIR", "SENDWISE_SNAPSHOT", "SENDWISE_EXPERIMENTS"):
        mp.delenv(name, raising=False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("serving.state").addHandler(handler)
    from serving.service import Sendwise

    try:
        with TestClient(Sendwise.to_asgi()) as client:
            yield client, [r.getMessage() for r in records if r.levelno == logging.WARNING]
    finally:
        logging.getLogger("serving.state").removeHandler(handler)
        mp.undo()


def _link(product_id: str, own: dict[str, str | None]) -> str | None:
    """The link an item must have: the product's own url, else the template's, with the shop's UTM."""
    if product_id == "..":
        return None
    url = own.get(product_id) or TEMPLATE.format(product_id=quote(product_id, safe=""))
    return url + ("&" if "?" in url else "?") + UTM


def _check_block(block: dict, own: dict[str, str | None]) -> None:
    for item in block["items"]:
        assert item["link"] == _link(item["product_id"], own), item
    html = block["html"]
    targets = re.findall(r'href="([^"]*)"', html)
    assert targets == [i["link"].replace("&", "&amp;") for i in block["items"] if i["link"]]
    assert "<script" not in html and "{" not in html and "javascript" not in html


@pytest.fixture(scope="module")
def own_links(demo_dir: Path) -> dict[str, str]:
    """product -> its own (safe) url, for the products the fixture left alone."""
    products = pd.read_parquet(demo_dir / "products.parquet")
    return dict(zip(products["product_id"], products["url"], strict=True))


def test_naive_times_are_the_shops_local_time(served, shop: Path, tmp_path: Path) -> None:
    """Every naive time is a Tokyo time: the data ends, and the snapshot is taken, 9 h earlier in
    UTC than the same data read as UTC."""
    client, _ = served
    read_as_utc, _ = load_data_dir(shop, tmp_path / "rejects")
    info = client.post("/model_info").json()
    assert datetime.fromisoformat(info["snapshot_as_of"]) == snapshot_as_of(read_as_utc) - TOKYO


def test_products_without_a_safe_url_link_through_the_template(served, own_links: dict[str, str]) -> None:
    """A cold customer's block shows the best sellers (k=60: every product bought lately): each hostile id is percent-encoded in the
    template's link (none for '..'), each other product keeps its url, all with the shop's UTM."""
    client, _ = served
    got = client.post("/product_block", json={"customer_id": "nobody", "k": 60, "campaign": "spring"})
    assert got.status_code == 200, got.text
    block = got.json()
    shown = {i["product_id"]: i["link"] for i in block["items"]}
    assert set(dict(HOSTILE)) <= set(shown), shown
    assert shown['"><script>alert(1)</script>'] == (
        f"https://shop.example/products/%22%3E%3Cscript%3Ealert%281%29%3C%2Fscript%3E?{UTM}")
    assert shown["../x?y#z"] == f"https://shop.example/products/..%2Fx%3Fy%23z?{UTM}" and shown[".."] is None
    _check_block(block, own_links)


def test_batches_and_decisions_use_the_shops_utm(served, own_links: dict[str, str], demo_dir: Path) -> None:
    client, _ = served
    ids = pd.read_parquet(demo_dir / "customers.parquet")["customer_id"].tolist()[:60]
    blocks = client.post("/product_block_batch", json={"customer_ids": ids, "k": 6, "campaign": "spring"})
    assert blocks.status_code == 200, blocks.text
    for block in blocks.json()["results"]:
        _check_block(block, own_links)
    decisions = client.post("/next_best_action_batch", json={"customer_ids": ids, "campaign": "spring"})
    assert decisions.status_code == 200, decisions.text
    with_blocks = [d["product_block"] for d in decisions.json()["results"] if d["product_block"]]
    assert with_blocks and all(i["link"] is None or "utm_source=newsletter&utm_medium=e-mail_v2&" in i["link"]
                               for b in with_blocks for i in b["items"])


def test_the_templated_links_are_counted_at_startup(served) -> None:
    _, warnings = served
    catalog = [w for w in warnings if w.startswith("catalog:")]
    assert len(catalog) == 1, warnings
    assert "4 product(s) without a safe url link through the product_url template" in catalog[0]


def test_an_order_time_counts_as_utc_9_hours_earlier(demo_dir: Path, served_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    """Orders naive (Tokyo), every other table stored as instants (kept): a customer's last order at
    20:00 on Dec 31 in Tokyo is 11:00 UTC, and their recency at the snapshot counts from then."""
    root = _copy(demo_dir, tmp_path / "shop")
    for name, column in (("events", "occurred_at"), ("customers", "signup_at"), ("customer_changes", "changed_at")):
        frame = pd.read_parquet(root / f"{name}.parquet")
        frame[column] = frame[column].dt.tz_localize("UTC")
        frame.to_parquet(root / f"{name}.parquet", index=False)
    orders = pd.read_parquet(root / "orders.parquet")
    buyer = orders["customer_id"].iloc[0]
    line = orders.iloc[[0]].assign(order_id="O-TOKYO", ordered_at=pd.Timestamp("2025-12-31 20:00"))
    pd.concat([orders, line], ignore_index=True).to_parquet(root / "orders.parquet", index=False)
    config = ServeConfig(data=root, mlruns=Path(served_env["SENDWISE_MLRUNS"]), exposure_log=tmp_path / "log.jsonl",
                         timezone="Asia/Tokyo")
    state = next(iter(load_states(config).values()))
    events_end = pd.read_parquet(root / "events.parquet")["occurred_at"].max().tz_convert(None)
    assert state.as_of == events_end + timedelta(microseconds=1)  # instants are kept
    recency = state.customers.signals(buyer)["recency_days"]
    assert recency == pytest.approx((state.as_of - datetime(2025, 12, 31, 11)) / timedelta(days=1))
    assert recency != pytest.approx((state.as_of - datetime(2025, 12, 31, 20)) / timedelta(days=1))


@pytest.mark.parametrize(("name", "value", "message"), [
    ("SENDWISE_TIMEZONE", "Asia/Tokio", "unknown time zone 'Asia/Tokio'"),
    ("SENDWISE_PRODUCT_URL", "https://shop.example/p/{sku}", r"no \{product_id\}"),
    ("SENDWISE_UTM_SOURCE", "news letter", "letters, digits"),
    ("SENDWISE_UTM_MEDIUM", "e&mail", "letters, digits"),
])
def test_the_service_refuses_to_start_with_a_bad_setting(served_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                         name: str, value: str, message: str) -> None:
    for key, given in (served_env | {name: value}).items():
        monkeypatch.setenv(key, given)
    monkeypatch.delenv("SENDWISE_API_KEY", raising=False)
    from serving.service import Sendwise

    with pytest.raises(InputError, match=rf"{name}: .*{message}"), TestClient(Sendwise.to_asgi()):
        pass
