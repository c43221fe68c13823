"""The send-time service in-process (full HTTP stack, no port) and as a real `bentoml serve` process."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import SERVE_AS_OF
from starlette.testclient import TestClient

from features.tables import Tables
from serving.config import ServeConfig
from serving.exposures import ExposureLog, read_exposures
from serving.state import NotReadyError, load_states

API_KEY = "s3cret"


@pytest.fixture(scope="module")
def client(served_env: dict[str, str]):
    """One app per process (BentoML registers its metrics globally), with an API key configured."""
    mp = pytest.MonkeyPatch()
    for key, value in served_env.items():
        mp.setenv(key, value)
    mp.setenv("SENDWISE_API_KEY", API_KEY)
    from serving.service import Sendwise

    with TestClient(Sendwise.to_asgi(), headers={"x-api-key": API_KEY}) as test_client:
        yield test_client
    mp.undo()




def test_score_known_unknown_and_batch(client: TestClient, demo_tables: Tables) -> None:
    buyer = demo_tables.con.sql("SELECT customer_id FROM orders ORDER BY customer_id LIMIT 1").fetchall()[0][0]
    got = client.post("/score", json={"customer_id": buyer})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["known"] is True and 0 <= body["purchase_probability"] <= 1
    assert body["churn_risk"] in ("low", "medium", "high") and len(body["reasons"]) == 3
    assert set(body["model_versions"]) == {"churn", "propensity"}
    unknown = client.post("/score", json={"customer_id": "nobody-123"}).json()
    assert unknown["known"] is False and unknown["churn_probability"] is None
    batch = client.post("/score_batch", json={"customer_ids": [buyer, "nobody-123"]}).json()["results"]
    assert [b["known"] for b in batch] == [True, False]


def test_recommend_applies_rules_and_logs_exposures(client: TestClient, served_env: dict, demo_tables: Tables) -> None:
    buyer = demo_tables.con.sql("SELECT customer_id FROM orders ORDER BY customer_id LIMIT 1").fetchall()[0][0]
    before = len(read_exposures(served_env["SENDWISE_EXPOSURE_LOG"]))
    got = client.post("/recommend", json={"customer_id": buyer, "k": 5, "rules": {"max_per_category": 1}})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["known"] is True and len(body["items"]) == 5 and [i["rank"] for i in body["items"]] == [1, 2, 3, 4, 5]
    categories = [i["category"] for i in body["items"]]
    assert len(set(categories)) == len(categories)
    bought = {r[0] for r in demo_tables.con.sql(
        f"SELECT product_id FROM orders WHERE customer_id = '{buyer}' AND quantity > 0").fetchall()}
    assert not bought & {i["product_id"] for i in body["items"]}
    cold = client.post("/recommend", json={"customer_id": "nobody-123", "k": 3}).json()
    assert cold["known"] is False and {i["source"] for i in cold["items"]} == {"popular"} and len(cold["items"]) == 3
    batch = client.post("/recommend_batch", json={"customer_ids": [buyer, "nobody-123"], "k": 2}).json()["results"]
    assert [len(b["items"]) for b in batch] == [2, 2]
    logged = read_exposures(served_env["SENDWISE_EXPOSURE_LOG"])
    assert len(logged) == before + 4 and logged[-1]["customer_id"] == "nobody-123"
    assert set(logged[-1]) == {"request_id", "time", "customer_id", "action", "products", "experiment", "variant",
                               "probability", "model_versions"}


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/recommend", {"customer_id": "C1", "k": 500}, "k"),
    ("/recommend", {"customer_id": ""}, "customer_id"),
    ("/recommend", {"customer_id": "C1", "rules": {"min_price": -1}}, "min_price"),
    ("/recommend", {"customer_id": "C1", "rules": {"min_price": 9, "max_price": 1}}, "min_price"),
    ("/score", {"customer": "C1"}, "customer_id"),
    ("/score_batch", {"customer_ids": ["x"] * 10_001}, "customer_ids"),
])
def test_bad_input_is_a_4xx_naming_the_field(client: TestClient, path: str, body: dict, field: str) -> None:
    got = client.post(path, json=body)
    assert 400 <= got.status_code < 500 and field in got.text, got.text


def test_model_info_and_health(client: TestClient, demo_tables: Tables) -> None:
    info = client.post("/model_info").json()
    got = client.get("/model_info").json()
    assert got.pop("now") >= info.pop("now") and got == info  # a read-only route answers GET too
    assert client.get("/score").status_code == 405  # a route with a body does not
    assert set(info["models"]) == {"churn", "propensity", "recommender"} and info["customers"] > 0
    fingerprint = demo_tables.before(datetime(2025, 10, 1)).fingerprint()
    for name, model in info["models"].items():  # trained without a project, on rows before SERVE_AS_OF
        assert model["version"] == "1" and model["project"] is None and model["data_fingerprint"] == fingerprint
        assert "2025-09-29" < model["trained_through"] < SERVE_AS_OF
        assert datetime.fromisoformat(model["trained_through"])
        assert ({"kind"} if name == "recommender" else {"trained_as_of", "holdout_roc_auc"}) <= set(model)
    assert client.get("/readyz").status_code == 200
    paths = client.get("/docs.json").json()["paths"]
    assert {"/score", "/score_batch", "/recommend", "/recommend_batch", "/model_info"} <= set(paths)


def test_api_key_and_body_size(client: TestClient) -> None:
    assert client.post("/score", json={"customer_id": "C1"}, headers={"x-api-key": "wrong"}).status_code == 401
    assert client.get("/readyz", headers={"x-api-key": ""}).status_code == 200
    huge = b'{"customer_ids": [' + b'"x",' * 600_000 + b'"x"]}'
    got = client.post("/score_batch", content=huge, headers={"content-type": "application/json"})
    assert got.status_code == 413


def test_missing_champion_or_snapshot_refuses_to_start(tmp_path: Path, demo_dir: Path, served_env: dict,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(NotReadyError, match=r"no 'churn' model has the alias 'champion'.*sendwise train churn"):
        load_states(ServeConfig(data=demo_dir, mlruns=tmp_path / "empty"))
    with pytest.raises(NotReadyError, match=r"snapshot .* does not exist.*sendwise features snapshot"):
        load_states(ServeConfig(data=demo_dir, mlruns=Path(served_env["SENDWISE_MLRUNS"]),
                                snapshot=tmp_path / "missing.parquet"))


def test_exposure_log_keeps_acknowledged_records_when_killed(tmp_path: Path) -> None:
    """A writer killed with SIGKILL loses no record it acknowledged; a torn tail is skipped."""
    path, acks = tmp_path / "log.jsonl", tmp_path / "acks"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
            "from serving.exposures import ExposureLog\n"
            f"log = ExposureLog({str(path)!r}); acks = open({str(acks)!r}, 'a', buffering=1)\n"
            "i = 0\n"
            "while True:\n"
            "    log.append([{'customer_id': str(i), 'pad': 'x' * 500}]); acks.write(f'{i}\\n'); i += 1\n")
    writer = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(1.0)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    acknowledged = {int(x) for x in acks.read_text().split()}
    with open(path, "ab") as f:
        f.write(b'{"customer_id": "torn')  # what a write cut midway leaves
    logged = {int(r["customer_id"]) for r in read_exposures(path)}
    assert len(acknowledged) > 10 and acknowledged <= logged
    ExposureLog(path).append([{"customer_id": "after"}])  # appending after a torn tail still works
    assert read_exposures(path)[-1]["customer_id"] == "after"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_bounds_bodies_and_killed_under_load_loses_no_acknowledged_exposure(
        served_env: dict, demo_tables: Tables, tmp_path: Path) -> None:
    """The real `bentoml serve`: answers, refuses a streamed oversized body, then is SIGKILLed (worker
    and supervisor) under load from 4 clients: every request it answered 200 has its exposure record, and
    neither its logs nor the exposure log hold the API key."""
    key, port, log = "sk-fault-test-3c2b1a", _free_port(), tmp_path / "exposures.jsonl"
    env = os.environ | served_env | {"BENTOML_DO_NOT_TRACK": "true", "SENDWISE_API_KEY": key,
                                     "SENDWISE_EXPOSURE_LOG": str(log)}
    root = Path(__file__).resolve().parents[1]
    with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as err:
        server = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:Sendwise", "--host",
                                   "127.0.0.1", "--port", str(port)], cwd=root, env=env, stdout=out, stderr=err)
    base, acked, refused, stop = f"http://127.0.0.1:{port}", [], [], threading.Event()
    ids = [r[0] for r in demo_tables.con.sql("SELECT customer_id FROM customers").fetchall()]
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (tmp_path / "stderr").read_text()[-2000:]
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=30, headers={"x-api-key": key}) as http:
            got = http.post("/recommend", json={"customer_id": "nobody", "k": 3})
            assert got.status_code == 200 and got.json()["known"] is False
            streamed = (b'"x",' * 1000 for _ in range(1000))  # 4 MB, chunked: no content-length to check
            assert http.post("/score_batch", content=streamed).status_code == 413

        def client(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=base, timeout=10, headers={"x-api-key": key}) as http:
                while not stop.is_set():
                    try:
                        if rng.random() < 0.05:
                            got = http.post("/score", json={"customer_id": "C1"}, headers={"x-api-key": "wrong"})
                            refused.append(got.status_code == 401 and key not in got.text)
                            continue
                        got = http.post("/next_best_action_batch", json={"customer_ids": rng.sample(ids, 3)})
                    except httpx.HTTPError:
                        return  # the server is gone
                    if got.status_code == 200:
                        acked.append(got.json()["results"][0]["request_id"])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        workers = psutil.Process(server.pid).children(recursive=True)  # in sessions of their own
        assert workers
        for process in [*workers, psutil.Process(server.pid)]:  # the worker first, mid-request
            process.send_signal(signal.SIGKILL)
        server.wait()
        psutil.wait_procs(workers, timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        stop.set()
        if server.poll() is None:
            for process in psutil.Process(server.pid).children(recursive=True):
                process.kill()
            server.kill()
            server.wait()
    logged = {r["request_id"] for r in read_exposures(log)}
    assert len(acked) > 50 and set(acked) <= logged
    assert refused and all(refused)
    logs = (tmp_path / "stdout").read_bytes() + (tmp_path / "stderr").read_bytes()
    assert b"Starting production HTTP BentoServer" in logs  # the logs were captured...
    assert key.encode() not in logs and key.encode() not in log.read_bytes()  # ...and hold no key


def test_next_best_action_suppresses_without_consent_and_explains(client: TestClient, served_env: dict) -> None:
    suppressed = client.post("/next_best_action", json={"customer_id": "C108"}).json()
    assert suppressed["action"] == "suppress" and suppressed["product_block"] is None
    assert suppressed["reasons"] == ["email_consent == False"]
    got = client.post("/next_best_action", json={"customer_id": "C1", "campaign": "spring"})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["action"] != "suppress" and body["probability"] == 1.0 and body["reasons"]
    assert set(body["model_versions"]) == {"churn", "propensity", "recommender"}
    assert "utm_campaign=spring" in body["product_block"]["items"][0]["link"]
    batch = client.post("/next_best_action_batch", json={"customer_ids": ["C108", "C1", "nobody"]}).json()["results"]
    assert [b["action"] for b in batch][:2] == ["suppress", body["action"]] and batch[2]["known"] is False
    logged = read_exposures(served_env["SENDWISE_EXPOSURE_LOG"])[-3:]
    assert [r["action"] for r in logged] == [b["action"] for b in batch]
    assert len({r["request_id"] for r in logged}) == 1


def test_product_block_is_email_safe(client: TestClient) -> None:
    got = client.post("/product_block", json={"customer_id": "C1", "k": 3, "campaign": "spring"})
    assert got.status_code == 200, got.text
    block = got.json()
    assert len(block["items"]) == 3 and block["heading"] == "Picked for you"
    assert all(i["price"].startswith("£") for i in block["items"])
    assert any(i["reason"].startswith("Because you bought ") for i in block["items"])
    html = block["html"]
    assert html.startswith("<table") and "<script" not in html and "{" not in html and "}" not in html
    assert html.count('alt="') == sum(1 for i in block["items"] if i["image_url"])
    cold = client.post("/product_block", json={"customer_id": "nobody"}).json()
    assert cold["heading"] == "Popular right now" and {i["reason"] for i in cold["items"]} == {"Popular right now"}
    batch = client.post("/product_block_batch", json={"customer_ids": ["C1", "nobody"], "k": 3, "campaign": "spring",
                                                      "heading": "For you"}).json()["results"]
    assert [b["heading"] for b in batch] == ["For you", "For you"] and batch[0]["html"] == block["html"].replace(
        "Picked for you", "For you")


def test_product_block_renders_in_liquid_and_handlebars(client: TestClient) -> None:
    from liquid import Template

    block = client.post("/product_block", json={"customer_id": "C1", "k": 3}).json()
    data = {"FirstName": "Ada", "block": block["html"], "recommendations": block["items"]}
    liquid = Template("Hi {{ FirstName }},\n{{ block }}\n{% for r in recommendations %}{{ r.name }}|{% endfor %}")
    out = liquid.render(**data)
    assert out.startswith("Hi Ada,") and block["html"] in out
    assert out.endswith("".join(f"{i['name']}|" for i in block["items"]))

    node = shutil.which("node")
    modules = Path(__file__).resolve().parents[1] / ".ci" / "node" / "node_modules"
    if node is None or not (modules / "handlebars").exists():
        pytest.skip("node or the handlebars package is absent (.ci/run installs it with npm)")
    script = ("const H = require('handlebars'); const d = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "process.stdout.write(H.compile('Hi {{FirstName}},\\n{{{block}}}\\n"
              "{{#each recommendations}}{{name}}|{{/each}}')(d));")
    done = subprocess.run([node, "-e", script], input=json.dumps(data), capture_output=True, text=True,
                          env=os.environ | {"NODE_PATH": str(modules)}, timeout=60, check=True)
    assert done.stdout.startswith("Hi Ada,") and block["html"] in done.stdout
    assert done.stdout.endswith("".join(f"{i['name']}|" for i in block["items"]))


def test_openapi_fuzz_never_5xx(client: TestClient) -> None:
    """schemathesis sends generated bodies (valid, and invalid ones too) to every API route: never a 5xx.
    (BentoML's own GET routes, /metrics and the probes, are left out: in-process /metrics has no server.)"""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_dict(client.get("/docs.json").json())
    failures, unsupported = [], []
    operations = [op.ok() for op in schema.get_all_operations() if op.ok().method.upper() == "POST"]
    assert len(operations) == 12
    for operation in operations:

        @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def call(case) -> None:
            kwargs = case.as_transport_kwargs(base_url="http://testserver")
            response = client.request(kwargs["method"], kwargs["url"], headers=kwargs.get("headers"),
                                      json=kwargs.get("json"), params=kwargs.get("params"))
            if response.status_code >= 500:
                failures.append((kwargs["url"], kwargs.get("json"), response.status_code, response.text[:200]))

        try:
            call()
        except schemathesis.core.errors.UnsupportedSchema as exc:
            unsupported.append((operation.label, str(exc)[-300:]))
    assert not unsupported, unsupported
    assert not failures, failures[:5]


API_ROUTES = ["/score", "/score_batch", "/recommend", "/recommend_batch", "/product_block", "/product_block_batch",
              "/next_best_action", "/next_best_action_batch", "/model_info", "/ping", "/events", "/segments"]


def test_malformed_bodies_get_a_4xx_never_a_5xx(client: TestClient) -> None:
    """Bytes that are not JSON, JSON of the wrong shape, and hostile edge cases, on every API route."""
    import json as json_module

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["customer_id", "customer_ids", "k", "rules", "campaign", "heading", "x"]), inner,
        max_size=4), max_leaves=12)
    garbage = st.binary(max_size=200).filter(lambda b: not _is_json(b))
    failures = []

    @settings(max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(route=st.sampled_from(API_ROUTES), body=values.map(lambda v: json_module.dumps(v).encode()) | garbage)
    def call(route: str, body: bytes) -> None:
        got = client.post(route, content=body, headers={"content-type": "application/json"})
        if got.status_code >= 500 or (not _is_json(body) and route not in ("/model_info", "/ping")
                                      and not 400 <= got.status_code < 500):
            failures.append((route, body[:80], got.status_code, got.text[:120]))

    call()
    hostile = [b'{"customer_id": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", b'{"customer_id": "a", "k": 1' + b"0" * 5000 + b"}",
               b'{"customer_id": "\\ud800"}', b"\xff\xfe\x00", b'{"customer_ids": ["' + b"x" * 1_900_000 + b'"]}']
    for body in hostile:
        for route in ("/score", "/recommend", "/score_batch"):
            got = client.post(route, content=body, headers={"content-type": "application/json"})
            if not 400 <= got.status_code < 500:
                failures.append((route, body[:40], got.status_code, got.text[:120]))
    assert not failures, failures[:5]


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True
