"""Champion / challenger: promote the challenger only when it beats the champion on one holdout.

Both versions are scored on the same holdout rows and compared with a paired bootstrap
(:mod:`training.bootstrap`): ROC-AUC for churn and propensity, mean NDCG@10 over customers for the
recommender. The challenger is promoted when

* its headline metric is higher by at least ``margin`` (checked with ``mlflow.validate_evaluation_results``
  for a positive margin), and
* the 95 % interval of the difference lies above ``min(margin, 0)``: above zero for a positive
  margin (significantly better), above ``margin`` for a negative one (not worse by more than it).

``force`` promotes the challenger whatever the comparison says, and also when no comparison is
possible (the two were evaluated on different holdouts, one logged no holdout scores, or the
recommenders were evaluated at different k): the decision then says "forced without a comparison"
and why. Every decision is logged as a run of the ``sendwise-promotions`` experiment.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow.models import MetricThreshold
from mlflow.models.evaluation import EvaluationResult
from mlflow.models.evaluation.validation import ModelValidationFailedException
from mlflow.tracking import MlflowClient

from features.errors import InputError
from features.schema import CUSTOMER_ID
from features.tables import Tables
from features.training_set import Target
from training.bootstrap import PairedDifference, paired_auc, paired_mean
from training.holdout_scores import load_holdout_scores
from training.registry import (
    CHALLENGER,
    CHAMPION,
    PROJECT_TAG,
    MissingModelError,
    alias_version,
    load_version,
    registered_name,
)
from training.tracking import experiment_id
from training.train import holdout_frame

DEFAULT_MARGIN = 0.005  # points of the headline metric the challenger must gain
FORCED_WITHOUT_COMPARISON = "forced without a comparison"


class NotComparableError(MissingModelError):
    """Champion and challenger cannot be compared on one holdout (``force`` promotes anyway)."""


@dataclass
class PromotionDecision:
    name: str  # the registered name
    champion_version: str
    challenger_version: str
    champion_value: float | None  # None: no comparison was possible (forced)
    challenger_value: float | None
    margin: float
    holdout: str  # how the holdout was defined
    promoted: bool
    forced: bool
    reason: str
    comparison: PairedDifference | None  # the paired bootstrap; None when forced without one


def _holdout_tags(name: str, version: str) -> tuple[str, str]:
    client = MlflowClient()
    tags = client.get_run(client.get_model_version(name, version).run_id).data.tags
    return tags.get("holdout_as_of", ""), tags.get("data_fingerprint", "")


def _logged_comparison(model: str, name: str, champion: str, challenger: str) -> tuple[PairedDifference, str]:
    """Paired bootstrap on the per-customer holdout scores both runs of ``name`` (``model``'s
    registered name) logged; :class:`NotComparableError` when there are none to pair."""
    tags = {v: _holdout_tags(name, v) for v in (champion, challenger)}
    if tags[champion] != tags[challenger]:
        (champ_date, champ_data), (chall_date, chall_data) = tags[champion], tags[challenger]
        raise NotComparableError(
            f"champion v{champion} and challenger v{challenger} were evaluated on different holdouts "
            f"({champ_date} vs {chall_date}, data {champ_data} vs {chall_data}); "
            + ("retrain both on one --as-of and data, or --force to promote without a comparison."
               if model == "recommender" else "pass --data and --as-of to evaluate both on one holdout."))
    scores = {v: load_holdout_scores(name, v) for v in (champion, challenger)}
    missing = [v for v, frame in scores.items() if frame is None]
    if missing:
        raise NotComparableError(f"{name} version(s) {', '.join(missing)} logged no per-customer holdout scores "
                                 "(trained before they were kept); retrain, or for churn and propensity pass "
                                 "--data and --as-of.")
    joined = scores[champion].merge(scores[challenger], on=CUSTOMER_ID, suffixes=("_champion", "_challenger"))
    if model == "recommender":  # the column is ndcg_at_<k> of the --k each version was trained with
        columns = {v: next((c for c in frame.columns if c.startswith("ndcg_at_")), "") for v, frame in scores.items()}
        if columns[champion] != columns[challenger]:
            raise NotComparableError(f"champion v{champion} logged {columns[champion]} and challenger v{challenger} "
                                     f"{columns[challenger]}: train both with the same --k to compare them.")
        metric = columns[challenger]
        comparison = paired_mean(joined[f"{metric}_champion"], joined[f"{metric}_challenger"], metric)
    else:
        comparison = paired_auc(joined["label_champion"].to_numpy(int), joined["probability_champion"].to_numpy(),
                                joined["probability_challenger"].to_numpy())
    date, data = tags[challenger]
    return comparison, f"logged holdout at {date} (data {data}, {len(joined):,} customers)"


def _fresh_comparison(name: str, champion: str, challenger: str, tables: Tables,
                      as_of: object, project: str | None = None) -> tuple[PairedDifference, str]:
    champ_bundle, chall_bundle = load_version(name, champion, project), load_version(name, challenger, project)
    target = Target(chall_bundle.target)
    holdout = holdout_frame(tables, target, as_of, chall_bundle.horizon_days)
    y = holdout[target.value].to_numpy(int)
    comparison = paired_auc(y, champ_bundle.predict_proba(holdout), chall_bundle.predict_proba(holdout))
    return comparison, f"fresh holdout at {as_of} ({len(holdout):,} customers)"


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


def _significant(comparison: PairedDifference, margin: float) -> tuple[bool, str]:
    floor = min(margin, 0.0)
    low, high = comparison.interval
    interval = f"95% interval of the difference [{low:+.4f}, {high:+.4f}]"
    if low > floor:
        return True, f"{interval} lies above {floor:+g}"
    if high < 0:
        return False, f"{interval}: the challenger is worse"
    return False, f"{interval} does not lie above {floor:+g}" + (
        ": the gain may be noise" if floor == 0 else f": it may be worse by more than {-floor:g}")


def decide(comparison: PairedDifference, margin: float = DEFAULT_MARGIN) -> tuple[bool, str]:
    """Whether the challenger of ``comparison`` wins by ``margin`` (see the module), and why."""
    beats, reason = _beats(comparison.challenger, comparison.champion, margin, comparison.metric)
    significant, why = _significant(comparison, margin)
    return beats and significant, f"{reason}; {why}"


def promote(name: str, margin: float = DEFAULT_MARGIN, force: bool = False,
            tables: Tables | None = None, as_of: object | None = None,
            project: str | None = None) -> PromotionDecision:
    """Move ``champion`` of model ``name`` (of ``project``) to the challenger if it beats the
    champion's holdout headline metric (ROC-AUC; the recommender's NDCG at the k both were trained
    with) by ``margin`` and the paired bootstrap interval agrees (see the module).

    Both are compared on the same holdout: the per-customer scores their runs logged when they were
    evaluated on the same data and holdout date, else (churn, propensity) a fresh holdout at
    ``as_of`` built from ``tables``. When no comparison is possible that is an error, unless
    ``force``: then the challenger is promoted and the reason says why there was no comparison.
    """
    registered = registered_name(name, project)
    champion, challenger = alias_version(name, CHAMPION, project), alias_version(name, CHALLENGER, project)
    if champion is None or challenger is None:
        command = {"churn": "churn", "recommender": "recommender"}.get(name, "propensity")
        raise MissingModelError(f"'{registered}' needs both a champion and a challenger; train one with "
                                f"`sendwise train {command} ...`.")
    if tables is not None and as_of is not None and name == "recommender":
        raise InputError("a fresh holdout is not supported for the recommender: both versions are compared on "
                         "their logged holdout scores; leave out --data and --as-of.")
    comparison: PairedDifference | None = None
    try:
        if tables is not None and as_of is not None:
            comparison, holdout_desc = _fresh_comparison(name, champion, challenger, tables, as_of, project)
        else:
            comparison, holdout_desc = _logged_comparison(name, registered, champion, challenger)
    except NotComparableError as exc:
        if not force or champion == challenger:
            raise
        holdout_desc, reason = "none", f"{FORCED_WITHOUT_COMPARISON}: {exc}"
    if champion == challenger:
        promoted, reason = False, "the challenger is already the champion"
    elif comparison is not None:
        promoted, reason = decide(comparison, margin)
    else:
        promoted = False  # forced below
    decision = PromotionDecision(registered, champion, challenger,
                                 comparison.champion if comparison else None,
                                 comparison.challenger if comparison else None, margin, holdout_desc,
                                 promoted or (force and champion != challenger), force, reason, comparison)
    if decision.promoted:
        MlflowClient().set_registered_model_alias(registered, CHAMPION, challenger)
    _log_decision(decision, project)
    return decision


def _log_decision(decision: PromotionDecision, project: str | None) -> None:
    """The decision as a run of ``sendwise-promotions`` (the comparison's metrics when there was one)."""
    mlflow.set_experiment(experiment_id=experiment_id("sendwise-promotions"))
    with mlflow.start_run(run_name=f"promote-{decision.name}"):
        mlflow.log_params({"model": decision.name, "champion_version": decision.champion_version,
                           "challenger_version": decision.challenger_version, "margin": decision.margin,
                           "forced": decision.forced, "holdout": decision.holdout[:250]})
        mlflow.set_tags({"reason": decision.reason[:5000], PROJECT_TAG: project or ""})
        metrics = {"promoted": float(decision.promoted)}
        if (c := decision.comparison) is not None:
            metrics |= {f"champion_{c.metric}": c.champion, f"challenger_{c.metric}": c.challenger,
                        "difference": c.difference, "difference_low": c.interval[0],
                        "difference_high": c.interval[1]}
        mlflow.log_metrics(metrics)
