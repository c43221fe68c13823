"""MLflow set-up: a SQLite store under ./mlruns (MLFLOW_TRACKING_URI overrides), run provenance."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

DEFAULT_ROOT = Path("mlruns")
_set_by_us: set[str] = set()  # MLflow copies the URI we set into MLFLOW_TRACKING_URI; that is not the user's
_project_uri: list[str] = []  # the tracking_uri of the project in use, see use_project_store
_store_root: list[Path] = []  # the root of the SQLite store configure_tracking set last (its artifacts live there)


def user_tracking_uri() -> str | None:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return None if uri in _set_by_us else uri


def use_project_store(uri: str | None) -> None:
    """Make ``uri`` (the ``tracking_uri`` of the project in use; None: it has none) the store
    :func:`configure_tracking` points at when the user's ``MLFLOW_TRACKING_URI`` names none."""
    _project_uri[:] = [uri] if uri else []


def configure_tracking(root: Path | str | None = None) -> str:
    """Point MLflow at ``MLFLOW_TRACKING_URI``, else at the project's store (:func:`use_project_store`),
    else at ``sqlite:///<root>/mlflow.db``; returns the URI.

    The file store (plain ``./mlruns`` folders) raises in MLflow 3.17, hence SQLite.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = user_tracking_uri()
    if not uri and _project_uri:
        uri = _project_uri[0]
        _set_by_us.add(uri)
    if not uri:
        root = Path(root or DEFAULT_ROOT).resolve()
        root.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        _set_by_us.add(uri)
        _store_root[:] = [root]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_id(name: str, root: Path | str | None = None) -> str:
    """The id of experiment ``name``, created with artifacts under ``<root>/artifacts`` if new (default
    root: the store :func:`configure_tracking` set up)."""
    client = MlflowClient()
    existing = client.get_experiment_by_name(name)
    if existing:
        return existing.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:///") and not user_tracking_uri():
        base = Path(root) if root else (_store_root[0] if _store_root else DEFAULT_ROOT)
        location = (base.resolve() / "artifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def git_commit() -> str:
    """The commit of the code that is running, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent, check=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
