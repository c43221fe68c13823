"""The MLflow model registry: register versions, champion / challenger aliases, loading, listing.

Registered models belong to a project: ``churn`` of project ``shop`` is registered as
``shop.churn`` (:func:`registered_name`); without a project the names are the model names, as
before projects existed. Every version records its provenance as model-version tags
(:class:`ModelProvenance`): the project (empty for none), the fingerprint of the rows its training
read, the latest timestamp among those rows and the data directory they came from.
:func:`check_provenance` refuses a version registered for another project than the one in use.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import mlflow
import mlflow.pyfunc
import mlflow.xgboost
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from features.errors import InputError, NotFoundError
from features.schema import SPECS
from features.tables import Tables
from training.model import BOOSTER_FILE, BUNDLE_FILE, XGBOOST, ModelBundle

CHAMPION = "champion"
CHALLENGER = "challenger"
PIP_REQUIREMENTS = ["xgboost-cpu>=3.0", "scikit-learn>=1.5", "numpy", "pandas"]
CLASSIFIER_ENTRY_POINT = Path(__file__).with_name("classifier_pyfunc.py")  # models from code: nothing pickled
BUNDLE_ARTIFACT, BOOSTER_ARTIFACT = "bundle", "booster"  # the pyfunc's artifacts: descriptor, XGBoost booster

PROJECT_RULE = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_PROJECT = re.compile(PROJECT_RULE)
SEPARATOR = "."  # between project and model: never in a project name, accepted by MLflow in names and URIs

# model-version tags: the provenance of every registered version
PROJECT_TAG = "sendwise.project"  # the project's name, "" for none
FINGERPRINT_TAG = "sendwise.data_fingerprint"  # Tables.fingerprint of the rows training read
TRAINED_THROUGH_TAG = "sendwise.trained_through"  # ISO 8601: the latest timestamp of those rows
DATA_TAG = "sendwise.data"  # the data directory they were read from, when known
RUN_FINGERPRINT_TAG = "data_fingerprint"  # the training run's tag (versions registered before the above)


class MissingModelError(NotFoundError):
    """No model version carries the alias that was asked for."""


class ForeignModelError(MissingModelError):
    """The version found was registered for another project than the one in use: the project has
    no model of its own there."""


def check_project_name(project: str, source: str = "") -> str:
    """``project`` when it is a valid project name (:data:`PROJECT_RULE`), else :class:`InputError`
    naming the value, ``source`` (where it came from) and the rule."""
    if not isinstance(project, str) or not _PROJECT.fullmatch(project):
        where = f" ({source})" if source else ""
        raise InputError(f"project name {project!r}{where} is not valid: it must match {PROJECT_RULE} (1-64 "
                         "letters, digits, '_' or '-', starting with a letter or digit)")
    return project


def registered_name(model: str, project: str | None) -> str:
    """The name ``model`` (churn, propensity, recommender) is registered under in ``project``:
    ``model`` itself without a project (scripts without one keep today's names), else
    ``<project>.<model>``."""
    return model if project is None else f"{check_project_name(project)}{SEPARATOR}{model}"


def project_of(name: str) -> str | None:
    """The project of a registered name (None for a name without one)."""
    project, dot, _ = name.partition(SEPARATOR)
    return project if dot else None


def latest_row_time(tables: Tables) -> datetime | None:
    """The latest timestamp of any row of ``tables`` (each table's time column: orders, events,
    signups, attribute changes); None when there is none."""
    parts = [f"SELECT max({spec.time_column}) AS t FROM {table.value}"
             for table, spec in SPECS.items() if spec.time_column]
    return tables.con.execute(f"SELECT max(t) FROM ({' UNION ALL '.join(parts)})").fetchall()[0][0]


def _describe(project: str | None) -> str:
    return f"project '{project}'" if project else "no project"


@dataclass(frozen=True)
class ModelProvenance:
    """Where a registered version comes from (its ``sendwise.*`` tags); None for what it does not
    record (versions registered before the tags: no project). ``trained_through`` may be given as a
    datetime; the tag and :meth:`from_tags` hold its ISO 8601 text."""

    project: str | None
    data_fingerprint: str | None
    trained_through: str | datetime | None  # ISO 8601: the latest timestamp of the rows training read
    data: str | None  # the data directory

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], run_tags: Mapping[str, str] | None = None) -> ModelProvenance:
        """From a version's tags; the fingerprint falls back on the run's ``data_fingerprint`` tag."""
        fingerprint = tags.get(FINGERPRINT_TAG) or (run_tags or {}).get(RUN_FINGERPRINT_TAG)
        return cls(tags.get(PROJECT_TAG) or None, fingerprint or None, tags.get(TRAINED_THROUGH_TAG) or None,
                   tags.get(DATA_TAG) or None)

    @classmethod
    def of_data(cls, tables: Tables, project: str | None, data_source: str | None = None) -> ModelProvenance:
        """The provenance of a model trained on every row of ``tables``."""
        latest = latest_row_time(tables)
        return cls(project, tables.fingerprint(), latest.isoformat() if latest is not None else None, data_source)

    def tags(self) -> dict[str, str]:
        """The version tags (the project always, "" for none; the others when known)."""
        tags = {PROJECT_TAG: self.project or ""}
        for tag, value in ((FINGERPRINT_TAG, self.data_fingerprint), (TRAINED_THROUGH_TAG, self.through),
                           (DATA_TAG, self.data)):
            if value is not None:
                tags[tag] = value
        return tags

    @property
    def through(self) -> str | None:
        """``trained_through`` as ISO 8601 text."""
        value = self.trained_through
        return value.isoformat() if isinstance(value, datetime) else value

    def meta(self) -> dict[str, str | None]:
        """What a loaded bundle's ``meta`` holds of it."""
        return {"project": self.project, "data_fingerprint": self.data_fingerprint,
                "trained_through": self.through, "data": self.data}



def version_provenance(name: str, version: str) -> ModelProvenance:
    """The provenance of version ``version`` of the registered model ``name``."""
    client = MlflowClient()
    mv = client.get_model_version(name, version)
    tags = dict(mv.tags)
    run_tags = None
    if not tags.get(FINGERPRINT_TAG) and mv.run_id:
        try:
            run_tags = client.get_run(mv.run_id).data.tags
        except MlflowException:
            run_tags = None
    return ModelProvenance.from_tags(tags, run_tags)


def check_provenance(name: str, version: str, provenance: ModelProvenance, project: str | None,
                     allow_foreign: bool = False, data_source: str | None = None,
                     override: str = "pass allow_foreign_models=True") -> str | None:
    """Check that version ``version`` of ``name`` may be used by ``project`` on the data in
    ``data_source``: :class:`ForeignModelError` when it was registered for another project (no tag:
    no project) unless ``allow_foreign``; the warning to show, or None. ``override`` says how to
    allow it.

    Without a project a version trained on another data directory than ``data_source`` is used,
    with a warning naming both (scripts without projects keep working)."""
    if (provenance.project or None) != (project or None):
        message = (f"'{name}' version {version} was registered for {_describe(provenance.project)}, not for "
                   f"{_describe(project)} in use: it may have been trained on another shop's data")
        if not allow_foreign:
            raise ForeignModelError(f"{message}. Train the project's own model, or {override} to use it anyway.")
        return f"{message}; used anyway (foreign models allowed)."
    if project is None and provenance.data and data_source and provenance.data != data_source:
        return (f"'{name}' version {version} was trained on data in {provenance.data}, not on {data_source} "
                "which it is used on: trained on other data? Its answers may not fit these customers.")
    return None


def log_and_register(bundle: ModelBundle, name: str, example_features, example_proba,
                     provenance: ModelProvenance | Mapping[str, str] | None = None, aliases: bool = True) -> str:
    """Log ``bundle`` in the active run and register it as ``name``; returns the new version.

    ``provenance`` (a :class:`ModelProvenance`, or its tags: tag -> value) is recorded on the
    version; its project is the name's (:func:`project_of`). With ``aliases``, the new version
    becomes the ``challenger``, and also the ``champion`` when there is none; without, no alias
    moves (the caller moves them when its whole step has succeeded).
    """
    tags = provenance_tags(name, provenance)
    with tempfile.TemporaryDirectory() as tmp:
        # the bundle's files (descriptor; booster for XGBoost) side by side, served by a pyfunc from code
        artifacts = {BUNDLE_ARTIFACT: str(bundle.save(tmp))}
        if bundle.booster is not None:
            artifacts[BOOSTER_ARTIFACT] = str(Path(tmp) / BOOSTER_FILE)
        x = pd.DataFrame(bundle.matrix(example_features), columns=bundle.columns)
        info = mlflow.pyfunc.log_model(name="model", python_model=str(CLASSIFIER_ENTRY_POINT),
                                       artifacts=artifacts, signature=infer_signature(x, example_proba),
                                       pip_requirements=PIP_REQUIREMENTS)
    return register(info.model_uri, name, tags, aliases)


class ClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """A registered bundle (XGBoost, logistic or BG/NBD) as an MLflow pyfunc: ``predict`` takes the
    bundle's input columns and returns the calibrated probability (``mlflow.pyfunc.spark_udf`` too)."""

    def load_context(self, context) -> None:
        self.bundle = ModelBundle.load(Path(context.artifacts[BUNDLE_ARTIFACT]).parent)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        return self.bundle.predict_proba(model_input)


def provenance_tags(name: str, provenance: ModelProvenance | Mapping[str, str] | None) -> dict[str, str]:
    """The version tags of a new version of ``name``: ``provenance`` with the name's project;
    :class:`InputError` when ``provenance`` names another project."""
    project = project_of(name) or ""
    given = provenance.tags() if isinstance(provenance, ModelProvenance) else dict(provenance or {})
    if given.get(PROJECT_TAG, project) != project:
        raise InputError(f"provenance of '{name}' names {_describe(given[PROJECT_TAG])}, but the name belongs to "
                         f"{_describe(project)}")
    return {PROJECT_TAG: project} | {k: str(v) for k, v in given.items()}


def register(model_uri: str, name: str, tags: Mapping[str, str], aliases: bool = True) -> str:
    """Register the logged model ``model_uri`` as a new version of ``name`` with ``tags``; with
    ``aliases``, make it the challenger (and the champion when there is none); returns the version."""
    version = str(mlflow.register_model(model_uri, name, tags=dict(tags)).version)
    return assign_aliases(name, version) if aliases else version


def assign_aliases(name: str, version: str) -> str:
    """Make ``version`` the challenger, and the champion when ``name`` has none; returns it."""
    client = MlflowClient()
    client.set_registered_model_alias(name, CHALLENGER, version)
    if alias_version(name, CHAMPION) is None:
        client.set_registered_model_alias(name, CHAMPION, version)
    return version


def alias_version(name: str, alias: str, project: str | None = None) -> str | None:
    """The version of model ``name`` (of ``project``) that carries ``alias``; None when none does."""
    try:
        return str(MlflowClient().get_model_version_by_alias(registered_name(name, project), alias).version)
    except MlflowException:
        return None


def load_bundle(name: str, alias: str = CHAMPION, hint: str = "", project: str | None = None) -> ModelBundle:
    """Load the version of model ``name`` (of ``project``) that carries ``alias``, with its
    calibrator, columns and provenance (see :func:`load_version`)."""
    version = alias_version(name, alias, project)
    if version is None:
        raise MissingModelError(f"no '{registered_name(name, project)}' model has the alias '{alias}'. {hint}".strip())
    return load_version(name, version, project)


def load_version(name: str, version: str, project: str | None = None) -> ModelBundle:
    """Version ``version`` of model ``name`` (of ``project``); its ``meta`` holds the version, and
    the ``project``, ``data_fingerprint``, ``trained_through`` and ``data`` it was registered with."""
    registered = registered_name(name, project)
    uri = f"models:/{registered}/{version}"
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        files = next(local.rglob(BUNDLE_FILE)).parent
        descriptor = json.loads((files / BUNDLE_FILE).read_text())
        if descriptor.get("kind", XGBOOST) == XGBOOST and not (files / BOOSTER_FILE).exists():
            # logged with the xgboost flavour (before the pyfunc): the descriptor is an extra file
            bundle = ModelBundle.from_parts(mlflow.xgboost.load_model(str(local)), descriptor)
        else:
            bundle = ModelBundle.load(files)
    bundle.meta.update(version_provenance(registered, version).meta())
    bundle.meta["version"] = version
    return bundle


def bundle_provenance(bundle: ModelBundle) -> ModelProvenance:
    """The provenance :func:`load_version` put into a bundle's ``meta``."""
    meta = bundle.meta
    return ModelProvenance(meta.get("project"), meta.get("data_fingerprint"), meta.get("trained_through"),
                           meta.get("data"))


@dataclass
class VersionRow:
    version: str
    aliases: list[str]
    run_id: str
    created: int
    metrics: dict[str, float]
    tags: dict[str, str]  # the run's
    provenance: ModelProvenance
    name: str = ""  # the registered name


def list_versions(name: str, project: str | None = None) -> list[VersionRow]:
    """Every version of model ``name`` (of ``project``) with its run's metrics and tags and its provenance."""
    client = MlflowClient()
    registered = registered_name(name, project)
    rows = []
    for found in client.search_model_versions(f"name = '{registered}'"):
        mv = client.get_model_version(registered, found.version)  # search results omit aliases
        run = client.get_run(mv.run_id)
        rows.append(VersionRow(str(mv.version), list(mv.aliases), mv.run_id, mv.creation_timestamp,
                               dict(run.data.metrics), dict(run.data.tags),
                               ModelProvenance.from_tags(mv.tags, run.data.tags), registered))
    return sorted(rows, key=lambda r: int(r.version))
