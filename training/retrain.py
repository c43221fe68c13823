"""Retraining for production (``sendwise run``): backtest, compare with the champion, refit on everything.

Per classifier (target, label horizon ``h``), the data ending at ``E``:

1. backtest: XGBoost (parameters: the defaults, or the best of ``trials`` Optuna trials) and the
   logistic model on log-RFM are fitted as ``train_classifier(as_of=B)`` fits, with ``B = day(E) - h``:
   the holdout is every customer at ``B`` labelled from ``[B, B + h)``, the latest fully labelled
   window; the folds before it are fitted on; the challenger's recipe is the kind that ranks the
   validation month (the calibration fold) better (:mod:`training.classifier_choice`);
2. the champion's recipe (its parameters, feature settings and horizon) is fitted on the same folds
   and scored on the same holdout customers; when the two recipes are the same the challenger is
   the champion refreshed with newer data, and there is nothing to compare;
3. the challenger wins when it beats the champion by the margin with a paired-bootstrap interval
   above ``min(margin, 0)`` (:func:`training.promotion.decide`);
4. refit: the challenger's recipe on every labelled month up to ``E`` (the latest month calibrates,
   the one before stops the boosting early), registered with its backtest figures and
   ``trained_through = E``; it becomes the champion when it won. When it lost, the champion's recipe
   is refitted the same way and registered as the new champion, so that whatever is served has seen
   the data up to its end. The churn model carries the CLV model (:mod:`training.clv`) fitted on every
   customer's features at ``E``.

The recommender follows the same steps on the protocol that suits the data
(:func:`training.protocols.choose_protocol`): the time split with ``B = day(E) - window`` (fitted on
the rows before ``B``, evaluated on the purchases in ``[B, E]``), or leave-latest-out (each
customer's latest day held out); NDCG@k over customers, new items; refitted on every row. With
``recommender: auto`` (the default) the recipe is chosen first on the validation fold before the
holdout (:mod:`training.recommenders.selection`), and the choice is logged with the run.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from features.config import FeatureConfig
from features.schema import CUSTOMER_ID
from features.tables import Tables
from features.training_set import Target, build_training_set, data_end, monthly_as_of_dates
from features.validate import ContractError
from training import plots
from training.baselines import recency_rule
from training.bootstrap import PairedDifference, paired_auc, paired_mean
from training.classifier_choice import candidate_kinds, choose_classifier, fit_candidates, fit_kind
from training.clv import DEFAULT_HORIZON_DAYS
from training.design import FEATURE_CONFIG, feature_columns, trained_feature_config
from training.fitting import choose_params
from training.holdout_scores import log_holdout_scores
from training.linear import LogRFMModel
from training.metrics import classification_metrics
from training.model import XGBOOST, ModelBundle
from training.promotion import DEFAULT_MARGIN, decide
from training.protocols import LEAVE_LATEST_OUT, choose_protocol, leave_latest_out, validation_fold
from training.recommenders import evaluation
from training.recommenders.models import TUNABLE, Recommender, make_recommender
from training.recommenders.selection import AUTO, DEFAULT_BUDGET_S, ModelChoice, choose_model, log_choice
from training.recommenders.store import load_version as load_recommender_version
from training.recommenders.store import log_and_register as register_recommender
from training.recommenders.train import tune as tune_recommender
from training.registry import (
    CHALLENGER,
    CHAMPION,
    ModelProvenance,
    alias_version,
    latest_row_time,
    load_version,
    log_and_register,
    registered_name,
)
from training.scoring import CLV_KEY
from training.tracking import experiment_id, git_commit
from training.train import MODEL_NAMES, Folds, NotEnoughDataError, check_rows, fit_clv_model, make_folds

MIN_RECOMMENDER_CUSTOMERS = 20  # holdout customers the recommender's backtest needs (a bootstrap over fewer says little)
CLASSIFIER_METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "lift_at_10", "capture_at_10")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class RetrainSettings:
    """What a run trains (a project's ``run:`` settings)."""

    project: str | None = None
    margin: float = DEFAULT_MARGIN
    trials: int = 0
    periods: int = 12
    churn_horizon_days: int = 90
    propensity_horizon_days: int = 30
    recommender: str = AUTO
    recommender_budget_s: float = DEFAULT_BUDGET_S  # auto's time budget
    clv_horizon_days: int = DEFAULT_HORIZON_DAYS
    k: int = 10
    window_days: int = 90
    data_source: str | None = None
    random_state: int = 0

    def horizon(self, target: Target) -> int:
        return self.churn_horizon_days if target is Target.CHURNED else self.propensity_horizon_days


@dataclass
class RetrainOutcome:
    """One model's part of a run: the backtest figures, the decision and the versions."""

    model: str  # churn, propensity or recommender
    registered_name: str
    metric: str  # the headline metric the decision used
    metrics_shown: tuple[str, ...]
    backtest_as_of: datetime
    holdout_rows: int
    protocol: str
    figures: dict[str, dict[str, float]]  # challenger, champion (when compared), baselines -> metrics
    challenger_version: str
    champion_before: str | None
    champion_after: str
    promoted: bool  # the champion alias is on the challenger now
    reason: str
    trained_through: datetime
    comparison: PairedDifference | None = None
    plots: dict[str, bytes] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # e.g. the challenger does not beat a simple baseline


def latest_labelled_as_of(end: datetime, days: int) -> datetime:
    """The as_of whose ``days``-day window closes at the data's last midnight: the latest one fully observed."""
    return pd.Timestamp(end).floor("D").to_pydatetime() - timedelta(days=days)


def _plot_bytes(make: Callable[[Path], Path]) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return make(Path(tmp) / "plot.png").read_bytes()


def _provenance(settings: RetrainSettings, tables: Tables) -> ModelProvenance:
    """A refit reads every row: it is trained through the latest one."""
    return ModelProvenance.of_data(tables, settings.project, settings.data_source)


def _decision(champion: str | None, same_recipe: bool, comparison: PairedDifference | None,
              margin: float, end: datetime, mismatch: str | None = None) -> tuple[bool, str]:
    if champion is None:
        return True, "the project's first model"
    if mismatch:
        return True, mismatch
    if same_recipe:
        return True, (f"same recipe as champion v{champion}: refreshed with the data through "
                      f"{end:%Y-%m-%dT%H:%M:%S}")
    return decide(comparison, margin)


# --- classifiers -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassifierRecipe:
    params: dict  # XGBoost's (none for the logistic model)
    horizon_days: int
    feature_config: FeatureConfig
    kind: str = XGBOOST

    def same_as(self, other: ClassifierRecipe) -> bool:
        def key(recipe: ClassifierRecipe) -> str:
            return json.dumps({k: str(v) for k, v in recipe.params.items()}, sort_keys=True)
        return (key(self), self.horizon_days, self.feature_config, self.kind) == (
            key(other), other.horizon_days, other.feature_config, other.kind)


def _typed(value: str) -> object:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def classifier_recipe(name: str, version: str) -> ClassifierRecipe:
    """The recipe of a registered classifier: parameters from its bundle (or, for versions trained
    before bundles kept them, from its MLflow run's ``xgb_*`` parameters)."""
    bundle = load_version(name, version)
    if bundle.kind != XGBOOST:
        return ClassifierRecipe({}, bundle.horizon_days, trained_feature_config(bundle.meta), bundle.kind)
    params = bundle.meta.get("xgb_params")
    if params is None:
        client = MlflowClient()
        logged = client.get_run(client.get_model_version(name, version).run_id).data.params
        params = {k.removeprefix("xgb_"): _typed(v) for k, v in logged.items() if k.startswith("xgb_")}
    return ClassifierRecipe(params, bundle.horizon_days, trained_feature_config(bundle.meta))


def refit_folds(tables: Tables, target: Target, horizon: int, periods: int, config: FeatureConfig) -> Folds:
    """Every labelled month up to the data's end: the latest calibrates, the one before validates,
    the rest train (no holdout: the backtest measured the recipe)."""
    end = data_end(tables)
    dates = monthly_as_of_dates(tables, horizon, periods=periods, last=latest_labelled_as_of(end, horizon))
    if len(dates) < 3:
        raise NotEnoughDataError(f"need at least 3 monthly as_of dates whose {horizon}-day label windows close by "
                                 f"{end:%Y-%m-%d} (training, validation, calibration); the data gives {len(dates)}.")
    stacked = build_training_set(tables, dates, target, horizon, config).frame
    frames = {pd.Timestamp(d): f for d, f in stacked.groupby("as_of")}
    folds = Folds(pd.concat([frames[pd.Timestamp(d)] for d in dates[:-2]], ignore_index=True),
                  frames[pd.Timestamp(dates[-2])], frames[pd.Timestamp(dates[-1])], stacked.iloc[:0], end, dates)
    for fold in ("train", "valid", "calibration"):
        check_rows(fold, getattr(folds, fold), target.value)
    return folds


def _fit(folds: Folds, recipe: ClassifierRecipe, target: Target, settings: RetrainSettings, meta: dict) -> ModelBundle:
    columns = feature_columns(folds.train, recipe.feature_config)
    return fit_kind(recipe.kind, folds.train, folds.valid, folds.calibration, columns, target.value,
                    recipe.horizon_days, recipe.params, settings.random_state,
                    meta | {FEATURE_CONFIG: recipe.feature_config.to_dict()})


def _classifier_plots(y: np.ndarray, scores: dict[str, np.ndarray], bundle: ModelBundle,
                      holdout: pd.DataFrame) -> dict[str, bytes]:
    return {
        "roc.png": _plot_bytes(lambda p: plots.roc_plot(y, scores, p)),
        "cumulative_gains.png": _plot_bytes(lambda p: plots.gains_plot(y, scores, p)),
        "calibration.png": _plot_bytes(lambda p: plots.calibration_plot(y, {"challenger": scores["challenger"]}, p)),
        "feature_importance.png": _plot_bytes(lambda p: plots.importance_plot(
            bundle.columns, bundle.contributions(holdout, exact=True), p)),
    }


def _register_classifier(bundle: ModelBundle, name: str, run_name: str, settings: RetrainSettings,
                         backtest: dict, refit: Folds, tables: Tables, end: datetime) -> str:
    """Log one refitted classifier with its backtest and register it (no alias moves); returns the version."""
    with mlflow.start_run(run_name=run_name):
        mlflow.log_params({"target": bundle.target, "horizon_days": bundle.horizon_days,
                           "backtest_as_of": backtest["as_of"].isoformat(), "trained_through": end.isoformat(),
                           "fit_as_of_dates": ",".join(f"{d:%Y-%m-%d}" for d in refit.fit_dates),
                           "backtest_fit_as_of_dates": ",".join(f"{d:%Y-%m-%d}" for d in backtest["fit_dates"]),
                           "trials": settings.trials, "model_kind": bundle.kind,
                           **{f"xgb_{k}": v for k, v in bundle.meta.get("xgb_params", {}).items()}})
        mlflow.set_tags({"git_commit": git_commit(), "data_fingerprint": tables.fingerprint(),
                         "holdout_as_of": backtest["as_of"].isoformat(), "target": bundle.target, "job": "sendwise run"})
        for who, values in backtest["figures"].items():
            prefix = "holdout_" if who == "model" else f"baseline_{who}_"
            mlflow.log_metrics({f"{prefix}{k}": v for k, v in values.items() if np.isfinite(v)})
        log_holdout_scores(backtest["scores"])
        _log_plots(backtest["plots"])
        return log_and_register(bundle, name, backtest["example"], bundle.predict_proba(backtest["example"]),
                                provenance=_provenance(settings, tables), aliases=False)


def _log_plots(pngs: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for file, png in pngs.items():
            (Path(tmp) / file).write_bytes(png)
            mlflow.log_artifact(str(Path(tmp) / file), artifact_path="plots")


def _backtest_folds(tables: Tables, target: Target, as_of: datetime, settings: RetrainSettings,
                    config: FeatureConfig) -> Folds:
    """The backtest's folds, or :class:`NotEnoughDataError` saying in the run's terms what is missing."""
    horizon = settings.horizon(target)
    try:
        return make_folds(tables, target, as_of, horizon, settings.periods, config)
    except ContractError as exc:
        start, end = tables.time_range()
        days = (end - start).days if start is not None else 0
        setting = f"run.{MODEL_NAMES[target]}_horizon_days"
        raise NotEnoughDataError(
            f"the data covers {days} days ({start:%Y-%m-%d} to {end:%Y-%m-%d}); the backtest needs a {horizon}-day "
            f"label window at its end and, before it, three monthly training dates whose own {horizon}-day windows "
            f"close in time ({exc}). Lower {setting} or run.periods in sendwise.yaml, or wait for more data."
        ) from None


def quality_warning(model: str, metric: str, figures: dict[str, dict[str, float]], baselines: tuple[str, ...]) -> str | None:
    """A warning when the challenger does not beat the best simple baseline on the backtest."""
    best = max(baselines, key=lambda b: figures[b][metric])
    ours, theirs = figures["challenger"][metric], figures[best][metric]
    if ours > theirs:
        return None
    return (f"{model}: the challenger's backtest {metric} {ours:.4f} does not beat the {best} baseline's "
            f"{theirs:.4f}: too little data or signal for the model to learn from; treat its answers with care")


def retrain_classifier(tables: Tables, target: Target, settings: RetrainSettings, config: FeatureConfig,
                       progress: Progress | None = None) -> RetrainOutcome:
    """Backtest, compare, refit and register one classifier (see the module). Aliases move only
    once every version of the step is registered."""
    say = progress or (lambda _: None)
    model = MODEL_NAMES[target]
    name = registered_name(model, settings.project)
    horizon, end = settings.horizon(target), data_end(tables)
    as_of = latest_labelled_as_of(end, horizon)
    say("building the backtest folds")
    folds = _backtest_folds(tables, target, as_of, settings, config)
    label, y = target.value, folds.holdout[target.value].to_numpy(int)
    columns = feature_columns(folds.train, config)
    say("choosing parameters" if settings.trials else "backtesting")
    params = choose_params(folds.train, folds.valid, columns, label, settings.trials, settings.random_state)
    recipes = {kind: ClassifierRecipe(params if kind == XGBOOST else {}, horizon, config, kind)
               for kind in candidate_kinds(target.value)}
    candidates, failed = fit_candidates(tuple(recipes), lambda kind: _fit(folds, recipes[kind], target, settings, {}))
    choice = choose_classifier(candidates, folds.calibration, label, failed)
    say(choice.reason)
    challenger, backtest_bundle = recipes[choice.kind], candidates[choice.kind]
    scores = {"challenger": backtest_bundle.predict_proba(folds.holdout)}
    fitted = pd.concat([folds.train, folds.valid, folds.calibration], ignore_index=True)
    scores["recency rule"] = recency_rule(folds.holdout, churn=target is Target.CHURNED)
    scores["logistic log-RFM"] = LogRFMModel.fit(fitted, fitted[label].to_numpy(int)).predict_proba(folds.holdout)

    champion_version = alias_version(name, CHAMPION)
    champion = classifier_recipe(name, champion_version) if champion_version else None
    same = champion is not None and champion.same_as(challenger)
    comparison, mismatch = None, None
    if champion is not None and champion.horizon_days != horizon:
        mismatch = (f"champion v{champion_version} predicts a {champion.horizon_days}-day window and the project "
                    f"configures {horizon} days: the configured one replaces it")
    elif champion is not None and champion.feature_config != config:
        mismatch = (f"champion v{champion_version} was trained with other feature settings than the project's: "
                    "the project's replace them (the service builds one set of features for every model)")
    elif champion is not None and not same:
        say(f"backtesting champion v{champion_version}'s recipe")
        scores["champion"] = _fit(folds, champion, target, settings, {}).predict_proba(folds.holdout)
        comparison = paired_auc(y, scores["champion"], scores["challenger"])
    promoted, reason = _decision(champion_version, same, comparison, settings.margin, end, mismatch)
    figures = {who: classification_metrics(y, s) for who, s in scores.items()}
    warning = quality_warning(model, "roc_auc", figures, ("recency rule", "logistic log-RFM"))
    backtest = {"as_of": as_of, "fit_dates": folds.fit_dates, "example": folds.holdout.head(100),
                "figures": {"model": figures["challenger"], "recency_rule": figures["recency rule"],
                            "logistic_log_rfm": figures["logistic log-RFM"]},
                "scores": pd.DataFrame({CUSTOMER_ID: folds.holdout[CUSTOMER_ID].to_numpy(), "label": y,
                                        "probability": scores["challenger"]}),
                "plots": _classifier_plots(y, scores, backtest_bundle, folds.holdout)}

    say("refitting on every labelled month")
    refit = refit_folds(tables, target, horizon, settings.periods, config)
    meta = {"trained_as_of": end.isoformat(), "holdout_as_of": as_of.isoformat(),
            "holdout_metrics": figures["challenger"], "model_choice": choice.reason,
            **{f"validation_roc_auc_{kind}": auc for kind, auc in choice.roc_auc.items()}}
    notes = [choice.reason]
    if target is Target.CHURNED:
        say("fitting the CLV model")
        clv, line = fit_clv_model(tables, end + timedelta(microseconds=1), config, settings.clv_horizon_days)
        notes.append(line)
        if clv is not None:
            meta[CLV_KEY] = clv
    mlflow.set_experiment(experiment_id=experiment_id(f"sendwise-{model}"))
    say("registering")
    version = _register_classifier(_fit(refit, challenger, target, settings, meta), name, f"run-{model}-{end:%Y-%m-%d}",
                                   settings, backtest, refit, tables, end)
    champion_after = version
    if not promoted:
        say(f"refitting champion v{champion_version}'s recipe")
        champion_backtest = backtest | {"figures": {"model": figures["champion"]}, "scores": backtest["scores"].assign(
            probability=scores["champion"])}
        champion_meta = meta | {"holdout_metrics": figures["champion"], "refresh_of": champion_version}
        champion_after = _register_classifier(_fit(refit, champion, target, settings, champion_meta), name,
                                              f"run-{model}-{end:%Y-%m-%d}-champion", settings, champion_backtest,
                                              refit, tables, end)
    client = MlflowClient()
    client.set_registered_model_alias(name, CHALLENGER, version)
    client.set_registered_model_alias(name, CHAMPION, champion_after)
    return RetrainOutcome(model, name, "roc_auc", CLASSIFIER_METRICS, as_of, len(folds.holdout),
                          f"trained on monthly as_of dates before {as_of:%Y-%m-%d}; holdout: every customer at "
                          f"{as_of:%Y-%m-%d}, labelled from the {horizon} days after it (the latest fully labelled "
                          "window); the registered model is refitted on every labelled month up to the data's end.\n"
                          + "\n".join(notes), figures, version, champion_version, champion_after, promoted, reason,
                          latest_row_time(tables), comparison, backtest["plots"], [warning] if warning else [])


# --- recommender -------------------------------------------------------------------------------

def _recommender_scores(model: Recommender, tables: Tables, test: evaluation.Holdout, k: int) -> tuple[dict, pd.Series]:
    rows = evaluation.score(model, tables, test, k)
    new_items = next(r for r in rows if r["variant"] == evaluation.NEW_ITEMS)
    per_customer = evaluation.per_customer_metrics(model, tables, test, k)["ndcg"]
    return {f"{m}_at_{k}": float(new_items[m]) for m in ("ndcg", "precision", "recall", "hit_rate", "coverage")}, \
        per_customer


def _recommender_recipe(tables: Tables, test: evaluation.Holdout, settings: RetrainSettings, reason: str,
                        say: Progress) -> tuple[str, dict, ModelChoice | None]:
    """(kind, parameters, the auto comparison or None) of the challenger, chosen and tuned on the
    validation fold before ``test``."""
    kind, params, choice = settings.recommender, {}, None
    fold = validation_fold(tables, test, settings.window_days) if kind == AUTO or settings.trials else None
    if kind == AUTO:
        choice = choose_model(tables, fold, settings.k, settings.recommender_budget_s, settings.window_days, reason,
                              say)
        kind, params = choice.chosen.kind, choice.chosen.params
    params = make_recommender(kind, **params).params
    if settings.trials and kind in TUNABLE:
        say(f"tuning {kind} ({settings.trials} trials)")
        fixed = {"random_state": settings.random_state} if kind != "itemknn" else {}
        params = make_recommender(kind, **tune_recommender(tables, kind, fold, settings.trials, settings.k, None,
                                                           settings.random_state, fixed=fixed)).params
    return kind, params, choice


def retrain_recommender(tables: Tables, settings: RetrainSettings, progress: Progress | None = None) -> RetrainOutcome:
    """Backtest, compare, refit on every row and register the recommender (see the module)."""
    say = progress or (lambda _: None)
    name = registered_name("recommender", settings.project)
    k, window, end = settings.k, settings.window_days, data_end(tables)
    protocol, protocol_reason = choose_protocol(tables, window)
    say(f"protocol: {protocol}")
    if protocol == LEAVE_LATEST_OUT:
        test = leave_latest_out(tables)
        as_of, held = test.as_of, "each customer's latest day of purchases (new items), their earlier rows the input"
    else:
        as_of = latest_labelled_as_of(end, window)
        test = evaluation.holdout(tables, as_of)
        held = f"the products each customer bought from {as_of:%Y-%m-%d} to the data's end (new items)"
    cut = tables if protocol == LEAVE_LATEST_OUT else tables.before(as_of)  # leave-latest-out fits on its input
    kind, params, choice = _recommender_recipe(tables, test, settings, protocol_reason, say)
    say("backtesting")
    figures, per_customer = {}, {}
    for who, model in {"challenger": make_recommender(kind, **params), "popular": make_recommender("popular"),
                       "trending": make_recommender("trending")}.items():
        fitted = evaluation.fit_for_test(model, cut, test)
        figures[who], per_customer[who] = _recommender_scores(fitted, tables, test, k)

    if len(per_customer["challenger"]) < MIN_RECOMMENDER_CUSTOMERS:
        raise NotEnoughDataError(
            f"only {len(per_customer['challenger']):,} customer(s) in the backtest ({protocol}: {held}) bought a "
            f"product new to them having bought before: the recommender's backtest needs at least "
            f"{MIN_RECOMMENDER_CUSTOMERS}. Raise run.window_days in sendwise.yaml, or wait for more data.")
    champion_version = alias_version(name, CHAMPION)
    champion = load_recommender_version(champion_version, settings.project) if champion_version else None
    same = champion is not None and (champion.kind, champion.params) == (kind, params)
    comparison = None
    metric = f"ndcg_at_{k}"
    if champion is not None and not same:
        say(f"backtesting champion v{champion_version}'s recipe ({champion.kind})")
        figures["champion"], per_customer["champion"] = _recommender_scores(evaluation.fit_for_test(
            make_recommender(champion.kind, **champion.params), cut, test), tables, test, k)
        joined = pd.concat({w: per_customer[w] for w in ("champion", "challenger")}, axis=1).dropna()
        comparison = paired_mean(joined["champion"].to_numpy(), joined["challenger"].to_numpy(), metric)
    promoted, reason = _decision(champion_version, same, comparison, settings.margin, end)
    warning = quality_warning("recommender", metric, figures, ("popular", "trending"))
    ranking = pd.DataFrame([{"model": w, "variant": evaluation.NEW_ITEMS,
                             **{m.removesuffix(f"_at_{k}"): v for m, v in f.items()}} for w, f in figures.items()])
    plot = {"ranking.png": _plot_bytes(lambda p: plots.ranking_plot(ranking, p, k))}

    def register(recipe_kind: str, recipe_params: dict, who: str, run_name: str) -> str:
        say(f"refitting {who} on every row")
        final = make_recommender(recipe_kind, **recipe_params).fit_tables(tables, end + timedelta(microseconds=1))
        with mlflow.start_run(run_name=run_name):
            mlflow.log_params({"model": recipe_kind, "backtest_as_of": as_of.isoformat(), "k": k,
                               "trained_through": end.isoformat(), "trials": settings.trials,
                               "protocol": protocol, "protocol_reason": protocol_reason[:500],
                               "model_requested": settings.recommender,
                               **{f"rec_{p}": v for p, v in recipe_params.items()},
                               "customers": len(final.customer_ids_), "products": len(final.product_ids_)})
            if choice is not None and who == "challenger":
                log_choice(choice)
            mlflow.set_tags({"git_commit": git_commit(), "data_fingerprint": tables.fingerprint(),
                             "holdout_as_of": as_of.isoformat(), "model_kind": recipe_kind, "job": "sendwise run"})
            mlflow.log_metrics({f"holdout_{m}": v for m, v in figures[who].items()})
            for base in ("popular", "trending"):
                mlflow.log_metrics({f"baseline_{base}_{m}": v for m, v in figures[base].items()})
            log_holdout_scores(pd.DataFrame({CUSTOMER_ID: per_customer[who].index.astype(str),
                                             metric: per_customer[who].to_numpy()}))
            _log_plots(plot)
            example = pd.DataFrame({CUSTOMER_ID: final.customer_ids_[:5].astype(str)})
            return register_recommender(final, example, project=settings.project,
                                        provenance=_provenance(settings, tables), aliases=False)

    mlflow.set_experiment(experiment_id=experiment_id("sendwise-recommender"))
    version = register(kind, params, "challenger", f"run-recommender-{end:%Y-%m-%d}")
    champion_after = version if promoted else register(champion.kind, champion.params, "champion",
                                                       f"run-recommender-{end:%Y-%m-%d}-champion")
    client = MlflowClient()
    client.set_registered_model_alias(name, CHALLENGER, version)
    client.set_registered_model_alias(name, CHAMPION, champion_after)
    described = (f"{protocol} ({protocol_reason}): fitted on the input, truth = {held}; the registered model is "
                 "refitted on every row.")
    if choice is not None:
        described += "\n" + choice.render()
    return RetrainOutcome("recommender", name, metric, tuple(figures["challenger"]), as_of, len(per_customer["challenger"]),
                          described, figures, version, champion_version, champion_after, promoted, reason,
                          latest_row_time(tables), comparison, plot, [warning] if warning else [])
