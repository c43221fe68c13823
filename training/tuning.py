"""XGBoost fitting with early stopping, and Optuna search over its parameters."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import optuna
import xgboost as xgb

# Shallow, strongly regularised trees by default: customer behaviour drifts between the training
# as_of dates and the scoring date, and deep trees fit the older months too closely.
BASE_PARAMS: dict = {
    "objective": "binary:logistic",
    "eval_metric": "logloss",
    "tree_method": "hist",
    "eta": 0.03,
    "max_depth": 2,
    "min_child_weight": 30.0,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "lambda": 1.0,
    "nthread": 2,
}
MAX_ROUNDS = 3000
EARLY_STOPPING_ROUNDS = 100


class _PruneOnValidLoss(xgb.callback.TrainingCallback):
    """Report the validation log-loss to Optuna every 10 rounds and stop a hopeless trial."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        if epoch % 10 == 0:
            self.trial.report(evals_log["valid"]["logloss"][-1], epoch)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at round {epoch}")
        return False


def fit_booster(params: dict, train: xgb.DMatrix, valid: xgb.DMatrix,
                callbacks: list[xgb.callback.TrainingCallback] | None = None) -> xgb.Booster:
    """Fit with early stopping on the validation fold's log-loss; keeps the best round only."""
    booster = xgb.train(params, train, num_boost_round=MAX_ROUNDS, evals=[(valid, "valid")],
                        early_stopping_rounds=EARLY_STOPPING_ROUNDS, verbose_eval=False,
                        callbacks=callbacks or [])
    return booster[: booster.best_iteration + 1]


def suggest_params(trial: optuna.Trial) -> dict:
    return {
        "eta": trial.suggest_float("eta", 0.01, 0.3, log=True),
        "max_depth": trial.suggest_int("max_depth", 2, 6),
        "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 100.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.3, 1.0),
        "lambda": trial.suggest_float("lambda", 1e-3, 10.0, log=True),
        "alpha": trial.suggest_float("alpha", 1e-3, 10.0, log=True),
        "gamma": trial.suggest_float("gamma", 0.0, 5.0),
    }


def tune(train: xgb.DMatrix, valid: xgb.DMatrix, trials: int, random_state: int,
         on_trial: Callable[[optuna.Trial, dict, float | None], None] | None = None) -> dict:
    """Search ``trials`` parameter sets (TPE, median pruning) for the lowest validation log-loss.

    ``on_trial(trial, params, loss)`` is called after each trial (loss None when pruned). Returns the
    full parameter set of the best trial.
    """
    def objective(trial: optuna.Trial) -> float:
        params = BASE_PARAMS | suggest_params(trial) | {"seed": random_state}
        try:
            booster = fit_booster(params, train, valid, [_PruneOnValidLoss(trial)])
        except optuna.TrialPruned:
            if on_trial:
                on_trial(trial, params, None)
            raise
        loss = float(booster.eval(valid).split(":")[-1])
        trial.set_user_attr("best_round", booster.num_boosted_rounds())
        if on_trial:
            on_trial(trial, params, loss)
        return loss

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=random_state),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=30),
    )
    study.optimize(objective, n_trials=trials)
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise RuntimeError("every Optuna trial was pruned; nothing to refit")
    return BASE_PARAMS | study.best_params | {"seed": random_state}


def dmatrix(x: np.ndarray, y: np.ndarray | None, columns: list[str]) -> xgb.DMatrix:
    return xgb.DMatrix(x, label=y, feature_names=columns, missing=np.nan)
