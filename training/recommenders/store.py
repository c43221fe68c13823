"""The recommender in the MLflow registry: log a fitted model as a pyfunc, load a version back; the
customers' rows in every saved copy under a local store (privacy export and forget)."""

from __future__ import annotations

import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.models import infer_signature

from features.privacy import files_below
from features.schema import CUSTOMER_ID
from training.recommenders.batch import top_k_frame
from training.recommenders.models import ARRAYS_FILE, MODEL_FILE, Recommender, load_recommender
from training.registry import (
    CHAMPION,
    MissingModelError,
    ModelProvenance,
    alias_version,
    provenance_tags,
    register,
    registered_name,
    version_provenance,
)

REGISTERED_NAME = "recommender"  # the model's name; a project's is registered_name(REGISTERED_NAME, project)
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


def log_and_register(model: Recommender, example_customers: pd.DataFrame, project: str | None = None,
                     provenance: Mapping[str, str] | None = None, aliases: bool = True) -> str:
    """Log ``model`` in the active run, register it as ``project``'s recommender with the version
    tags ``provenance`` (see :class:`~training.registry.ModelProvenance`); returns the new version
    (with ``aliases``: challenger, champion too when there is none; without: no alias moves)."""
    name = registered_name(REGISTERED_NAME, project)
    tags = provenance_tags(name, provenance)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # no input example on purpose: it would put customer ids in the MLflow store; ranks are never missing
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        model.save(tmp)
        output = predict_known(model, example_customers)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_ENTRY_POINT), artifacts={ARTIFACT_KEY: tmp},
            signature=infer_signature(example_customers, output), pip_requirements=PIP_REQUIREMENTS,
        )
    return register(info.model_uri, name, tags, aliases)


def load_version(version: str, project: str | None = None) -> Recommender:
    """Version ``version`` of ``project``'s recommender."""
    uri = f"models:/{registered_name(REGISTERED_NAME, project)}/{version}"
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        return load_recommender(next(local.rglob(MODEL_FILE)).parent)


@dataclass(frozen=True)
class RegisteredRecommender:
    """A registered recommender: the model, its version and its provenance."""

    model: Recommender
    version: str
    provenance: ModelProvenance


def load_registered(alias: str = CHAMPION, hint: str = "", project: str | None = None) -> RegisteredRecommender:
    """``project``'s recommender carrying ``alias``, with its version and provenance."""
    version = alias_version(REGISTERED_NAME, alias, project)
    name = registered_name(REGISTERED_NAME, project)
    if version is None:
        raise MissingModelError(f"no '{name}' model has the alias '{alias}'. {hint}".strip())
    return RegisteredRecommender(load_version(version, project), version, version_provenance(name, version))


def load_alias(alias: str = CHAMPION, hint: str = "", project: str | None = None) -> tuple[Recommender, str]:
    """``project``'s recommender carrying ``alias`` and its version (:func:`load_registered` adds
    its provenance)."""
    loaded = load_registered(alias, hint, project)
    return loaded.model, loaded.version


def saved_models(root: Path | str) -> dict[Path, list[Path]]:
    """Every saved recommender below ``root`` (a local MLflow store: registered or not; symlinked
    folders followed), with the copies crashed saves left beside it (``.<name>.new-*``,
    ``.<name>.old-*``, whole or partial: they hold customers' rows too). A model whose save was cut
    between its two renames is listed under its own path, which :func:`load_recommender` reads."""
    models = set()
    for path in files_below(root):
        directory = path.parent
        if path.name == ARRAYS_FILE and (directory / MODEL_FILE).exists():
            sibling = _SAVE_SIBLING.fullmatch(directory.name)
            models.add(directory.with_name(sibling["name"]) if sibling else directory)
    return {d: sorted(e for e in d.parent.iterdir() if e.is_dir() and (m := _SAVE_SIBLING.fullmatch(e.name))
                      and m["name"] == d.name) for d in sorted(models)}


_SAVE_SIBLING = re.compile(r"\.(?P<name>.+)\.(?:new|old)-[0-9a-f]+")  # see training.recommenders.models.save_files


def _whole(directory: Path) -> bool:
    return (directory / MODEL_FILE).is_file() and (directory / ARRAYS_FILE).is_file()


def customer_data_in_store(root: Path | str, customer_id: str) -> dict[str, dict]:
    """Per saved recommender below ``root`` that knows ``customer_id`` (and per copy a crashed save
    left beside one): the model's rows about them."""
    found = {}
    for directory, leftovers in saved_models(root).items():
        for copy in [c for c in [directory, *leftovers] if _whole(c)]:
            data = load_recommender(copy).customer_data(customer_id.strip())
            if data:
                found[str(copy)] = data
    return found


def forget_in_store(root: Path | str, customer_ids: Collection[str]) -> dict[str, Counter[str]]:
    """Remove ``customer_ids`` from every saved recommender below ``root``; returns, per model
    directory that held any, the rows removed per customer id.

    Each model is saved over itself with :meth:`Recommender.save`, which writes a whole new
    directory beside it and renames it into place: a crash at any point leaves a whole model to
    load. A model with copies that crashed saves left beside it is saved too, which removes them
    (the customers may be in them); their rows there count as removed."""
    wanted = {c.strip() for c in customer_ids}
    removed = {}
    for directory, leftovers in saved_models(root).items():
        model = load_recommender(directory)
        found = Counter()
        for copy in filter(_whole, leftovers):
            ids = load_recommender(copy).customer_ids_
            found |= Counter(ids[ids.isin(wanted)]) if ids is not None else Counter()
        if model.customer_ids_ is not None:
            found |= Counter(model.customer_ids_[model.customer_ids_.isin(wanted)])
            model.without_customers(wanted)
        if found or leftovers:
            model.save(directory)
        if found:
            removed[str(directory)] = found
    return removed
