"""``sendwise train ...``, ``sendwise models ...`` and ``sendwise score``. Each reads the project
(``--project DIR``, or the current directory's): its data, time zone, feature settings, MLflow store,
model names (``<name>.churn``), ``run:`` settings and consent rule; options given win."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from sendwise import pipeline
from sendwise.commands.common import (
    DataOption,
    EngineOption,
    FeatureConfigOption,
    ProjectOption,
    RejectsOption,
    date_option,
    resolve,
)
from sendwise.console import reports_user_errors
from serving.consent import ConsentRule
from training.clv import DEFAULT_HORIZON_DAYS as DEFAULT_CLV_HORIZON_DAYS
from training.promotion import DEFAULT_MARGIN

train_app = typer.Typer(help="Train models (tracked in MLflow, registered as challenger).", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: list versions, promote challengers.", no_args_is_help=True)

AsOf = Annotated[datetime, date_option("--as-of", help="Train on rows before this date; evaluate at it.")]
Trials = Annotated[int | None, typer.Option(
    show_default=False, help="Optuna trials (default: the project's run.trials, else 0: default parameters).")]
Periods = Annotated[int | None, typer.Option(
    show_default=False, help="Monthly as_of dates to stack at most (default: the project's run.periods, else 12).")]
AllowForeign = Annotated[bool, typer.Option(
    "--allow-foreign-models", help="Use a champion registered for another project (with a warning).")]


@train_app.command("churn")
@reports_user_errors
def train_churn(as_of: AsOf,
                horizon: Annotated[int | None, typer.Option(
                    show_default=False, help="Churn = no order within this many days (default: the project's "
                                             "run.churn_horizon_days, else 90).")] = None,
                trials: Trials = None, periods: Periods = None,
                clv_horizon: Annotated[int | None, typer.Option(
                    metavar="DAYS", min=7, max=3650, show_default=False,
                    help="The CLV model the churn model carries predicts over this many days (default: the "
                         f"project's run.clv_horizon_days, else {DEFAULT_CLV_HORIZON_DAYS}; 180 or 90 for a "
                         "shorter history).")] = None,
                data: DataOption = None, rejects: RejectsOption = None, settings: FeatureConfigOption = None,
                engine: EngineOption = None, project: ProjectOption = None) -> None:
    """Churn model (no order in the next HORIZON days) for customers with an order, of the kind that
    ranks the latest labelled month best, carrying the CLV model (lifetime value, next order date)
    fitted at --as-of; a project's is registered as <name>.churn."""
    run = resolve(project, data=data, rejects=rejects, feature_config=settings)
    data = run.need_data()
    run.use_tracking()
    pipeline.train_churn(data, as_of, run.pick(horizon, lambda s: s.run.churn_horizon_days, 90),
                         run.pick(trials, lambda s: s.run.trials, 0), run.pick(periods, lambda s: s.run.periods, 12),
                         run.rejects, run.feature_config, run.name, timezone=run.timezone, mlruns=run.mlruns,
                         engine=run.engine(engine), spark=run.spark,
                         clv_horizon_days=run.pick(clv_horizon, lambda s: s.run.clv_horizon_days,
                                                   DEFAULT_CLV_HORIZON_DAYS))


@train_app.command("propensity")
@reports_user_errors
def train_propensity(as_of: AsOf,
                     horizon: Annotated[int | None, typer.Option(
                         show_default=False, help="Purchase within this many days (default: the project's "
                                                  "run.propensity_horizon_days, else 30).")] = None,
                     trials: Trials = None, periods: Periods = None, data: DataOption = None,
                     rejects: RejectsOption = None, settings: FeatureConfigOption = None,
                     engine: EngineOption = None, project: ProjectOption = None) -> None:
    """Purchase-propensity model (an order in the next HORIZON days) for every known customer, of the
    kind that ranks the latest labelled month best; a project's is registered as <name>.propensity."""
    run = resolve(project, data=data, rejects=rejects, feature_config=settings)
    data = run.need_data()
    run.use_tracking()
    pipeline.train_propensity(data, as_of, run.pick(horizon, lambda s: s.run.propensity_horizon_days, 30),
                              run.pick(trials, lambda s: s.run.trials, 0),
                              run.pick(periods, lambda s: s.run.periods, 12), run.rejects, run.feature_config,
                              run.name, timezone=run.timezone, mlruns=run.mlruns, engine=run.engine(engine),
                              spark=run.spark)


@models_app.command("list")
@reports_user_errors
def list_models(names: Annotated[list[str] | None, typer.Argument(
                    show_default=False, help="Model names: churn, propensity, recommender (default: all).")] = None,
                project: ProjectOption = None) -> None:
    """Versions, aliases and headline holdout metrics (of the project's models, with a project)."""
    run = resolve(project)
    run.use_tracking()
    pipeline.list_models(names, run.name, mlruns=run.mlruns)


@models_app.command("promote")
@reports_user_errors
def promote_model(name: Annotated[str, typer.Argument(help="Model name: churn, propensity or recommender.")],
                  margin: Annotated[float | None, typer.Option(
                      show_default=False, help="Gain required (ROC-AUC; NDCG@10 for the recommender; default: "
                                               f"the project's run.margin, else {DEFAULT_MARGIN}).")] = None,
                  force: Annotated[bool, typer.Option(
                      "--force",
                      help="Promote whatever the comparison says, or without one when none is possible.")] = False,
                  data: Annotated[Path | None, typer.Option(
                      metavar="DIR", show_default=False,
                      help="Evaluate both on a fresh holdout from this data.")] = None,
                  as_of: Annotated[datetime | None, date_option("--as-of", help="Date of the fresh holdout.")] = None,
                  project: ProjectOption = None) -> None:
    """Move `champion` to the challenger only if it beats the champion on the same holdout, by the
    margin and with a paired-bootstrap interval of the difference above zero (above the margin when
    the margin is negative). --force promotes whatever the comparison says, and also when no
    comparison is possible (different holdouts, no logged holdout scores, different --k)."""
    run = resolve(project)  # --data here is a fresh holdout's, never the project's by default
    run.use_tracking()
    pipeline.promote_model(name, run.pick(margin, lambda s: s.run.margin, DEFAULT_MARGIN), force, data, as_of,
                           run.name, rejects=run.rejects, timezone=run.timezone,
                           mlruns=run.mlruns)


@reports_user_errors
def score(out: Annotated[Path, typer.Option("--out", metavar="PATH", help=(
              "Output .csv or .parquet; with --engine spark, a path without a suffix is a directory of "
              "Parquet files written by Spark."))],
          as_of: Annotated[datetime | None, date_option(
              "--as-of", help="Score from rows before this (default: just after the data's last row).")] = None,
          consent: Annotated[ConsentRule | None, typer.Option(
              metavar="RULE", show_default=False,
              help="Whom the emailable count allows: recorded (consent on record) or unless-refused (all but "
                   "recorded refusals); default: the project's consent, else recorded.")] = None,
          allow_foreign_models: AllowForeign = False,
          clv_horizon: Annotated[int | None, typer.Option(
              metavar="DAYS", min=1, max=3650, show_default=False,
              help="Lifetime value over this many days (default: the CLV model's: 365, or 180 or 90 for a "
                   "short history).")] = None,
          data: DataOption = None, rejects: RejectsOption = None, engine: EngineOption = None,
          project: ProjectOption = None) -> None:
    """Churn and purchase probabilities, risk band, segment, stage, lifetime value (expected orders and
    spend, P(alive), next order date) and top 3 reasons per customer, and how many may be emailed."""
    run = resolve(project, data=data, rejects=rejects)
    data = run.need_data()
    run.use_tracking()
    pipeline.score(data, as_of, out, run.rejects, run.name, allow_foreign_models, timezone=run.timezone,
                   mlruns=run.mlruns, consent=run.pick(consent, lambda s: s.consent, ConsentRule.RECORDED),
                   clv_horizon_days=clv_horizon, engine=run.engine(engine), spark=run.spark)
