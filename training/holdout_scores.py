"""Per-customer holdout scores of a registered model, kept as an MLflow artifact of its run, so that
``sendwise models promote`` can compare champion and challenger row by row (paired bootstrap).

Classifiers keep ``customer_id, label, probability``; the recommender ``customer_id, ndcg_at_10``
(new-items variant). Customer ids are the only identifier stored; ``sendwise privacy export`` and
``forget`` find and remove a customer's rows in every such file of a local store
(:func:`score_files`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from features.privacy import files_below

ARTIFACT_DIR = "holdout"
ARTIFACT_FILE = "scores.parquet"


def log_holdout_scores(frame: pd.DataFrame) -> None:
    """Log ``frame`` (one row per holdout customer) to the active run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ARTIFACT_FILE
        frame.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=ARTIFACT_DIR)


def score_files(root: Path | str) -> list[Path]:
    """Every holdout score file below a local MLflow store root (following symlinked folders)."""
    return [p for p in files_below(root) if p.name == ARTIFACT_FILE and p.parent.name == ARTIFACT_DIR]


def load_holdout_scores(name: str, version: str) -> pd.DataFrame | None:
    """The holdout scores logged with ``name`` version ``version``; None for a run that has none."""
    client = MlflowClient()
    run_id = client.get_model_version(name, version).run_id
    if not any(f.path == f"{ARTIFACT_DIR}/{ARTIFACT_FILE}" for f in client.list_artifacts(run_id, ARTIFACT_DIR)):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{ARTIFACT_DIR}/{ARTIFACT_FILE}",
                                                    dst_path=tmp)
        return pd.read_parquet(local)
