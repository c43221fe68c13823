"""``sendwise privacy export``: everything the project holds about one customer, as one JSON document.

Input rows (raw, from every table and rejects file of the data directory and the other files
named), their latest features (built just after the last row of the data), scores with the champion
models, recommendations of the champion recommender under the default rules, what each saved
recommender holds about them (their factor row or history) and their rows in the models' holdout
score files, their exposure records, their events in the event log (which the features include), and
their segment transitions and trigger fires in the service's outbox and their armed timers.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from features.build import build_features
from features.errors import InputError
from features.event_store import EventSource, source_customer_events
from features.io import Encoding, load_data_dir, read_tombstones
from features.privacy import customer_rows, tabular_files
from features.schema import CUSTOMER_ID
from features.snapshot import snapshot_as_of
from sendwise.privacy.live_stores import customer_records
from sendwise.privacy.stores import check_event_log, check_exposure_log, check_mlruns
from serving.exposures import customer_exposures
from training.holdout_scores import score_files
from training.recommenders.batch import RecommendationContext
from training.recommenders.rules import BusinessRules
from training.recommenders.store import REGISTERED_NAME, customer_data_in_store, load_registered
from training.registry import CHAMPION, bundle_provenance, check_provenance, load_bundle, registered_name
from training.scoring import score_features
from training.tracking import configure_tracking


def _records(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready rows: timestamps in ISO 8601, missing values null."""
    return json.loads(frame.to_json(orient="records", date_format="iso"))


def export_customer(customer_id: str, data_dir: Path | str, mlruns: Path | str | None = None,
                    exposure_log: Path | str | None = None, files: Iterable[Path | str] = (),
                    k: int = 10, encoding: Encoding | str = Encoding.UTF_8, project: str | None = None,
                    timezone: str | None = None, event_log: EventSource | str | None = None,
                    state_dir: Path | str | None = None, earlier_event_log: Path | None = None) -> dict:
    """The export document of ``customer_id``; ``notes`` says what could not be included and why.
    ``mlruns`` and ``exposure_log`` are None where there is no such store; a path given must exist.
    CSV files that are not UTF-8 are read in ``encoding`` (the shop's, as when the data was loaded).
    Scores and recommendations come from ``project``'s champions (none: the global names); one
    registered for another project is left out with a note. Naive timestamps are read in ``timezone``
    (the shop's, as when the models were trained; None: UTC). ``event_log`` (None: none), a file or
    a log in Redis, adds the customer's events as stored there, and its rows to the data the features are built from. ``state_dir``
    (None: none) adds their records in the service's outbox and timers journal (``outbox``, ``timers``).
    ``earlier_event_log``, the file log from before the project moved its log into an online store,
    adds its events of the customer too."""
    customer_id, data_dir = customer_id.strip(), Path(data_dir)  # ids are trimmed on import, as here
    if not customer_id:
        raise InputError("the customer id must be non-empty text")
    mlruns = None if mlruns is None else check_mlruns(mlruns)  # a store named must be there: no silent gaps
    exposure_log = None if exposure_log is None else check_exposure_log(exposure_log)
    event_log = None if event_log is None else check_event_log(event_log)
    live = {"outbox": [], "timers": []} if state_dir is None else customer_records(state_dir, customer_id)
    doc: dict = {"customer_id": customer_id, "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                 "forgotten": customer_id in read_tombstones(data_dir), "input_rows": {}, "features": None,
                 "scores": None, "recommendations": [], "model_rows": {}, "exposures": [], "events": [], **live, "notes": []}
    for root in (data_dir, *files):
        for path in tabular_files(root):
            rows = customer_rows(path, [customer_id], encoding)
            if rows is not None and len(rows):
                doc["input_rows"][str(path)] = _records(rows)
    with tempfile.TemporaryDirectory() as rejects:  # an export writes nothing into the data directory
        tables, _ = load_data_dir(data_dir, rejects, encoding, timezone=timezone, event_log=event_log)
    as_of = snapshot_as_of(tables)
    features = build_features(tables, as_of)
    features = features[features[CUSTOMER_ID] == customer_id].reset_index(drop=True)
    if len(features):
        doc["features"] = _records(features)[0]
    else:
        doc["notes"].append(f"no features: the customer has no rows before {as_of.isoformat()}")
    if mlruns is None:
        doc["notes"].append("no MLflow store given: no scores, recommendations or model rows")
    else:
        configure_tracking(mlruns)
        try:
            churn, propensity = (load_bundle(m, CHAMPION, project=project) for m in ("churn", "propensity"))
            for model, bundle in (("churn", churn), ("propensity", propensity)):
                check_provenance(registered_name(model, project), str(bundle.meta["version"]),
                                 bundle_provenance(bundle), project)
            if len(features):
                doc["scores"] = _records(score_features(features, churn, propensity))[0] | {
                    "model_versions": {"churn": churn.meta["version"], "propensity": propensity.meta["version"]}}
        except LookupError as exc:
            doc["notes"].append(f"no scores: {exc}")
        try:
            loaded = load_registered(CHAMPION, project=project)
            check_provenance(registered_name(REGISTERED_NAME, project), loaded.version, loaded.provenance, project)
            recommender, version = loaded.model, loaded.version
            context = RecommendationContext(tables, as_of, recommender, customer_ids=pd.Index([customer_id]))
            recs = context.recommend(pd.Index([customer_id]), k, BusinessRules())
            doc["recommendations"] = _records(recs.drop(columns=[CUSTOMER_ID]).assign(model_version=version))
        except LookupError as exc:
            doc["notes"].append(f"no recommendations: {exc}")
        doc["model_rows"] = customer_data_in_store(mlruns, customer_id)
        for path in score_files(mlruns):
            rows = customer_rows(path, [customer_id])
            if rows is not None and len(rows):
                doc["model_rows"][str(path)] = _records(rows)
    if exposure_log is not None:
        doc["exposures"] = customer_exposures(exposure_log, customer_id)
    for log in filter(None, (earlier_event_log, event_log)):
        doc["events"] += source_customer_events(check_event_log(log), customer_id)
    return doc
