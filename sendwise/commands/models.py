"""``sendwise train ...``, ``sendwise models ...`` and ``sendwise score``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table as RichTable

from features.errors import InputError
from features.io import refuse_overwriting_inputs, write_parquet
from features.training_set import Target
from sendwise.commands.data import DataDir, FeatureConfigOption, RejectsDir, date_option, feature_config, load
from sendwise.console import console, progress_bar, reports_user_errors
from training.promotion import DEFAULT_MARGIN, promote
from training.registry import CHAMPION, list_versions, load_bundle
from training.scoring import score_customers
from training.tracking import configure_tracking
from training.train import TrainResult, train_classifier

train_app = typer.Typer(help="Train models (tracked in MLflow, registered as challenger).", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: list versions, promote challengers.", no_args_is_help=True)

AsOf = Annotated[datetime, date_option("--as-of", help="Train on rows before this date; evaluate at it.")]
Trials = Annotated[int, typer.Option(help="Optuna trials (0: default parameters).")]
Periods = Annotated[int, typer.Option(help="Monthly as_of dates to stack at most.")]
# model name -> (headline holdout metric, logged baseline metric shown next to it)
HEADLINE_COLUMNS = {"churn": ("roc_auc", "baseline_logistic_log_rfm_roc_auc"),
                    "propensity": ("roc_auc", "baseline_logistic_log_rfm_roc_auc"),
                    "recommender": ("ndcg_at_10", "baseline_popular_ndcg_at_10")}
TRAIN_HINT = "Train one first: `sendwise train churn --data DIR --as-of DATE` (and `train propensity`)."


def print_training(result: TrainResult) -> None:
    table = RichTable(title=f"{result.name} v{result.version}: holdout at {result.holdout_as_of:%Y-%m-%d} "
                            f"({result.holdout_rows:,} customers)", title_justify="left")
    columns = ["roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_at_10", "capture_at_10", "lift_at_20"]
    table.add_column("model")
    for col in columns:
        table.add_column(col, justify="right")
    rows = {"xgboost (calibrated)": result.metrics} | result.baselines
    for name, metrics in rows.items():
        table.add_row(name, *(f"{metrics[c]:.3f}" if metrics[c] == metrics[c] else "-" for c in columns))
    console.print(table)
    console.print("positives per fold (probabilities are calibrated to the calibration fold's): " + ", ".join(
        f"{fold} {rate:.1%}" for fold, rate in result.positive_rates.items()))
    console.print(f"MLflow run {result.run_id}; registered as {result.name} v{result.version} (alias challenger)")


def _train(target: Target, data: Path, as_of: datetime, horizon: int | None, trials: int, periods: int,
           rejects: Path | None, settings: Path | None = None) -> None:
    config = feature_config(settings)
    tables = load(data, rejects, quiet=True)
    with progress_bar() as bar:
        task = bar.add_task("training", total=None)
        result = train_classifier(tables, target, as_of, horizon, trials, periods,
                                  progress=lambda what: bar.update(task, description=what), feature_config=config)
    print_training(result)


@train_app.command("churn")
@reports_user_errors
def train_churn(data: DataDir, as_of: AsOf,
                horizon: Annotated[int, typer.Option(help="Churn = no order within this many days.")] = 90,
                trials: Trials = 0, periods: Periods = 12, rejects: RejectsDir = None,
                settings: FeatureConfigOption = None) -> None:
    """Churn model (no order in the next HORIZON days) for customers with an order."""
    _train(Target.CHURNED, data, as_of, horizon, trials, periods, rejects, settings)


@train_app.command("propensity")
@reports_user_errors
def train_propensity(data: DataDir, as_of: AsOf,
                     horizon: Annotated[int, typer.Option(help="Purchase within this many days.")] = 30,
                     trials: Trials = 0, periods: Periods = 12, rejects: RejectsDir = None,
                     settings: FeatureConfigOption = None) -> None:
    """Purchase-propensity model (an order in the next HORIZON days) for every known customer."""
    _train(Target.PURCHASED, data, as_of, horizon, trials, periods, rejects, settings)


@models_app.command("list")
@reports_user_errors
def list_models(names: Annotated[list[str] | None, typer.Argument(help="Model names.")] = None) -> None:
    """Versions, aliases and headline holdout metrics."""
    configure_tracking()
    table = RichTable(title="Registered models", title_justify="left")
    for col in ("model", "version", "aliases", "created", "holdout", "metric", "holdout value", "baseline",
                "baseline value"):
        table.add_column(col)
    for name in names or list(HEADLINE_COLUMNS):
        metric, baseline = HEADLINE_COLUMNS.get(name, HEADLINE_COLUMNS["churn"])
        for row in list_versions(name):
            m = row.metrics
            table.add_row(name, row.version, ", ".join(sorted(row.aliases)),
                          f"{datetime.fromtimestamp(row.created / 1000):%Y-%m-%d %H:%M}",
                          row.tags.get("holdout_as_of", "")[:10], metric,
                          f"{m[f'holdout_{metric}']:.4f}" if f"holdout_{metric}" in m else "-",
                          baseline.split("_", 1)[1].rsplit(f"_{metric}", 1)[0],
                          f"{m[baseline]:.4f}" if baseline in m else "-")
    console.print(table)


@models_app.command("promote")
@reports_user_errors
def promote_model(name: Annotated[str, typer.Argument(help="Model name: churn, propensity or recommender.")],
                  margin: Annotated[float, typer.Option(help="Gain required (ROC-AUC; NDCG@10 for the recommender).")] = DEFAULT_MARGIN,
                  force: Annotated[bool, typer.Option(help="Promote whatever the comparison says.")] = False,
                  data: Annotated[Path | None, typer.Option(help="Evaluate both on a fresh holdout from this data.")] = None,
                  as_of: Annotated[datetime | None, date_option("--as-of", help="Date of the fresh holdout.")] = None,
                  ) -> None:
    """Move `champion` to the challenger only if it beats the champion on the same holdout, by the
    margin and with a paired-bootstrap interval of the difference above zero (above the margin when
    the margin is negative)."""
    configure_tracking()
    tables = load(data, quiet=True) if data else None
    decision = promote(name, margin, force, tables, as_of)
    console.print(f"holdout: {decision.holdout}")
    metric = decision.comparison.metric
    console.print(f"champion v{decision.champion_version}: {metric} {decision.champion_value:.4f}; "
                  f"challenger v{decision.challenger_version}: {metric} {decision.challenger_value:.4f}")
    c = decision.comparison
    console.print(f"difference {c.difference:+.4f}, 95% paired-bootstrap interval [{c.interval[0]:+.4f}, "
                  f"{c.interval[1]:+.4f}] ({c.resamples:,} resamples of {c.rows:,} customers)")
    verdict = "[green]promoted[/]" if decision.promoted else "[yellow]not promoted[/]"
    console.print(f"{verdict}: {decision.reason}" + (" (forced)" if decision.forced and decision.promoted else ""))


@reports_user_errors
def score(data: DataDir, as_of: Annotated[datetime, date_option("--as-of", help="Score from rows before this.")],
          out: Annotated[Path, typer.Option("--out", help="Output .csv or .parquet.")],
          rejects: RejectsDir = None) -> None:
    """Churn and purchase probabilities, risk band, segment, stage and top 3 reasons per customer."""
    if out.suffix not in (".csv", ".parquet"):
        raise InputError(f"--out must end in .csv or .parquet; got {out.name}")
    refuse_overwriting_inputs(out, data_dir=data)
    tables = load(data, rejects, quiet=True)
    configure_tracking()
    churn = load_bundle("churn", CHAMPION, TRAIN_HINT)
    propensity = load_bundle("propensity", CHAMPION, TRAIN_HINT)
    with progress_bar() as bar:
        task = bar.add_task("scoring", total=None)
        scores, when = score_customers(tables, as_of, churn, propensity,
                                       progress=lambda done: bar.update(task, completed=done))
    if out.suffix == ".csv":
        out.parent.mkdir(parents=True, exist_ok=True)
        scores.to_csv(out, index=False)
    else:
        write_parquet(scores, out)
    console.print(f"{len(scores):,} customers scored at {when} with churn v{churn.meta['version']} and "
                  f"propensity v{propensity.meta['version']}; written to {out}")
    console.print(scores["churn_risk"].value_counts().rename("customers").to_frame().T.to_string())

