"""A hostile catalog through the whole service (in-process, full HTTP stack), served from a
read-only data directory: only http(s) links and no control character reach an email, and the
service writes nothing into the data."""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
from pathlib import Path

import pandas as pd
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from features.links import safe_http_url
from features.tables import Tables
from sendwise.cli import app
from serving.config import ServeConfig
from serving.state import safe_catalog

UTM = "utm_source=sendwise&utm_medium=email&utm_campaign=spring&utm_content=product_block"
# A product's url or image_url, and the link it must become (None: no link / no image).
LINKS = [
    ("javascript:alert(1)//", None), ("JaVaScRiPt:alert(document.cookie)", None), ("java\tscript:alert(1)", None),
    ("java\nscript:alert(1)", None), ("  javascript:alert(1)", None), ("\x00javascript:alert(1)", None),
    ("vbscript:msgbox(1)", None), ("VBSCRIPT:msgbox(1)", None), ("data:text/html,<script>alert(1)</script>", None),
    ("data:image/svg+xml;base64,PHN2Zz4=", None), ("//evil.example/x", None), (" //evil.example/x", None),
    ("\\\\evil.example\\x", None), ("/p/relative", None), ("mailto:a@b.example", None), ("https:evil.example", None),
    ("javascript://https://shop.example/%0Aalert(1)", None), ("\u0085javascript:alert(1)", None),
    ("https://shop.example/p/ok", "https://shop.example/p/ok"),
    ("  HTTPS://Shop.example/p/upper  ", "https://Shop.example/p/upper"),
    ("\x00https://shop.example/p/nul\n", "https://shop.example/p/nul"),
    ("https://shop.example/p/q?size=M&size=L&gift=", "https://shop.example/p/q?size=M&size=L&gift="),
]
NAMES = ["Mug\x00 with lid", "Tea\x1b[31m towel", "Scarf\x85 wool", "Lamp\tdesk\r\nlight", "<script>alert(1)</script>",
         "{{ FirstName }} gift", "Plain name"]
HEADING = "Hi\x00 {{FirstName}} <script>alert(1)</script>\x85\u2028"
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _hostile_products(products: pd.DataFrame) -> pd.DataFrame:
    out = products.copy()
    n = len(out)
    out["url"] = [LINKS[i % len(LINKS)][0] for i in range(n)]
    out["image_url"] = [LINKS[(i + 5) % len(LINKS)][0] for i in range(n)]
    out["name"] = [NAMES[i % len(NAMES)] for i in range(n)]
    out["in_stock"] = True
    bad = out.iloc[[0]].assign(product_id="P-BAD", price=-1.0)  # a rejected row: its reason goes to the rejects
    return pd.concat([out, bad], ignore_index=True)


def _listing(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (and root) with its mode, size and modification time."""
    paths = [root, *sorted(root.rglob("*"))]
    return {str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_size, p.stat().st_mtime_ns) for p in paths}


@pytest.fixture(scope="module")
def shop(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo shop with a hostile catalog, made read-only (root can still write: the test compares listings)."""
    root = tmp_path_factory.mktemp("hostile") / "shop"
    shutil.copytree(demo_dir, root, ignore=shutil.ignore_patterns("_rejects"))
    products = pd.read_parquet(root / "products.parquet")
    _hostile_products(products).to_parquet(root / "products.parquet", index=False)
    for p in root.iterdir():
        p.chmod(0o444)
    root.chmod(0o555)
    yield root
    root.chmod(0o755)


@pytest.fixture(scope="module")
def served(shop: Path, served_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """(client, the data's listing before the service started, the startup warnings, the state root)."""
    before = _listing(shop)
    state = tmp_path_factory.mktemp("service-state")
    mp = pytest.MonkeyPatch()
    for key, value in served_env.items():
        mp.setenv(key, value)
    mp.setenv("SENDWISE_DATA", str(shop))
    mp.setenv("SENDWISE_EXPOSURE_LOG", str(state / "exposures.jsonl"))
    mp.delenv("SENDWISE_API_KEY", raising=False)
    mp.delenv("SENDWISE_STATE_DIR", raising=False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("serving.state").addHandler(handler)
    from serving.service import Sendwise

    try:
        with TestClient(Sendwise.to_asgi()) as client:
            yield client, before, [r.getMessage() for r in records if r.levelno == logging.WARNING], state
    finally:
        logging.getLogger("serving.state").removeHandler(handler)
        mp.undo()


def _expected(products: pd.DataFrame, column: str) -> dict[str, str | None]:
    return {pid: dict(LINKS).get(value) for pid, value in zip(products["product_id"], products[column], strict=True)}


def assert_email_safe(block: dict, urls: dict[str, str | None], images: dict[str, str | None]) -> None:
    """Every link and image of the block is the expected http(s) URL or absent, in the JSON and the
    HTML, and no text holds a control character or markup."""
    html = block["html"]
    for item in block["items"]:
        want = urls[item["product_id"]]
        if want is None:
            assert item["link"] is None, item
        else:
            assert item["link"] == want + ("&" if "?" in want else "?") + UTM, item
        assert item["image_url"] == images[item["product_id"]], item
        for field in ("name", "reason", "price"):
            assert not CONTROL.search(item[field] or ""), (field, item[field])
    assert not CONTROL.search(block["heading"]) and not CONTROL.search(html)
    assert not re.search(r"javascript|vbscript|data:|href=\"\s*//|src=\"\s*//", html, re.IGNORECASE)
    targets = re.findall(r'(?:href|src)="([^"]*)"', html)
    assert all(re.match(r"https?://[^/\\]", t) for t in targets), targets
    assert len(re.findall(r"<a ", html)) == sum(1 for i in block["items"] if i["link"])
    assert len(re.findall(r"<img ", html)) == sum(1 for i in block["items"] if i["image_url"])
    assert "<script" not in html and "{" not in html and "}" not in html


@pytest.fixture(scope="module")
def catalog(shop: Path) -> pd.DataFrame:
    return pd.read_parquet(shop / "products.parquet")


def test_every_product_of_a_hostile_catalog_is_email_safe(served, catalog: pd.DataFrame) -> None:
    """One block with every product of the catalog (k=100, purchases included: the dynamic path),
    a hostile heading: each link is the expected http(s) URL with its query kept, or none."""
    client, *_ = served
    urls, images = _expected(catalog, "url"), _expected(catalog, "image_url")
    got = client.post("/product_block", json={"customer_id": "C1", "k": 100, "campaign": "spring",
                                              "heading": HEADING, "rules": {"include_purchased": True}})
    assert got.status_code == 200, got.text
    block = got.json()
    assert {i["product_id"] for i in block["items"]} == set(urls) - {"P-BAD"}  # every product, the rejected one aside
    assert_email_safe(block, urls, images)
    assert block["heading"].startswith("Hi {{FirstName}} <script>")  # cleaned, and escaped in the HTML
    kept = next(i for i in block["items"] if urls[i["product_id"]] and "size=" in urls[i["product_id"]])
    assert kept["link"] == f"https://shop.example/p/q?size=M&size=L&gift=&{UTM}"
    assert any(i["link"] is None for i in block["items"]) and any(i["image_url"] is None for i in block["items"])


def test_batches_and_decisions_are_email_safe(served, catalog: pd.DataFrame, demo_dir: Path) -> None:
    """The precomputed path (default rules) for every customer, in product blocks and decisions."""
    client, *_ = served
    urls, images = _expected(catalog, "url"), _expected(catalog, "image_url")
    ids = pd.read_parquet(demo_dir / "customers.parquet")["customer_id"].tolist()
    blocks = client.post("/product_block_batch", json={"customer_ids": ids + ["nobody"], "k": 8,
                                                       "campaign": "spring", "heading": HEADING})
    assert blocks.status_code == 200, blocks.text
    shown = set()
    for block in blocks.json()["results"]:
        assert_email_safe(block, urls, images)
        shown |= {i["product_id"] for i in block["items"]}
    assert len(shown) > 20
    decisions = client.post("/next_best_action_batch", json={"customer_ids": ids, "campaign": "spring"})
    assert decisions.status_code == 200, decisions.text
    with_blocks = [d["product_block"] for d in decisions.json()["results"] if d["product_block"]]
    assert with_blocks
    for block in with_blocks:
        assert_email_safe(block, urls, images)
    recs = client.post("/recommend", json={"customer_id": "C1", "k": 100, "rules": {"include_purchased": True}}).json()
    assert all(i["image_url"] == images[i["product_id"]] for i in recs["items"])
    assert not any(CONTROL.search(i["name"] or "") for i in recs["items"])
    heading = client.post("/product_block", json={"customer_id": "C1", "heading": "\x00\t\x85"}).json()["heading"]
    assert heading == "Picked for you"  # a heading of nothing but control characters is no heading


@pytest.mark.parametrize("campaign", ["spring\n", "spring&x=1", "a b", "<script>", "x\x00", ""])
def test_a_hostile_campaign_is_refused(served, campaign: str) -> None:
    client, *_ = served
    got = client.post("/product_block", json={"customer_id": "C1", "campaign": campaign})
    assert got.status_code == 400 and "campaign" in got.text, got.text


def test_unsafe_links_are_counted_in_one_warning_at_startup(served, catalog: pd.DataFrame) -> None:
    _, _, warnings, _ = served
    kept = catalog[catalog["product_id"] != "P-BAD"]  # the rejected row is not in the catalog served
    unsafe = {c: sum(1 for v in kept[c] if safe_http_url(v) is None) for c in ("url", "image_url")}
    assert min(unsafe.values()) > 10
    catalog_warnings = [w for w in warnings if w.startswith("catalog:")]
    assert len(catalog_warnings) == 1, warnings
    assert f"{unsafe['url']} url and {unsafe['image_url']} image_url value(s)" in catalog_warnings[0]
    assert "control characters removed" in catalog_warnings[0]


def test_the_service_never_writes_into_the_data_directory(served, shop: Path) -> None:
    """The data directory (read-only) is as it was before the service started; the rejected row went
    to the state directory next to the exposure log."""
    client, before, _, state = served
    assert client.post("/next_best_action", json={"customer_id": "C1"}).status_code == 200
    assert stat.S_IMODE(shop.stat().st_mode) == 0o555
    assert _listing(shop) == before
    rejects = state / "state" / "rejects" / "products.csv"
    assert rejects.exists() and "negative price" in rejects.read_text()


def test_serve_preflight_checks_the_data_and_writes_rejects_to_the_state_dir(
        shop: Path, served_env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sendwise serve` reads the data as the service will: its rejects go to --state-dir and the
    data stays as it was."""
    started = []
    monkeypatch.setattr("sendwise.commands.serve.os.execve", lambda *args: started.append(args))
    monkeypatch.delenv("SENDWISE_API_KEY", raising=False)
    before = _listing(shop)
    mlruns = served_env["SENDWISE_MLRUNS"]
    result = CliRunner().invoke(app, ["serve", "--data", str(shop), "--mlruns", mlruns, "--port", "1",
                                      "--state-dir", str(tmp_path / "state"),
                                      "--exposure-log", str(tmp_path / "exposures.jsonl")])
    assert result.exit_code == 0 and len(started) == 1, result.output
    assert "1 rejected row(s)" in result.output and "catalog:" in result.output
    assert (tmp_path / "state" / "rejects" / "products.csv").exists() and _listing(shop) == before
    assert started[0][2]["SENDWISE_STATE_DIR"] == str((tmp_path / "state").resolve())


def test_serve_refuses_data_that_breaks_the_contract(shop: Path, served_env: dict, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken orders file: exit 2 with the usual one-line message, and no server started (before,
    the worker failed on it, again and again)."""
    started = []
    monkeypatch.setattr("sendwise.commands.serve.os.execve", lambda *args: started.append(args))
    monkeypatch.delenv("SENDWISE_API_KEY", raising=False)
    mlruns = served_env["SENDWISE_MLRUNS"]
    broken = tmp_path / "broken"
    shutil.copytree(shop, broken)
    broken.chmod(0o755)
    orders = pd.read_parquet(broken / "orders.parquet").drop(columns=["customer_id"])
    os.chmod(broken / "orders.parquet", 0o644)
    orders.to_parquet(broken / "orders.parquet", index=False)
    result = CliRunner().invoke(app, ["serve", "--data", str(broken), "--mlruns", mlruns, "--port", "1",
                                      "--exposure-log", str(tmp_path / "exposures.jsonl")])
    assert result.exit_code == 2, result.output
    assert "orders.parquet" in result.output and "customer_id" in result.output
    assert "Traceback" not in result.output and not started


def test_an_empty_api_key_refuses_to_serve(shop: Path, served_env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    started = []
    monkeypatch.setattr("sendwise.commands.serve.os.execve", lambda *args: started.append(args))
    monkeypatch.setenv("SENDWISE_DATA", str(shop))
    for value in ("", "  "):
        monkeypatch.setenv("SENDWISE_API_KEY", value)
        result = CliRunner().invoke(app, ["serve", "--data", str(shop), "--mlruns", served_env["SENDWISE_MLRUNS"],
                                          "--port", "1"])
        assert result.exit_code == 2 and "SENDWISE_API_KEY" in result.output and not started, result.output
    monkeypatch.setenv("SENDWISE_API_KEY", "")
    with pytest.raises(ValueError, match="SENDWISE_API_KEY: set but empty"):
        ServeConfig.from_env()


def _catalog_links(tables: Tables) -> dict[str, str | None]:
    return dict(tables.con.execute("SELECT product_id, url FROM products").fetchall())


def test_products_without_a_safe_url_link_through_the_template(tiny_frames: dict[str, pd.DataFrame]) -> None:
    """With a product link template (SENDWISE_PRODUCT_URL), a product whose url is missing, empty or
    unsafe gets the template's link with its id percent-encoded; a safe url is kept; an id that is
    no path segment ('..') gets none. The check counts the templated links and says so."""
    ids = ["ok", "none", "empty", "js", '"><script>', "../x?y#z", ".."]
    urls = ["https://shop.example/own/ok?size=M", None, "  ", "javascript:alert(1)", None, "//evil.example/x", None]
    products = pd.DataFrame({"product_id": ids, "name": ids, "category": "c", "price": 1.0, "image_url": None,
                             "url": urls, "in_stock": True})
    tables = Tables.from_frames(tiny_frames["orders"], products=products)
    check = safe_catalog(tables, product_url="https://shop.example/products/{product_id}")
    assert _catalog_links(tables) == {
        "ok": "https://shop.example/own/ok?size=M", "none": "https://shop.example/products/none",
        "empty": "https://shop.example/products/empty", "js": "https://shop.example/products/js",
        '"><script>': "https://shop.example/products/%22%3E%3Cscript%3E",
        "../x?y#z": "https://shop.example/products/..%2Fx%3Fy%23z", "..": None}
    assert (check.unsafe_links["url"], check.templated_links) == (2, 5)
    assert check.message == (
        "catalog: 2 url value(s) are not absolute http(s) URLs and are left out (e.g. product '../x?y#z'): such "
        "products link through the product_url template, or show their name in place of the image; 5 product(s) "
        "without a safe url link through the product_url template (e.g. https://shop.example/products/%22%3E%3Cscript%3E).")


def test_without_a_template_nothing_is_templated(tiny_tables: Tables) -> None:
    before = _catalog_links(tiny_tables)
    check = safe_catalog(tiny_tables)
    assert _catalog_links(tiny_tables) == before and check.templated_links == 0 and check.message is None
