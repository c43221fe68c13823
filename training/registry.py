"""The MLflow model registry: register versions, champion / challenger aliases, loading, listing."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.xgboost
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from features.errors import NotFoundError
from training.model import BUNDLE_FILE, ModelBundle

CHAMPION = "champion"
CHALLENGER = "challenger"
PIP_REQUIREMENTS = ["xgboost-cpu>=3.0", "scikit-learn>=1.5", "numpy", "pandas"]


class MissingModelError(NotFoundError):
    """No model version carries the alias that was asked for."""


def log_and_register(bundle: ModelBundle, name: str, example_features, example_proba) -> str:
    """Log ``bundle`` in the active run and register it as ``name``; returns the new version.

    The new version becomes the ``challenger``, and also the ``champion`` when there is none.
    """
    with tempfile.TemporaryDirectory() as tmp:
        descriptor = Path(tmp) / BUNDLE_FILE
        descriptor.write_text(json.dumps(bundle.descriptor(), indent=1, default=str))
        x = pd.DataFrame(bundle.matrix(example_features), columns=bundle.columns)
        info = mlflow.xgboost.log_model(
            bundle.booster, name="model", registered_model_name=name,
            signature=infer_signature(x, example_proba),
            extra_files=[str(descriptor)], pip_requirements=PIP_REQUIREMENTS,
        )
    return assign_aliases(name, str(info.registered_model_version))


def assign_aliases(name: str, version: str) -> str:
    """Make ``version`` the challenger, and the champion when ``name`` has none; returns it."""
    client = MlflowClient()
    client.set_registered_model_alias(name, CHALLENGER, version)
    if alias_version(name, CHAMPION) is None:
        client.set_registered_model_alias(name, CHAMPION, version)
    return version


def alias_version(name: str, alias: str) -> str | None:
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def load_bundle(name: str, alias: str = CHAMPION, hint: str = "") -> ModelBundle:
    """Load the version of ``name`` that carries ``alias``, with its calibrator and columns."""
    version = alias_version(name, alias)
    if version is None:
        raise MissingModelError(f"no '{name}' model has the alias '{alias}'. {hint}".strip())
    return load_version(name, version)


def load_version(name: str, version: str) -> ModelBundle:
    uri = f"models:/{name}/{version}"
    booster = mlflow.xgboost.load_model(uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        descriptor = json.loads(next(local.rglob(BUNDLE_FILE)).read_text())
    bundle = ModelBundle.from_parts(booster, descriptor)
    bundle.meta["version"] = version
    return bundle


@dataclass
class VersionRow:
    version: str
    aliases: list[str]
    run_id: str
    created: int
    metrics: dict[str, float]
    tags: dict[str, str]


def list_versions(name: str) -> list[VersionRow]:
    client = MlflowClient()
    rows = []
    for found in client.search_model_versions(f"name = '{name}'"):
        mv = client.get_model_version(name, found.version)  # search results omit aliases
        run = client.get_run(mv.run_id)
        rows.append(VersionRow(str(mv.version), list(mv.aliases), mv.run_id, mv.creation_timestamp,
                               dict(run.data.metrics), dict(run.data.tags)))
    return sorted(rows, key=lambda r: int(r.version))
