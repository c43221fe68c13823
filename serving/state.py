"""What the service holds in memory: champion models, scores of every known customer, catalog.

Scores are computed once at startup from the feature snapshot (a request is then a lookup);
recommendations are computed per request from the recommender's factors and the business rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from features.build import build_features
from features.io import load_data_dir
from features.schema import CUSTOMER_ID
from features.snapshot import read_snapshot, snapshot_as_of
from serving.config import ServeConfig
from serving.lookup import Lookup
from training.model import ModelBundle
from training.recommenders.batch import RecommendationContext
from training.recommenders.models import Recommender
from training.recommenders.store import load_alias
from training.registry import load_bundle
from training.scoring import REASONS, score_features
from training.tracking import configure_tracking

SCORE_FIELDS = ("churn_probability", "purchase_probability", "churn_risk", "rfm_segment", "lifecycle_stage")
# Snapshot features the next-best-action policy may use as signals (with the score fields).
SIGNAL_FEATURES = ("email_consent", "unsubscribed", "emails_sent_7d", "cart_abandoned_1d", "views_1d",
                   "recency_days", "orders_count", "country")


class NotReadyError(RuntimeError):
    """Something the service needs is missing; the message names it and the command that makes it."""


@dataclass
class ServingState:
    as_of: datetime
    scores: dict[str, dict]  # customer_id -> score fields and reasons
    signals: dict[str, dict]  # customer_id -> policy signals (score fields and SIGNAL_FEATURES)
    churn: ModelBundle
    propensity: ModelBundle
    recommender: Recommender
    recommender_version: str
    recommendations: RecommendationContext
    lookup: Lookup

    @property
    def versions(self) -> dict[str, str]:
        return {"churn": str(self.churn.meta["version"]), "propensity": str(self.propensity.meta["version"]),
                "recommender": self.recommender_version}


def _score_table(features: pd.DataFrame, churn: ModelBundle, propensity: ModelBundle) -> dict[str, dict]:
    scores = score_features(features, churn, propensity)
    reasons = scores[[f"reason_{i + 1}" for i in range(REASONS)]].to_numpy()
    fields = scores[list(SCORE_FIELDS)].astype(object).where(scores[list(SCORE_FIELDS)].notna(), None)
    out = {}
    for cid, row, why in zip(scores[CUSTOMER_ID], fields.itertuples(index=False), reasons, strict=True):
        record = dict(zip(SCORE_FIELDS, row, strict=True))
        record["reasons"] = [r for r in why if isinstance(r, str)]
        out[cid] = record
    return out


def _signals(features: pd.DataFrame, scores: dict[str, dict]) -> dict[str, dict]:
    table = features[[CUSTOMER_ID, *SIGNAL_FEATURES]]
    table = table.astype(object).where(table.notna(), None)
    out = {}
    for row in table.to_dict("records"):
        cid = row.pop(CUSTOMER_ID)
        out[cid] = row | {k: scores[cid][k] for k in SCORE_FIELDS}
    return out


def load_state(config: ServeConfig) -> ServingState:
    """Load everything or raise :class:`NotReadyError` naming what is missing."""
    if not config.data.is_dir():
        raise NotReadyError(f"data directory {config.data} does not exist; pass --data DIR with the shop's tables.")
    configure_tracking(config.mlruns)
    hint = "Create it with `sendwise train {} --data DIR --as-of DATE`."
    try:
        churn = load_bundle("churn", config.churn_alias, hint.format("churn"))
        propensity = load_bundle("propensity", config.propensity_alias, hint.format("propensity"))
        recommender, recommender_version = load_alias(config.recommender_alias, hint.format("recommender"))
    except LookupError as exc:
        raise NotReadyError(str(exc)) from exc
    tables, _ = load_data_dir(config.data, None)
    if config.snapshot is not None:
        if not config.snapshot.exists():
            raise NotReadyError(f"feature snapshot {config.snapshot} does not exist. Create it with "
                                f"`sendwise features snapshot --data {config.data} --out {config.snapshot}`.")
        features, meta = read_snapshot(config.snapshot)
        as_of = datetime.fromisoformat(meta["as_of"])
    else:
        as_of = snapshot_as_of(tables)
        features = build_features(tables, as_of)
    scores = _score_table(features, churn, propensity)
    context = RecommendationContext(tables, as_of, recommender)
    return ServingState(as_of, scores, _signals(features, scores), churn, propensity, recommender,
                        recommender_version, context, Lookup(context))
