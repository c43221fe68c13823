"""``sendwise train ...``, ``sendwise models ...`` and ``sendwise score``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from sendwise import pipeline
from sendwise.commands.data import DataDir, FeatureConfigOption, RejectsDir, date_option
from sendwise.console import reports_user_errors
from training.promotion import DEFAULT_MARGIN

train_app = typer.Typer(help="Train models (tracked in MLflow, registered as challenger).", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: list versions, promote challengers.", no_args_is_help=True)

AsOf = Annotated[datetime, date_option("--as-of", help="Train on rows before this date; evaluate at it.")]
Trials = Annotated[int, typer.Option(help="Optuna trials (0: default parameters).")]
Periods = Annotated[int, typer.Option(help="Monthly as_of dates to stack at most.")]


@train_app.command("churn")
@reports_user_errors
def train_churn(data: DataDir, as_of: AsOf,
                horizon: Annotated[int, typer.Option(help="Churn = no order within this many days.")] = 90,
                trials: Trials = 0, periods: Periods = 12, rejects: RejectsDir = None,
                settings: FeatureConfigOption = None) -> None:
    """Churn model (no order in the next HORIZON days) for customers with an order."""
    pipeline.train_churn(data, as_of, horizon, trials, periods, rejects, settings)


@train_app.command("propensity")
@reports_user_errors
def train_propensity(data: DataDir, as_of: AsOf,
                     horizon: Annotated[int, typer.Option(help="Purchase within this many days.")] = 30,
                     trials: Trials = 0, periods: Periods = 12, rejects: RejectsDir = None,
                     settings: FeatureConfigOption = None) -> None:
    """Purchase-propensity model (an order in the next HORIZON days) for every known customer."""
    pipeline.train_propensity(data, as_of, horizon, trials, periods, rejects, settings)


@models_app.command("list")
@reports_user_errors
def list_models(names: Annotated[list[str] | None, typer.Argument(help="Model names.")] = None) -> None:
    """Versions, aliases and headline holdout metrics."""
    pipeline.list_models(names)


@models_app.command("promote")
@reports_user_errors
def promote_model(name: Annotated[str, typer.Argument(help="Model name: churn, propensity or recommender.")],
                  margin: Annotated[float, typer.Option(help="Gain required (ROC-AUC; NDCG@10 for the recommender).")] = DEFAULT_MARGIN,
                  force: Annotated[bool, typer.Option(
                      help="Promote whatever the comparison says, or without one when none is possible.")] = False,
                  data: Annotated[Path | None, typer.Option(help="Evaluate both on a fresh holdout from this data.")] = None,
                  as_of: Annotated[datetime | None, date_option("--as-of", help="Date of the fresh holdout.")] = None,
                  ) -> None:
    """Move `champion` to the challenger only if it beats the champion on the same holdout, by the
    margin and with a paired-bootstrap interval of the difference above zero (above the margin when
    the margin is negative). --force promotes whatever the comparison says, and also when no
    comparison is possible (different holdouts, no logged holdout scores, different --k)."""
    pipeline.promote_model(name, margin, force, data, as_of)


@reports_user_errors
def score(data: DataDir, as_of: Annotated[datetime, date_option("--as-of", help="Score from rows before this.")],
          out: Annotated[Path, typer.Option("--out", help="Output .csv or .parquet.")],
          rejects: RejectsDir = None) -> None:
    """Churn and purchase probabilities, risk band, segment, stage and top 3 reasons per customer."""
    pipeline.score(data, as_of, out, rejects)
