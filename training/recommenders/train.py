"""Train, tune, evaluate, log and register a recommender.

Protocol of ``train_recommender(tables, as_of=DATE)``: nothing at or after DATE is read for
fitting, choosing or tuning. :func:`~training.protocols.choose_protocol` picks it from the rows
before DATE (printed and logged):

* time split: the holdout window starts at DATE when the data goes on after it (to the end of the
  data), otherwise it is the last ``window_days`` before DATE; the validation fold (model choice,
  Optuna) is the window of the same length just before the holdout, with models fitted on the rows
  before that window;
* leave-latest-out: each customer's latest day of purchases before DATE is the holdout, the day
  before that (of the rest) the validation fold.

``kind="auto"`` (the default) chooses the model on the validation fold
(:mod:`training.recommenders.selection`). The model registered is refitted on every row before
DATE; the metrics logged are those of the same parameters fitted on the holdout's input, next to the
popular and trending baselines. The version records its provenance
(:class:`~training.registry.ModelProvenance`): the fingerprint of the rows before DATE and the
latest timestamp among them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import mlflow
import optuna
import pandas as pd

from features.build import to_timestamp
from features.errors import InputError
from features.interactions import InteractionConfig
from features.schema import CUSTOMER_ID
from features.tables import Tables
from features.validate import ContractError
from training import plots
from training.holdout_scores import log_holdout_scores
from training.protocols import LEAVE_LATEST_OUT, choose_protocol, leave_latest_out, validation_fold
from training.recommenders import evaluation
from training.recommenders.evaluation import NEW_ITEMS, Holdout, holdout
from training.recommenders.models import TUNABLE, Recommender, make_recommender
from training.recommenders.selection import (
    AUTO,
    DEFAULT_BUDGET_S,
    Candidate,
    ModelChoice,
    candidates,
    choose_model,
    log_choice,
)
from training.recommenders.store import REGISTERED_NAME, log_and_register
from training.registry import PROJECT_TAG, ModelProvenance, registered_name
from training.tracking import configure_tracking, experiment_id, git_commit

DEFAULT_WINDOW_DAYS = 90
HALF_LIVES = (None, 30.0, 90.0, 180.0, 365.0)


def suggest_params(trial: optuna.Trial, kind: str) -> dict:
    """The search space of each tunable model (time decay included)."""
    half_life = trial.suggest_categorical("half_life_days", HALF_LIVES)
    if kind == "als":
        return {"factors": trial.suggest_int("factors", 16, 256, log=True),
                "regularization": trial.suggest_float("regularization", 1e-3, 10.0, log=True),
                "alpha": trial.suggest_float("alpha", 0.01, 50.0, log=True),
                "iterations": trial.suggest_int("iterations", 5, 50),
                "weighting": trial.suggest_categorical("weighting", ["plain", "bm25", "tfidf"]),
                "half_life_days": half_life}
    if kind == "bpr":
        return {"factors": trial.suggest_int("factors", 16, 256, log=True),
                "learning_rate": trial.suggest_float("learning_rate", 1e-3, 0.1, log=True),
                "regularization": trial.suggest_float("regularization", 1e-4, 1.0, log=True),
                "iterations": trial.suggest_int("iterations", 20, 300, log=True),
                "weighting": trial.suggest_categorical("weighting", ["plain", "bm25", "tfidf"]),
                "half_life_days": half_life}
    if kind == "itemknn":
        return {"neighbours": trial.suggest_int("neighbours", 5, 500, log=True),
                "similarity": trial.suggest_categorical("similarity", ["cosine", "bm25", "tfidf"]),
                "half_life_days": half_life}
    if kind == "reranker":  # stage 1's models, the candidate count and the trees
        return {"neighbours": trial.suggest_int("neighbours", 5, 100, log=True),
                "ease_lambda": trial.suggest_float("ease_lambda", 10.0, 3000.0, log=True),
                "candidates": trial.suggest_categorical("candidates", [50, 100, 200]),
                "trees": trial.suggest_int("trees", 50, 400, log=True),
                "depth": trial.suggest_int("depth", 3, 6),
                "half_life_days": half_life}
    raise InputError(f"only {', '.join(TUNABLE)} can be tuned; got {kind!r}")


@dataclass
class RecommenderTrainResult:
    kind: str
    version: str
    run_id: str
    model: Recommender
    params: dict
    holdout: Holdout
    table: pd.DataFrame  # one row per (model, variant) on the holdout, baselines included
    protocol: str = ""  # the protocol and why it suits the data
    choice: ModelChoice | None = None  # the comparison that chose the model (kind auto)


def _windows(tables: Tables, date: datetime, window_days: int) -> tuple[datetime, datetime | None, datetime]:
    """(holdout start, holdout end or None for the end of the data, tuning fold start)."""
    start, end = tables.time_range()
    if start is None or not start < date <= end + timedelta(microseconds=1):
        raise ContractError(f"--as-of {date} is outside the data, which runs from {start} to {end}.")
    if end >= date:
        holdout_start, until = date, None
    else:
        holdout_start, until = date - timedelta(days=window_days), date
    tune_start = holdout_start - timedelta(days=window_days)
    if tune_start <= start:
        raise ContractError(
            f"the data before {date:%Y-%m-%d} is too short: tuning and evaluation need two {window_days}-day "
            f"windows after some history, and the data starts {start:%Y-%m-%d}.")
    return holdout_start, until, tune_start


@dataclass
class ProtocolFolds:
    """The folds of ``train_recommender`` at one as_of."""

    protocol: str
    reason: str
    cut: Tables  # the rows before the as_of: models fit on them (or on a fold's inputs)
    test: Holdout  # the holdout
    validation: Holdout  # the fold before it (model choice, tuning); its inputs set
    scored_on: Tables  # what the holdout's histories are read from when it has no inputs of its own


def protocol_folds(tables: Tables, date: datetime, window_days: int) -> ProtocolFolds:
    """The protocol :func:`~training.protocols.choose_protocol` picks from the rows before ``date``
    and its holdout and validation fold (see the module)."""
    holdout_start, until, tune_start = _windows(tables, date, window_days)
    cut = tables.before(date)
    protocol, reason = choose_protocol(cut, window_days)
    if protocol == LEAVE_LATEST_OUT:
        test = leave_latest_out(cut, date)
        return ProtocolFolds(protocol, reason, cut, test, validation_fold(cut, test, window_days), cut)
    test = holdout(tables if until is None else cut, holdout_start, until)
    fold = replace(holdout(cut, tune_start, holdout_start), inputs=cut)
    return ProtocolFolds(protocol, reason, cut, test, fold, cut if until else tables)


def tune(tables: Tables, kind: str, fold: Holdout, trials: int, k: int, base_config: InteractionConfig | None,
         random_state: int, on_trial: Callable[[optuna.Trial, dict, float], None] | None = None,
         fixed: dict | None = None) -> dict:
    """Optuna TPE search for the highest new-items NDCG@k on ``fold``; returns the best parameters
    (``fixed`` ones are not searched)."""
    fixed = (fixed or {}) | ({"random_state": random_state} if kind != "itemknn" else {})

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, kind) | fixed
        model = evaluation.fit_for_test(make_recommender(kind, **params), tables, fold, base_config)
        row = evaluation.score(model, tables, fold, k, base_config)[0]
        if on_trial:
            on_trial(trial, params, row["ndcg"])
        return row["ndcg"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=random_state))
    study.optimize(objective, n_trials=trials)
    return dict(study.best_params) | fixed


def _metrics(rows: list[dict], prefix: str, k: int) -> dict[str, float]:
    out = {}
    for row in rows:
        variant = "" if row["variant"] == NEW_ITEMS else "all_items_"
        for name in ("precision", "recall", "ndcg", "map", "hit_rate", "coverage"):
            out[f"{prefix}{variant}{name}_at_{k}"] = row[name]
    return out


def serving_candidates(window_days: int) -> tuple[Candidate, ...]:
    """Auto's candidates that give a customer they were not fitted on their own list (or everyone's):
    what a model fitted on a sample of the shop must do for the rest."""
    return tuple(c for c in candidates(window_days)
                 if make_recommender(c.kind, **c.params).serves_customers_outside_fit)


def train_recommender(tables: Tables, as_of: object, kind: str = AUTO, trials: int = 0, k: int = 10,
                      window_days: int = DEFAULT_WINDOW_DAYS, params: dict | None = None,
                      base_config: InteractionConfig | None = None, random_state: int = 0,
                      mlruns=None, progress: Callable[[str], None] | None = None, project: str | None = None,
                      data_source: str | None = None, budget_s: float = DEFAULT_BUDGET_S,
                      run_params: Mapping[str, object] | None = None,
                      sampled: bool = False) -> RecommenderTrainResult:
    """Choose (``kind`` auto, within ``budget_s`` seconds) or tune (``trials`` > 0), fit, evaluate
    against baselines, log to MLflow and register as ``project``'s recommender (none: the global
    name); ``data_source`` (the data directory, when known) is recorded on the version, and
    ``run_params`` (say, how ``tables`` were sampled from a larger shop) with the run's parameters.
    ``sampled``: ``tables`` hold a sample of the shop's customers, so auto compares only the
    candidates that serve customers outside their fit (:func:`serving_candidates`)."""
    if kind not in (AUTO, *TUNABLE):
        raise InputError(f"--model must be one of {', '.join((AUTO, *TUNABLE))}; got {kind!r}")
    if kind == AUTO and params:
        raise InputError(f"parameters go with a named model, not {AUTO}; got {sorted(params)}")
    registered_name(REGISTERED_NAME, project)  # a bad project name fails before any work
    date = to_timestamp(as_of)
    say = progress or (lambda _: None)
    folds = protocol_folds(tables, date, window_days)
    cut, test, fold, scored_on = folds.cut, folds.test, folds.validation, folds.scored_on
    protocol, protocol_reason = folds.protocol, folds.reason
    say(f"protocol: {protocol} ({protocol_reason})")

    configure_tracking(mlruns)
    mlflow.set_experiment(experiment_id=experiment_id("sendwise-recommender", mlruns))
    with mlflow.start_run(run_name=f"{kind}-{date:%Y-%m-%d}") as run:
        choice, name, base = None, kind, {}
        if kind == AUTO:
            pool = serving_candidates(window_days) if sampled else None
            choice = choose_model(cut, fold, k, budget_s, window_days, protocol_reason, say, pool)
            log_choice(choice)
            name, kind, base = choice.chosen.name, choice.chosen.kind, choice.chosen.params
        # the reranker's ranker learns from windows as long as the one it is evaluated on
        fixed = {"window_days": window_days} if kind == "reranker" else {}
        chosen = make_recommender(kind, **(base | fixed | (params or {}))).params
        if trials > 0 and kind in TUNABLE:
            def log_trial(trial, trial_params, ndcg):
                with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
                    mlflow.log_params(trial_params)
                    mlflow.log_metric(f"tuning_ndcg_at_{k}", ndcg)
                say(f"trial {trial.number + 1}/{trials}: NDCG@{k} {ndcg:.4f}")

            chosen = make_recommender(kind, **tune(cut, kind, fold, trials, k, base_config, random_state,
                                                   log_trial, fixed)).params
        say("evaluating on the holdout")
        rows = []
        models = {"popular": make_recommender("popular"), "trending": make_recommender("trending"),
                  name: make_recommender(kind, **chosen)}
        for who, model in models.items():
            evaluation.fit_for_test(model, cut, test, base_config)
            rows += [{"model": who, **r} for r in evaluation.score(model, scored_on, test, k, base_config)]
        table = pd.DataFrame(rows)
        per_customer = evaluation.per_customer_metrics(models[name], scored_on, test, k, base_config)
        say("fitting on every row before the as_of")
        final = make_recommender(kind, **chosen).fit_tables(cut, date, base_config)

        mlflow.log_params({"model": kind, "as_of": date.isoformat(), "holdout_start": test.as_of.isoformat(),
                           "holdout_end": test.until.isoformat(), "validation_start": fold.as_of.isoformat(),
                           "protocol": protocol, "protocol_reason": protocol_reason[:500],
                           "trials": trials, "k": k, **{f"rec_{p}": v for p, v in chosen.items()},
                           **{f"interactions_{p}": v for p, v in (base_config or InteractionConfig()).model_dump().items()},
                           "customers": len(final.customer_ids_), "products": len(final.product_ids_),
                           **(run_params or {})})
        provenance = ModelProvenance.of_data(cut, project, data_source)
        mlflow.set_tags({"git_commit": git_commit(), "data_fingerprint": provenance.data_fingerprint,
                         "holdout_as_of": test.as_of.isoformat(), "model_kind": kind, PROJECT_TAG: project or ""})
        by_model = {who: group.to_dict("records") for who, group in table.groupby("model")}
        mlflow.log_metrics(_metrics(by_model[name], "holdout_", k))
        for baseline in ("popular", "trending"):
            mlflow.log_metrics(_metrics(by_model[baseline], f"baseline_{baseline}_", k))
        mlflow.log_table(table, "holdout_metrics.json")
        log_holdout_scores(pd.DataFrame({CUSTOMER_ID: per_customer.index.astype(str),
                                         f"ndcg_at_{k}": per_customer["ndcg"].to_numpy()}))
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(plots.ranking_plot(table, Path(tmp) / "ranking.png", k)), artifact_path="plots")
        say("registering")
        example = pd.DataFrame({CUSTOMER_ID: final.customer_ids_[:5].astype(str)})
        version = log_and_register(final, example, project, provenance.tags())
    return RecommenderTrainResult(kind, version, run.info.run_id, final, chosen, test, table,
                                  f"{protocol}: {protocol_reason}", choice)
