"""Champion / challenger: promote the challenger only when it beats the champion on one holdout."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow.models import MetricThreshold
from mlflow.models.evaluation import EvaluationResult
from mlflow.models.evaluation.validation import ModelValidationFailedException
from mlflow.tracking import MlflowClient

from features.tables import Tables
from features.training_set import Target
from training.metrics import classification_metrics
from training.registry import CHALLENGER, CHAMPION, MissingModelError, alias_version, load_version
from training.tracking import experiment_id
from training.train import holdout_frame

DEFAULT_MARGIN = 0.005  # points of the headline metric the challenger must gain
# The holdout metric each registered model is compared on (logged as holdout_<metric>).
HEADLINE = {"churn": "roc_auc", "propensity": "roc_auc", "recommender": "ndcg_at_10"}


@dataclass
class PromotionDecision:
    name: str
    champion_version: str
    challenger_version: str
    champion_value: float
    challenger_value: float
    margin: float
    holdout: str  # how the holdout was defined
    promoted: bool
    forced: bool
    reason: str


def _logged_holdout(name: str, version: str) -> tuple[float, str, str]:
    client = MlflowClient()
    run = client.get_run(client.get_model_version(name, version).run_id)
    key = f"holdout_{HEADLINE.get(name, 'roc_auc')}"
    value = run.data.metrics.get(key)
    if value is None:
        raise MissingModelError(f"{name} version {version} has no logged {key}")
    return value, run.data.tags.get("holdout_as_of", ""), run.data.tags.get("data_fingerprint", "")


def _beats(challenger: float, champion: float, margin: float, metric: str = "roc_auc") -> tuple[bool, str]:
    if margin <= 0:  # MetricThreshold takes positive changes only
        if challenger - champion >= margin:
            return True, f"challenger {metric} {challenger:.4f} is within {margin} of champion {champion:.4f} or better"
        return False, f"challenger {metric} {challenger:.4f} trails champion {champion:.4f} by more than {-margin}"
    thresholds = {metric: MetricThreshold(min_absolute_change=margin, greater_is_better=True)}
    try:
        mlflow.validate_evaluation_results(
            thresholds, EvaluationResult({metric: challenger}, {}), EvaluationResult({metric: champion}, {}))
    except ModelValidationFailedException as exc:
        return False, str(exc).strip().splitlines()[-1]
    return True, f"challenger {metric} {challenger:.4f} beats champion {champion:.4f} by at least {margin}"


def promote(name: str, margin: float = DEFAULT_MARGIN, force: bool = False,
            tables: Tables | None = None, as_of: object | None = None) -> PromotionDecision:
    """Move ``champion`` to the challenger if it beats the champion's holdout headline metric
    (:data:`HEADLINE`: ROC-AUC, or NDCG@10 for the recommender) by ``margin``.

    Both are compared on the same holdout: their logged holdout metrics when they were evaluated on
    the same data and holdout date, else a fresh holdout at ``as_of`` built from ``tables``.
    """
    champion, challenger = alias_version(name, CHAMPION), alias_version(name, CHALLENGER)
    if champion is None or challenger is None:
        command = {"churn": "churn", "recommender": "recommender"}.get(name, "propensity")
        raise MissingModelError(f"'{name}' needs both a champion and a challenger; train one with "
                                f"`sendwise train {command} ...`.")
    metric = HEADLINE.get(name, "roc_auc")
    if tables is not None and as_of is not None and name == "recommender":
        raise ValueError("a fresh holdout is not supported for the recommender: both versions are compared on "
                         "their logged holdout metrics; leave out --data and --as-of.")
    if tables is not None and as_of is not None:
        champ_bundle, chall_bundle = load_version(name, champion), load_version(name, challenger)
        target = Target(chall_bundle.target)
        holdout = holdout_frame(tables, target, as_of, chall_bundle.horizon_days)
        y = holdout[target.value].to_numpy(int)
        champion_value = classification_metrics(y, champ_bundle.predict_proba(holdout))["roc_auc"]
        challenger_value = classification_metrics(y, chall_bundle.predict_proba(holdout))["roc_auc"]
        holdout_desc = f"fresh holdout at {as_of} ({len(holdout):,} customers)"
    else:
        champion_value, champ_date, champ_data = _logged_holdout(name, champion)
        challenger_value, chall_date, chall_data = _logged_holdout(name, challenger)
        if (champ_date, champ_data) != (chall_date, chall_data):
            raise MissingModelError(
                f"champion v{champion} and challenger v{challenger} were evaluated on different holdouts "
                f"({champ_date} vs {chall_date}, data {champ_data} vs {chall_data}); pass --data and --as-of "
                "to evaluate both on one holdout.")
        holdout_desc = f"logged holdout at {chall_date} (data {chall_data})"
    if champion == challenger:
        promoted, reason = False, "the challenger is already the champion"
    else:
        promoted, reason = _beats(challenger_value, champion_value, margin, metric)
    decision = PromotionDecision(name, champion, challenger, champion_value, challenger_value, margin, holdout_desc,
                                 promoted or (force and champion != challenger), force, reason)
    if decision.promoted:
        MlflowClient().set_registered_model_alias(name, CHAMPION, challenger)
    mlflow.set_experiment(experiment_id=experiment_id("sendwise-promotions"))
    with mlflow.start_run(run_name=f"promote-{name}"):
        mlflow.log_params({"model": name, "champion_version": champion, "challenger_version": challenger,
                           "margin": margin, "forced": force, "holdout": holdout_desc[:250]})
        mlflow.log_metrics({f"champion_{metric}": champion_value, f"challenger_{metric}": challenger_value,
                            "promoted": float(decision.promoted)})
        mlflow.set_tag("reason", reason[:5000])
    return decision


