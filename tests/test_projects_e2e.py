"""Two shops side by side in one MLflow store: `sendwise init` -> `sendwise run` -> `sendwise serve`
for a generated shop and for the real Online Retail export, each service answering with its own
project's models (the evidence of issue 15). Marked slow (about two minutes: it imports and trains on
the whole Online Retail export): `pytest -m slow`. The default run keeps two projects apart in
tests/test_run.py and tests/test_cli_projects.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import stop_server, wait_until_ready
from mlflow.tracking import MlflowClient

from training.registry import CHAMPION
from training.tracking import configure_tracking

MODELS = ("churn", "propensity", "recommender")


def _sendwise(*args: str, cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sendwise.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_info(project: Path, cwd: Path, env: dict[str, str], log: Path) -> dict:
    """Start `sendwise serve --project` on a free port, ask /model_info, stop it."""
    port = _free_port()
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "sendwise.cli", "serve", "--project", str(project),
                                   "--port", str(port)], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(server, f"http://127.0.0.1:{port}", log)
        return httpx.post(f"http://127.0.0.1:{port}/model_info", timeout=30).json()
    finally:
        stop_server(server)


@pytest.mark.slow
def test_two_shops_in_one_store_each_served_its_own_models(demo_dir: Path, online_retail_path: Path,
                                                           tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'shared-mlruns' / 'mlflow.db'}"
    (tmp_path / "shared-mlruns").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDWISE_")} | {
        "MLFLOW_TRACKING_URI": store, "BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
    shops = {"generated": ["--data", str(demo_dir)],
             "retail": ["--import", "online-retail", str(online_retail_path), "--timezone", "Europe/London",
                        "--consent", "unless-refused"]}
    for name, source in shops.items():
        started = time.perf_counter()
        init = _sendwise("init", str(tmp_path / name), *source, cwd=tmp_path, env=env)
        assert init.returncode == 0, init.stdout[-3000:] + init.stderr[-3000:]
        # fewer monthly folds and one named recommender (auto compares eight): two shops, not quality
        file = tmp_path / name / "sendwise.yaml"
        file.write_text(file.read_text().replace("periods: 12", "periods: 4").replace("recommender: auto",
                                                                                    "recommender: als"))
        run = _sendwise("run", "--project", str(tmp_path / name), cwd=tmp_path, env=env)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "emailable: " in run.stdout
        print(f"{name}: init and run {time.perf_counter() - started:.0f} s")

    os.environ["MLFLOW_TRACKING_URI"] = store
    try:
        configure_tracking()
        client = MlflowClient()
        registered = {name: {m: client.get_model_version_by_alias(f"{name}.{m}", CHAMPION) for m in MODELS}
                      for name in shops}
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    for name in shops:
        info = _model_info(tmp_path / name, tmp_path, env, tmp_path / f"{name}.log")
        for model in MODELS:
            served, version = info["models"][model], registered[name][model]
            assert served["project"] == name
            assert served["version"] == str(version.version)
            assert served["trained_through"] == version.tags["sendwise.trained_through"]
            assert served["data_fingerprint"] == version.tags["sendwise.data_fingerprint"]
    retail_info = info
    assert retail_info["products"] > 3_000  # Online Retail's catalog, not the generated shop's 60 products
    assert registered["retail"]["churn"].tags["sendwise.trained_through"].startswith("2011-12-09")
