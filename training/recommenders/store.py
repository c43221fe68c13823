"""The recommender in the MLflow registry: log a fitted model as a pyfunc, load a version back; the
customers' rows in every saved copy under a local store (privacy export and forget)."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Collection
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.models import infer_signature

from features.schema import CUSTOMER_ID
from training.recommenders.batch import top_k_frame
from training.recommenders.models import ARRAYS_FILE, MODEL_FILE, Recommender, load_recommender
from training.registry import CHAMPION, MissingModelError, alias_version, assign_aliases

REGISTERED_NAME = "recommender"
PIP_REQUIREMENTS = ["implicit==0.7.3", "xgboost-cpu>=3.0", "threadpoolctl", "scipy", "numpy", "pandas"]
ARTIFACT_KEY = "recommender"
PYFUNC_ENTRY_POINT = Path(__file__).with_name("pyfunc_model.py")  # models from code: nothing pickled


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """``predict`` takes a frame with ``customer_id`` and returns each known customer's top 10
    (no business rules: those need the shop's data, see ``sendwise recommend``)."""

    def load_context(self, context) -> None:
        self.model = load_recommender(context.artifacts[ARTIFACT_KEY])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return predict_known(self.model, model_input)


def predict_known(model: Recommender, customers: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    ids = pd.Index(customers[CUSTOMER_ID].astype(str))
    rows = model.customer_ids_.get_indexer(ids)
    return top_k_frame(model, ids, rows, model.history(rows), k)


def log_and_register(model: Recommender, example_customers: pd.DataFrame) -> str:
    """Log ``model`` in the active run, register it as ``recommender``; returns the new version
    (challenger; champion too when there is none)."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # no input example on purpose: it would put customer ids in the MLflow store; ranks are never missing
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        model.save(tmp)
        output = predict_known(model, example_customers)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_ENTRY_POINT), artifacts={ARTIFACT_KEY: tmp},
            registered_model_name=REGISTERED_NAME, signature=infer_signature(example_customers, output),
            pip_requirements=PIP_REQUIREMENTS,
        )
    return assign_aliases(REGISTERED_NAME, str(info.registered_model_version))


def load_version(version: str) -> Recommender:
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{REGISTERED_NAME}/{version}",
                                                         dst_path=tmp))
        return load_recommender(next(local.rglob(MODEL_FILE)).parent)


def load_alias(alias: str = CHAMPION, hint: str = "") -> tuple[Recommender, str]:
    """The recommender carrying ``alias`` and its version."""
    version = alias_version(REGISTERED_NAME, alias)
    if version is None:
        raise MissingModelError(f"no '{REGISTERED_NAME}' model has the alias '{alias}'. {hint}".strip())
    return load_version(version), version


def saved_models(root: Path | str) -> list[Path]:
    """Every saved recommender below ``root`` (a local MLflow store: registered or not)."""
    return sorted(p.parent for p in Path(root).rglob(ARRAYS_FILE) if (p.parent / MODEL_FILE).exists())


def customer_data_in_store(root: Path | str, customer_id: str) -> dict[str, dict]:
    """Per saved recommender below ``root`` that knows ``customer_id``: the model's rows about them."""
    found = {}
    for directory in saved_models(root):
        data = load_recommender(directory).customer_data(customer_id)
        if data:
            found[str(directory)] = data
    return found


def forget_in_store(root: Path | str, customer_ids: Collection[str]) -> dict[str, int]:
    """Remove ``customer_ids`` from every saved recommender below ``root`` (rewritten in place,
    atomically); returns the rows removed per model directory that held any."""
    removed = {}
    for directory in saved_models(root):
        model = load_recommender(directory)
        n = model.without_customers(customer_ids)
        if n:
            model.save(directory)
            removed[str(directory)] = n
    return removed
