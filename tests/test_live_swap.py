"""Models and snapshot swapped live (serving/reload.py): a moved champion alias or a new snapshot file
is loaded in the background and swapped in while requests keep being answered, all with 200 and each
from one complete state; a broken new version keeps the old one serving, with one warning."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Self

import pytest
from mlflow.tracking import MlflowClient
from starlette.testclient import TestClient

from features.errors import InputError
from features.snapshot import write_snapshot
from features.tables import Tables
from serving.reload import DEFAULT_RELOAD_SECONDS, RELOAD_ENV, reload_seconds
from training.registry import CHAMPION

CHURN = "churn"


@pytest.fixture(scope="module")
def store(served_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the served models' store: aliases move here, not in the one other tests share."""
    copy = tmp_path_factory.mktemp("live") / "mlruns"
    shutil.copytree(served_env["SENDWISE_MLRUNS"], copy)
    return copy


@pytest.fixture(scope="module")
def snapshot(demo_tables: Tables, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("snap") / "snapshot.parquet"
    write_snapshot(demo_tables, path, "2025-09-20")
    return path


@pytest.fixture(scope="module")
def service(served_env: dict[str, str], store: Path, snapshot: Path, tmp_path_factory: pytest.TempPathFactory):
    """The service in-process without the watcher thread (``reload_now`` is the check), and its client."""
    mp = pytest.MonkeyPatch()
    for key, value in served_env.items():
        mp.setenv(key, value)
    mp.setenv("SENDWISE_MLRUNS", str(store))
    mp.setenv("SENDWISE_SNAPSHOT", str(snapshot))
    mp.setenv("SENDWISE_EXPOSURE_LOG", str(tmp_path_factory.mktemp("exp") / "exposures.jsonl"))
    mp.setenv(RELOAD_ENV, "0")
    import bentoml

    from serving.service import Sendwise

    with TestClient(Sendwise.to_asgi()) as client:
        yield bentoml.get_current_service(), client
    mp.undo()


def _copy_version(name: str, version: str) -> str:
    """A new version of ``name`` registered from ``version``'s model (as a retrain on the same data)."""
    client = MlflowClient()
    mv = client.get_model_version(name, version)
    return str(client.create_model_version(name, mv.source, mv.run_id, tags=mv.tags).version)


def _move(name: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, CHAMPION, version)


def _known_customer(demo_tables: Tables) -> str:
    return demo_tables.con.sql("SELECT customer_id FROM orders ORDER BY customer_id LIMIT 1").fetchall()[0][0]


class Hammer:
    """A thread sending /score for one customer until stopped; keeps (status, churn version, started,
    ended) of each request (perf_counter seconds)."""

    def __init__(self, client: TestClient, customer_id: str) -> None:
        self.client, self.customer_id, self.got = client, customer_id, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            response = self.client.post("/score", json={"customer_id": self.customer_id})
            version = response.json()["model_versions"]["churn"] if response.status_code == 200 else None
            self.got.append((response.status_code, version, started, time.perf_counter()))

    def __enter__(self) -> Self:
        self.thread.start()
        while len(self.got) < 5:  # requests are flowing before the swap starts
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        count = len(self.got)
        while len(self.got) < count + 5:  # and after it
            time.sleep(0.01)
        self.stop.set()
        self.thread.join(timeout=30)


def test_reload_seconds_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert reload_seconds({}) == DEFAULT_RELOAD_SECONDS == 30
    assert reload_seconds({RELOAD_ENV: "0"}) == 0 and reload_seconds({RELOAD_ENV: "2.5"}) == 2.5
    for bad in ("", "soon", "-1", "nan", "inf"):
        with pytest.raises(InputError, match=rf"{RELOAD_ENV}: expected a number of seconds >= 0.*got '{bad}'"):
            reload_seconds({RELOAD_ENV: bad})


def test_nothing_changed_nothing_reloaded(service) -> None:
    svc, client = service
    before = client.get("/model_info").json()
    assert before["loaded_at"] and before["models"]["churn"]["version"] == "1"
    assert svc.reload_now() is False
    after = client.get("/model_info").json()
    assert after.pop("now") > before.pop("now")  # the service's clock runs on
    assert after == before


def test_a_moved_alias_is_swapped_in_under_load(service, demo_tables: Tables) -> None:
    svc, client = service
    before = client.get("/model_info").json()
    old_state = svc.live.current.state
    new = _copy_version(CHURN, "1")
    _move(CHURN, new)
    with Hammer(client, _known_customer(demo_tables)) as hammer:
        loading = time.perf_counter()
        assert svc.reload_now() is True
        loaded = time.perf_counter()
    statuses = [s for s, *_ in hammer.got]
    versions = [v for _, v, *_ in hammer.got]
    assert statuses == [200] * len(statuses)  # not one failed request during the swap
    during = [v for _, v, started, ended in hammer.got if loading < started and ended < loaded]
    assert len(during) >= 2 and set(during) <= {"1", new}  # answered while the new one loaded: nothing waits for it
    assert versions[0] == "1" and versions[-1] == new
    assert versions == sorted(versions, key=lambda v: v == new)  # once the new one answers, never the old again
    after = client.get("/model_info").json()
    assert after["models"]["churn"]["version"] == new and after["models"]["propensity"] == before["models"]["propensity"]
    assert after["loaded_at"] >= before["loaded_at"]
    body = client.post("/score", json={"customer_id": _known_customer(demo_tables)}).json()
    assert body["model_versions"]["churn"] == new
    nba = client.post("/next_best_action", json={"customer_id": _known_customer(demo_tables)}).json()
    assert nba["model_versions"]["churn"] == new
    assert svc.live.current.state is not old_state
    assert svc.live.current.state.customers.live == svc.profiles.fresh_view  # events still reach the new state
    assert svc.reload_now() is False  # loaded once per change


def test_a_new_snapshot_file_is_swapped_in(service, demo_tables: Tables, snapshot: Path) -> None:
    svc, client = service
    assert client.get("/model_info").json()["snapshot_as_of"].startswith("2025-09-20")
    write_snapshot(demo_tables, snapshot, "2025-09-27")  # atomic replace, as `sendwise run` does
    assert svc.reload_now() is True
    assert client.get("/model_info").json()["snapshot_as_of"].startswith("2025-09-27")



def test_a_changed_data_file_is_loaded_again(service, demo_dir: Path) -> None:
    """A new export of a table (catalog, consent) is read again, as a restart would."""
    svc, client = service
    loaded = svc.live.current
    table = min(p for p in demo_dir.iterdir() if p.is_file())
    stat = table.stat()
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # same rows, a newer file
    assert svc.reload_now() is True
    assert svc.live.current is not loaded and svc.live.current.versions == loaded.versions
    assert client.get("/model_info").json()["loaded_at"] >= loaded.loaded_at.isoformat(timespec="seconds")


def test_a_broken_version_keeps_the_old_one_serving(service, demo_tables: Tables, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    svc, client = service
    serving = client.get("/model_info").json()["models"]["churn"]["version"]
    download = MlflowClient().get_model_version_download_uri(CHURN, serving)
    broken = tmp_path / "broken"
    shutil.copytree(Path(download.removeprefix("file://")), broken)
    model = next(p for p in broken.rglob("model.ubj"))
    model.write_bytes(model.read_bytes()[:100])  # a truncated write
    version = str(MlflowClient().create_model_version(CHURN, broken.as_uri()).version)
    _move(CHURN, version)
    with caplog.at_level(logging.WARNING, logger="serving.reload"):
        with Hammer(client, _known_customer(demo_tables)) as hammer:
            assert svc.reload_now() is False
        assert svc.reload_now() is False  # the same change is not tried again
    assert {s for s, *_ in hammer.got} == {200} and {v for _, v, *_ in hammer.got} == {serving}
    warnings = [r.getMessage() for r in caplog.records if r.name == "serving.reload"]
    assert len(warnings) == 1, warnings
    assert f"churn@champion {serving} -> {version}" in warnings[0] and "could not be loaded" in warnings[0]
    assert client.get("/model_info").json()["models"]["churn"]["version"] == serving
    _move(CHURN, serving)  # back to the good one: what is loaded already
    assert svc.reload_now() is False


def test_the_watcher_thread_follows_the_alias(service) -> None:
    svc, client = service
    serving = client.get("/model_info").json()["models"]["churn"]["version"]
    new = _copy_version(CHURN, serving)
    svc.live.start(0.1)
    try:
        _move(CHURN, new)
        deadline = time.monotonic() + 60
        while client.get("/model_info").json()["models"]["churn"]["version"] != new:
            assert time.monotonic() < deadline, "the watcher did not swap the moved alias in"
            time.sleep(0.1)
    finally:
        svc.live.stop()
    assert not svc.live._thread.is_alive()


def test_every_route_answers_from_the_swapped_state(service, demo_tables: Tables) -> None:
    svc, client = service
    customer = _known_customer(demo_tables)
    versions = svc.live.current.versions
    assert versions["churn"] != "1"  # swapped by the tests above
    routes = {"/score": {"customer_id": customer}, "/score_batch": {"customer_ids": [customer, "nobody"]},
              "/recommend": {"customer_id": customer, "k": 3},
              "/recommend_batch": {"customer_ids": [customer], "k": 3, "rules": {"max_per_category": 1}},
              "/product_block": {"customer_id": customer}, "/product_block_batch": {"customer_ids": [customer]},
              "/next_best_action": {"customer_id": customer}, "/next_best_action_batch": {"customer_ids": [customer]}}
    for route, body in routes.items():
        got = client.post(route, json=body)
        assert got.status_code == 200, (route, got.text)
    assert client.post("/score", json={"customer_id": customer}).json()["model_versions"] == {
        "churn": versions["churn"], "propensity": versions["propensity"]}
    assert svc.state is svc.live.current.state and svc.router is svc.live.current.router
