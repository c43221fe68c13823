"""Train a churn or purchase-propensity classifier on stacked point-in-time training sets.

Time protocol for ``train_classifier(tables, target, as_of=DATE)``:

* the model only ever sees ``tables.before(DATE)``: no row at or after DATE is read for fitting;
* fitting as_of dates are monthly and their label windows close at or before the holdout as_of;
  the latest is the calibration fold, the one before it the validation fold (early stopping and
  Optuna), the rest the training fold;
* the holdout is the as_of DATE itself, labelled from ``[DATE, DATE + horizon)`` when the data
  covers that window (the protocol of the quality figures); otherwise it is the latest monthly
  as_of whose window closes by DATE, and the folds move one month earlier.

Every kind of :func:`training.classifier_choice.candidate_kinds` is fitted on the same folds
(XGBoost with the default or tuned parameters), and the kind whose raw scores rank the calibration
fold (the latest labelled month before the holdout) best is shipped, as ``sendwise run`` chooses. A
churn model carries the CLV model (:mod:`training.clv`) fitted on every customer's features at DATE.

The model, two baselines (recency rule; logistic regression on log RFM) and their metrics on the
holdout are logged to MLflow with plots, and the model is registered as the challenger of its
project's name (:func:`training.registry.registered_name`) with its provenance: the fingerprint of
``tables.before(DATE)`` and the latest timestamp in it (``sendwise.trained_through``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from features.build import build_features, to_timestamp
from features.config import FeatureConfig
from features.errors import InputError
from features.schema import AS_OF, CUSTOMER_ID
from features.tables import Tables
from features.training_set import DEFAULT_HORIZON_DAYS, Target, build_training_set, monthly_as_of_dates
from features.validate import ContractError
from training import plots
from training.baselines import recency_rule
from training.classifier_choice import candidate_kinds, choose_classifier, fit_candidates, fit_kind
from training.clv import DEFAULT_HORIZON_DAYS as DEFAULT_CLV_HORIZON_DAYS
from training.clv import fit_clv_features
from training.design import FEATURE_CONFIG, feature_columns
from training.fitting import choose_params
from training.holdout_scores import log_holdout_scores
from training.linear import LogRFMModel
from training.metrics import classification_metrics
from training.model import XGBOOST, ModelBundle
from training.registry import PROJECT_TAG, ModelProvenance, log_and_register, registered_name
from training.scoring import CLV_KEY
from training.tracking import configure_tracking, experiment_id, git_commit

MODEL_NAMES = {Target.CHURNED: "churn", Target.PURCHASED: "propensity"}
MIN_CLASS_ROWS = {"train": 50, "valid": 20, "calibration": 20, "holdout": 20}


class NotEnoughDataError(ContractError):
    """Too few rows or positives to train or evaluate."""


@dataclass
class Folds:
    train: pd.DataFrame
    valid: pd.DataFrame
    calibration: pd.DataFrame
    holdout: pd.DataFrame
    holdout_as_of: datetime
    fit_dates: list[datetime] = field(default_factory=list)


@dataclass
class TrainResult:
    name: str
    version: str
    run_id: str
    bundle: ModelBundle
    metrics: dict[str, float]  # holdout metrics of the model
    baselines: dict[str, dict[str, float]]  # holdout metrics per baseline
    holdout_as_of: datetime
    holdout_rows: int
    positive_rates: dict[str, float]  # share of positives per fold (train, valid, calibration, holdout)
    model_choice: str  # the kind shipped and why (training.classifier_choice)
    clv: str | None = None  # churn: the CLV model fitted (its horizon), or why there is none


def check_rows(name: str, frame: pd.DataFrame, label: str) -> None:
    positives = int(frame[label].sum())
    negatives = len(frame) - positives
    need = MIN_CLASS_ROWS[name]
    if positives < need or negatives < need:
        raise NotEnoughDataError(
            f"not enough data in the {name} fold: {len(frame):,} rows with {positives:,} positive and "
            f"{negatives:,} negative '{label}' labels; at least {need} of each are needed. Use data with more "
            f"customers or history, or an earlier --as-of."
        )


def holdout_frame(tables: Tables, target: Target, as_of: datetime, horizon: int,
                  observed_until: datetime | None = None, config: FeatureConfig | None = None) -> pd.DataFrame:
    """Features at ``as_of`` from rows before it, labelled from the full ``tables``."""
    labelled = build_training_set(tables, [as_of], target, horizon, config, observed_until=observed_until).frame
    features = build_features(tables.before(as_of), as_of, config)
    return features.merge(labelled[["customer_id", target.value]], on="customer_id", how="inner")


def make_folds(tables: Tables, target: Target, as_of: datetime, horizon: int, periods: int,
               config: FeatureConfig | None = None) -> Folds:
    start, end = tables.time_range()
    if start is None or not start < as_of <= end + timedelta(microseconds=1):
        raise ContractError(f"--as-of {as_of} is outside the data, which runs from {start} to {end}.")
    cut = tables.before(as_of)
    if end >= as_of + timedelta(days=horizon):
        holdout_as_of = as_of
        holdout = holdout_frame(tables, target, as_of, horizon, config=config)
    else:
        latest = monthly_as_of_dates(cut, horizon, periods=1, observed_until=as_of)
        if not latest:
            raise NotEnoughDataError(f"the data before {as_of} is too short for a {horizon}-day label window.")
        holdout_as_of = latest[-1]
        holdout = holdout_frame(cut, target, holdout_as_of, horizon, observed_until=as_of, config=config)
    last_fit = pd.Timestamp(holdout_as_of - timedelta(days=horizon)).floor("D")
    dates = monthly_as_of_dates(cut, horizon, periods=periods, last=last_fit)
    if len(dates) < 3:
        raise NotEnoughDataError(
            f"need at least 3 monthly as_of dates whose {horizon}-day label windows close by {holdout_as_of} "
            f"(training, validation, calibration); the data before {as_of} gives {len(dates)}."
        )
    stacked = build_training_set(cut, dates, target, horizon, config, observed_until=as_of).frame
    by_date = stacked.groupby(AS_OF)
    frames = {pd.Timestamp(d): f for d, f in by_date}
    calibration = frames[pd.Timestamp(dates[-1])]
    valid = frames[pd.Timestamp(dates[-2])]
    train = pd.concat([frames[pd.Timestamp(d)] for d in dates[:-2]], ignore_index=True)
    folds = Folds(train, valid, calibration, holdout, holdout_as_of, dates)
    for name in ("train", "valid", "calibration", "holdout"):
        check_rows(name, getattr(folds, name), target.value)
    return folds


def fit_clv_model(tables: Tables, at: datetime, config: FeatureConfig, horizon_days: int) -> tuple[dict | None, str]:
    """The CLV model on every customer's features at ``at`` (from the rows before it), as the churn
    model keeps it (:meth:`ClvModel.to_dict`), and a line for the output; None with the reason when
    the shop's data cannot fit one (too few repeat buyers, a spend model without a mean)."""
    try:
        model = fit_clv_features(build_features(tables, at, config), at, horizon_days)
    except InputError as exc:
        return None, f"no CLV model: {exc}"
    return model.to_dict(), (f"CLV: BG/NBD and Gamma-Gamma on {model.customers:,} customers "
                             f"({model.repeat_buyers:,} repeat buyers), {model.report['horizon']}")


def _log_plots(y: np.ndarray, scores: dict[str, np.ndarray], calibrated: dict[str, np.ndarray],
               bundle: ModelBundle, holdout: pd.DataFrame) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        paths = [
            plots.roc_plot(y, scores, d / "roc.png"),
            plots.pr_plot(y, scores, d / "precision_recall.png"),
            plots.calibration_plot(y, calibrated, d / "calibration.png"),
            plots.gains_plot(y, scores, d / "cumulative_gains.png"),
            plots.importance_plot(bundle.columns, bundle.contributions(holdout, exact=True),
                                  d / "feature_importance.png"),
        ]
        for path in paths:
            mlflow.log_artifact(str(path), artifact_path="plots")


def train_classifier(
    tables: Tables,
    target: Target | str,
    as_of: object,
    horizon_days: int | None = None,
    trials: int = 0,
    periods: int = 12,
    random_state: int = 0,
    mlruns: Path | str | None = None,
    progress: Callable[[str], None] | None = None,
    feature_config: FeatureConfig | None = None,
    project: str | None = None,
    data_source: str | None = None,
    run_params: Mapping[str, object] | None = None,
    clv_horizon_days: int = DEFAULT_CLV_HORIZON_DAYS,
) -> TrainResult:
    """Fit every candidate kind, tune XGBoost (``trials`` > 0), calibrate, ship the kind that ranks the
    calibration fold best, evaluate it against baselines, log and register it as ``project``'s model
    (none: today's global names). Features use ``feature_config`` (default:
    :meth:`FeatureConfig.current`); the model records it, so that scoring and serving build the same
    columns. A churn model carries the CLV model over ``clv_horizon_days`` (shorter for a short
    history) fitted on the features of every customer of ``tables`` at ``as_of``, when the data can
    fit one. ``data_source`` (the data directory, when known) is recorded on the version, and
    ``run_params`` (say, how ``tables`` were sampled from a larger shop) with the run's parameters."""
    target = Target(target)
    name = registered_name(MODEL_NAMES[target], project)  # a bad project name fails before any work
    feature_config = feature_config or FeatureConfig.current()
    horizon = horizon_days if horizon_days is not None else DEFAULT_HORIZON_DAYS[target]
    date = to_timestamp(as_of)
    say = progress or (lambda _: None)
    say("building training sets")
    folds = make_folds(tables, target, date, horizon, periods, feature_config)
    label = target.value
    columns = feature_columns(folds.train, feature_config)
    y = {n: getattr(folds, n)[label].to_numpy(int) for n in ("train", "valid", "calibration", "holdout")}

    configure_tracking(mlruns)
    mlflow.set_experiment(experiment_id=experiment_id(f"sendwise-{MODEL_NAMES[target]}", mlruns))
    with mlflow.start_run(run_name=f"{name}-{date:%Y-%m-%d}") as run:
        def log_trial(trial, trial_params, loss):
            with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
                mlflow.log_params({k: v for k, v in trial_params.items() if k in trial.params})
                mlflow.set_tag("state", "pruned" if loss is None else "complete")
                if loss is not None:
                    mlflow.log_metric("valid_log_loss", loss)
            say(f"trial {trial.number + 1}/{trials}")
        params = choose_params(folds.train, folds.valid, columns, label, trials, random_state, log_trial)
        meta = {"trained_as_of": date.isoformat(), "holdout_as_of": folds.holdout_as_of.isoformat(),
                FEATURE_CONFIG: feature_config.to_dict()}

        def fit(kind: str) -> ModelBundle:
            say(f"fitting {kind}")
            return fit_kind(kind, folds.train, folds.valid, folds.calibration, columns, label, horizon,
                            params if kind == XGBOOST else {}, random_state, dict(meta))
        bundles, failed = fit_candidates(candidate_kinds(label), fit)
        choice = choose_classifier(bundles, folds.calibration, label, failed)
        bundle = bundles[choice.kind]
        validation_auc = {f"validation_roc_auc_{kind}": auc for kind, auc in choice.roc_auc.items()}
        bundle.meta.update({"model_choice": choice.reason, **validation_auc})
        clv_line, clv_params = None, {}
        if target is Target.CHURNED:
            say("fitting the CLV model")
            clv, clv_line = fit_clv_model(tables, date, feature_config, clv_horizon_days)
            clv_params = {"clv_horizon_days": clv_horizon_days, "clv": clv_line}
            if clv is not None:
                bundle.meta[CLV_KEY] = clv

        say("evaluating")
        raw_holdout = bundle.raw_proba(folds.holdout)
        p_holdout = bundle.predict_proba(folds.holdout)
        fitted = pd.concat([folds.train, folds.valid, folds.calibration], ignore_index=True)
        logistic = LogRFMModel.fit(fitted, fitted[label].to_numpy(int))
        baseline_scores = {
            "recency_rule": recency_rule(folds.holdout, churn=target is Target.CHURNED),
            "logistic_log_rfm": logistic.predict_proba(folds.holdout),
        }
        metrics = classification_metrics(y["holdout"], p_holdout)
        baselines = {k: classification_metrics(y["holdout"], v) for k, v in baseline_scores.items()}
        bundle.meta["holdout_metrics"] = metrics

        mlflow.log_params({
            "target": label, "horizon_days": horizon, "as_of": date.isoformat(),
            "holdout_as_of": folds.holdout_as_of.isoformat(), "trials": trials, "random_state": random_state,
            "fit_as_of_dates": ",".join(f"{d:%Y-%m-%d}" for d in folds.fit_dates),
            "rows_train": len(folds.train), "rows_valid": len(folds.valid),
            "rows_calibration": len(folds.calibration), "rows_holdout": len(folds.holdout),
            "calibration": bundle.calibrator.method, "model_kind": bundle.kind,
            **({"best_round": bundle.booster.num_boosted_rounds()} if bundle.kind == XGBOOST else {}),
            **clv_params,
            **{f"xgb_{k}": v for k, v in params.items()}, **(run_params or {}),
        })
        provenance = ModelProvenance.of_data(tables.before(date), project, data_source)
        mlflow.set_tags({"git_commit": git_commit(), "data_fingerprint": provenance.data_fingerprint,
                         "holdout_as_of": folds.holdout_as_of.isoformat(), "target": label,
                         "model_choice": choice.reason, PROJECT_TAG: project or ""})
        mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items() if np.isfinite(v)})
        for base, values in baselines.items():
            mlflow.log_metrics({f"baseline_{base}_{k}": v for k, v in values.items() if np.isfinite(v)})
        mlflow.log_metrics(validation_auc)
        if "valid_log_loss" in bundle.meta:  # XGBoost's, at its early-stopping round
            mlflow.log_metric("valid_log_loss", bundle.meta["valid_log_loss"])
        positive_rates = {n: float(y[n].mean()) for n in ("train", "valid", "calibration", "holdout")}
        mlflow.log_metrics({f"positive_rate_{n}": v for n, v in positive_rates.items()})
        mlflow.log_text(json.dumps(columns, indent=1), "features.json")
        _log_plots(y["holdout"], {"model": p_holdout, **baseline_scores},
                   {"model (calibrated)": p_holdout, "model (raw)": raw_holdout}, bundle, folds.holdout)
        log_holdout_scores(pd.DataFrame({CUSTOMER_ID: folds.holdout[CUSTOMER_ID].to_numpy(), "label": y["holdout"],
                                         "probability": p_holdout}))
        say("registering")
        version = log_and_register(bundle, name, folds.holdout.head(100), p_holdout[:100], provenance.tags())
        bundle.meta.update(provenance.meta() | {"version": version})
    return TrainResult(name, version, run.info.run_id, bundle, metrics, baselines, folds.holdout_as_of,
                       len(folds.holdout), positive_rates, choice.reason, clv_line)
