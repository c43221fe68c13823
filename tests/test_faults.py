"""Faults: processes killed with SIGKILL at the worst moment, corrupt or missing model artifacts.

Training killed while it writes its model leaves the champion as it was; a champion whose artifact
is missing or corrupt stops the service from starting with a message naming it; a snapshot write
killed midway leaves the previous snapshot readable; rewriting the exposure log (privacy forget)
while a writer appends loses nothing; forget rewriting a saved recommender and failing or killed at
any step leaves a whole model at its path. (The real server killed under load: tests/test_service.py.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SERVE_AS_OF
from typer.testing import CliRunner

from features.snapshot import read_snapshot, write_snapshot
from features.tables import Tables
from sendwise.cli import app
from serving.config import ServeConfig
from serving.exposures import pseudonymise_customers, read_exposures
from serving.state import NotReadyError, load_champions
from training.recommenders import models as recommender_models
from training.recommenders.models import ARRAYS_FILE, MODEL_FILE, load_recommender, make_recommender
from training.recommenders.store import customer_data_in_store, forget_in_store
from training.registry import CHAMPION, alias_version, load_bundle
from training.tracking import configure_tracking

ROOT = Path(__file__).resolve().parents[1]
PREAMBLE = (f"import sys, os; sys.path.insert(0, {str(ROOT)!r})\n"
            "os.environ.update(MLFLOW_DISABLE_TELEMETRY='true', BENTOML_DO_NOT_TRACK='true')\n")


def kill_when(process: subprocess.Popen, moment, timeout: float = 180) -> None:
    """SIGKILL ``process`` as soon as ``moment()`` is true (polled every millisecond)."""
    deadline = time.monotonic() + timeout
    while not moment():
        assert process.poll() is None, "the process ended before the moment to kill it came"
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_training_killed_while_writing_its_model_leaves_the_champion(served_env: dict, demo_dir: Path,
                                                                   tmp_path: Path) -> None:
    mlruns = Path(served_env["SENDWISE_MLRUNS"])
    configure_tracking(mlruns)
    version, before = alias_version("churn", CHAMPION), load_bundle("churn")
    models = mlruns / "artifacts" / "models"
    existing = set(models.iterdir())
    code = PREAMBLE + (
        "from features.io import load_data_dir\nfrom features.training_set import Target\n"
        "from training.train import train_classifier\n"
        f"tables, _ = load_data_dir({str(demo_dir)!r}, {str(tmp_path / 'rejects')!r})\n"
        f"train_classifier(tables, Target.CHURNED, {SERVE_AS_OF!r}, mlruns={str(mlruns)!r})\n")
    trainer = subprocess.Popen([sys.executable, "-c", code], env={k: v for k, v in os.environ.items()
                                                                   if k != "MLFLOW_TRACKING_URI"})
    kill_when(trainer, lambda: set(models.iterdir()) - existing)  # MLflow started writing the new model

    assert alias_version("churn", CHAMPION) == version
    after = load_bundle("churn")
    x = np.random.default_rng(0).random((50, len(before.columns)), dtype=np.float32)
    assert after.meta["version"] == version and np.array_equal(before.raw_proba(None, x), after.raw_proba(None, x))
    load_champions(ServeConfig(data=demo_dir, mlruns=mlruns))  # the service can start


def _artifact_dir(name: str) -> Path:
    from mlflow.tracking import MlflowClient

    uri = MlflowClient().get_model_version_download_uri(name, alias_version(name, CHAMPION))
    return Path(uri.removeprefix("file://"))


@pytest.mark.parametrize(("name", "damage"), [("churn", "corrupt"), ("propensity", "missing"),
                                              ("recommender", "corrupt")])
def test_a_corrupt_or_missing_champion_refuses_to_start(served_env: dict, demo_dir: Path, tmp_path: Path,
                                                        name: str, damage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def execve(*_args) -> None:  # were the check to pass, `serve` would replace pytest with the server
        raise AssertionError("sendwise serve started the server despite a broken champion")

    monkeypatch.setattr("sendwise.commands.serve.os.execve", execve)
    mlruns = Path(served_env["SENDWISE_MLRUNS"])
    configure_tracking(mlruns)
    directory = _artifact_dir(name)
    target = next(p for p in directory.rglob("*") if p.name in ("model.ubj", "recommender.npz"))
    kept = tmp_path / "kept"
    shutil.copytree(directory, kept)
    try:
        if damage == "corrupt":
            target.write_bytes(target.read_bytes()[:100])  # a truncated write
        else:
            shutil.rmtree(directory)
        message = rf"the '{name}' model version \d+ \(alias 'champion'\) could not be loaded.*missing or corrupt"
        with pytest.raises(NotReadyError, match=message):
            load_champions(ServeConfig(data=demo_dir, mlruns=mlruns))
        result = CliRunner().invoke(app, ["serve", "--data", str(demo_dir), "--mlruns", str(mlruns),
                                          "--port", "1"])  # port 1: binding it would fail, it is never tried
        assert result.exit_code == 2 and f"the '{name}' model version" in result.output
        assert f"sendwise models promote {name} --force" in " ".join(result.output.split())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.copytree(kept, directory)
    load_champions(ServeConfig(data=demo_dir, mlruns=mlruns))  # restored for the other tests


def test_a_snapshot_write_killed_midway_leaves_the_old_one(demo_dir: Path, demo_tables: Tables, tmp_path: Path) -> None:
    target = tmp_path / "snap.parquet"
    old, old_as_of = write_snapshot(demo_tables, target, as_of="2025-06-01")
    code = PREAMBLE + (
        "from features.io import load_data_dir\nfrom features.snapshot import write_snapshot\n"
        f"tables, _ = load_data_dir({str(demo_dir)!r}, {str(tmp_path / 'rejects')!r})\n"
        f"while True:\n    write_snapshot(tables, {str(target)!r})\n")
    for _ in range(2):
        writer = subprocess.Popen([sys.executable, "-c", code])
        kill_when(writer, lambda: any(tmp_path.glob(".snap.parquet.*.tmp")))  # inside the write
        frame, meta = read_snapshot(target)
        assert meta["as_of"] == old_as_of.isoformat() and len(frame) == len(old)
        for leftover in tmp_path.glob(".snap.parquet.*.tmp"):  # what a kill leaves; readers never see it
            leftover.unlink()


def test_rewriting_the_exposure_log_while_a_writer_appends_loses_nothing(tmp_path: Path) -> None:
    path, acks = tmp_path / "log.jsonl", tmp_path / "acks"
    code = PREAMBLE + (
        "from serving.exposures import ExposureLog\n"
        f"log = ExposureLog({str(path)!r}); acks = open({str(acks)!r}, 'a', buffering=1)\n"
        "i = 0\n"
        "while True:\n"
        "    log.append([{'customer_id': f'c{i % 10}', 'i': i}]); acks.write(f'{i}\\n'); i += 1\n")
    writer = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not (acks.exists() and len(acks.read_text().split()) > 200):
            assert writer.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        changed = []
        for _ in range(5):
            time.sleep(0.05)
            changed.append(pseudonymise_customers(path, ["c3"]))
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    acknowledged = {int(x) for x in acks.read_text().split()}
    records = read_exposures(path)
    assert all(changed) and acknowledged <= {r["i"] for r in records}
    pseudonymised = [r for r in records if r["customer_id"].startswith("forgotten-")]
    assert pseudonymised and all(r["i"] % 10 == 3 for r in pseudonymised)


def _saved_recommender(root: Path) -> Path:
    """A small ALS model (20 customers c00-c19) saved where MLflow keeps a registered one, with the
    permissions a shared deployment gives it and a file of its own beside the model's two."""
    rng = np.random.default_rng(0)
    orders = pd.DataFrame({"order_id": [f"o{i}" for i in range(200)],
                           "customer_id": [f"c{i % 20:02d}" for i in range(200)],
                           "product_id": [f"p{j:02d}" for j in rng.integers(0, 15, 200)],
                           "ordered_at": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(200), unit="h"),
                           "quantity": 1.0, "unit_price": 1.0})
    model = make_recommender("als", factors=4, iterations=2).fit_tables(Tables.from_frames(orders), "2024-03-01")
    directory = root / "artifacts" / "1" / "models" / "m-1" / "artifacts" / "recommender"
    model.save(directory)
    (directory / "notes.txt").write_text("kept\n")
    for name, mode in ((ARRAYS_FILE, 0o640), (MODEL_FILE, 0o644), ("notes.txt", 0o600)):
        (directory / name).chmod(mode)
    directory.chmod(0o750)
    return directory


def _files(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mode & 0o777) for p in directory.iterdir()}


def _fail_writing_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    def savez(f, **_arrays) -> None:
        f.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(recommender_models.np, "savez", savez)


def _fail_writing_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    real = recommender_models.atomic_write

    def atomic_write(target, write) -> None:
        if Path(target).name == MODEL_FILE:
            raise OSError(28, "No space left on device")
        real(target, write)

    monkeypatch.setattr(recommender_models, "atomic_write", atomic_write)


def _fail_moving_the_new_model_in(monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = os.rename, []

    def rename(src, dst) -> None:
        calls.append(dst)
        if len(calls) == 2:  # the old model was moved aside
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(recommender_models.os, "rename", rename)


@pytest.mark.parametrize("fail", [_fail_writing_arrays, _fail_writing_descriptor, _fail_moving_the_new_model_in],
                         ids=["writing the arrays", "writing the descriptor", "moving the new model in"])
def test_forget_failing_while_it_rewrites_a_saved_recommender_leaves_the_old_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail) -> None:
    directory = _saved_recommender(tmp_path / "mlruns")
    before = _files(directory)
    with monkeypatch.context() as patched:
        fail(patched)
        with pytest.raises(OSError):
            forget_in_store(tmp_path / "mlruns", ["c03"])
    assert _files(directory) == before  # the old model, whole, with every file's bytes and permissions
    assert "c03" in load_recommender(directory).customer_ids_
    assert sorted(p.name for p in directory.parent.iterdir()) == ["recommender"]  # nothing left beside it

    assert forget_in_store(tmp_path / "mlruns", [" c03 "]) == {str(directory): {"c03": 1}}  # then it works
    after = _files(directory)
    assert "c03" not in load_recommender(directory).customer_ids_ and len(load_recommender(directory).customer_ids_) == 19
    assert {name: mode for name, (_, mode) in after.items()} == {name: mode for name, (_, mode) in before.items()}
    assert after["notes.txt"] == before["notes.txt"] and directory.stat().st_mode & 0o777 == 0o750
    assert sorted(p.name for p in directory.parent.iterdir()) == ["recommender"]


def test_forget_killed_while_it_rewrites_a_saved_recommender_leaves_a_whole_model(tmp_path: Path) -> None:
    """Killed as soon as a save's new copy appears beside the model, three times: a whole model is
    always there to load, and the next forget removes whatever the kills left beside it."""
    directory = _saved_recommender(tmp_path / "mlruns")
    code = PREAMBLE + (
        "from training.recommenders.store import forget_in_store\n"
        "for i in range(20):\n"
        f"    forget_in_store({str(tmp_path / 'mlruns')!r}, [f'c{{i:02d}}'])\n")
    for _ in range(3):
        forgetter = subprocess.Popen([sys.executable, "-c", code])
        kill_when(forgetter, lambda: any(p.name.startswith(".recommender.") for p in directory.parent.iterdir()),
                  timeout=60)  # inside a save: its new copy is being written
        model = load_recommender(directory)  # whole: the old model or the new one
        assert 0 < len(model.customer_ids_) <= 20 and model.customer_data(model.customer_ids_[0])
    forget_in_store(tmp_path / "mlruns", [])  # removes what the kills left beside the model, if anything
    assert sorted(p.name for p in directory.parent.iterdir()) == ["recommender"]
    assert load_recommender(directory).customer_ids_.equals(model.customer_ids_)


def test_forget_removes_a_customer_kept_only_in_a_copy_a_crashed_save_left(tmp_path: Path) -> None:
    directory = _saved_recommender(tmp_path / "mlruns")
    old_copy = directory.with_name(".recommender.old-0badc0de")
    shutil.copytree(directory, old_copy)  # a save killed after its second rename: the old model lingers
    model = load_recommender(directory)
    model.without_customers(["c05"])
    model.save(directory.with_name("fresh"))
    shutil.rmtree(directory)
    directory.with_name("fresh").rename(directory)  # the model no longer holds c05; the copy does

    assert list(customer_data_in_store(tmp_path / "mlruns", "c05")) == [str(old_copy)]  # export shows it
    assert forget_in_store(tmp_path / "mlruns", ["c05"]) == {str(directory): {"c05": 1}}
    assert sorted(p.name for p in directory.parent.iterdir()) == ["recommender"]
    assert customer_data_in_store(tmp_path / "mlruns", "c05") == {}
