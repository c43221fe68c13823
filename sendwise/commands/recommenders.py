"""``sendwise train recommender``, ``sendwise evaluate recommender`` and ``sendwise recommend``. Each
reads the project (``--project DIR``, or the current directory's): its data, time zone, MLflow store,
model name (``<name>.recommender``) and ``run:`` settings; options given win."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from features.build import to_timestamp
from sendwise import pipeline
from sendwise.commands.common import (
    DataOption,
    EngineOption,
    ProjectOption,
    RejectsOption,
    date_option,
    resolve,
)
from sendwise.commands.models import AllowForeign
from sendwise.console import iso, progress_bar, reports_user_errors
from sendwise.pipeline import load, print_metrics
from training.recommenders.evaluation import evaluate
from training.recommenders.models import MODELS, TUNABLE, make_recommender
from training.recommenders.rules import BusinessRules
from training.recommenders.selection import AUTO
from training.recommenders.store import REGISTERED_NAME, load_alias
from training.recommenders.train import DEFAULT_WINDOW_DAYS
from training.registry import CHAMPION, alias_version

# the kinds train recommender tunes and registers (auto: chosen on the validation fold), shown in --help
RecommenderKind = StrEnum("RecommenderKind", {kind.upper(): kind for kind in (AUTO, *TUNABLE)})

evaluate_app = typer.Typer(help="Evaluate models on a time-based holdout.", no_args_is_help=True)

AsOf = Annotated[datetime, date_option("--as-of", help="Fit on rows before this date.")]
K = Annotated[int | None, typer.Option(
    "--k", show_default=False, help="Length of each list, 1-100 (default: the project's run.k, else 10).")]


@reports_user_errors
def train_recommender_command(
    as_of: AsOf,
    model: Annotated[RecommenderKind | None, typer.Option(
        "--model", metavar="MODEL", show_default=False,
        help=f"{', '.join((AUTO, *TUNABLE))}. auto compares every candidate on the validation fold and takes the "
             "best, or a simpler one it does not beat significantly (default: the project's run.recommender, "
             "else auto).")
    ] = None,
    trials: Annotated[int | None, typer.Option(
        show_default=False, help="Optuna trials on the fold before the holdout (default: the project's "
                                 "run.trials, else 0: default parameters).")] = None,
    k: K = None,
    window: Annotated[int | None, typer.Option(
        show_default=False, help="Days in the tuning fold, and the holdout when the data stops at --as-of "
                                 f"(default: the project's run.window_days, else {DEFAULT_WINDOW_DAYS}).")] = None,
    data: DataOption = None, rejects: RejectsOption = None, engine: EngineOption = None,
    project: ProjectOption = None,
) -> None:
    """Recommender on rows before --as-of; tuned, evaluated, logged to MLflow and registered (a
    project's as <name>.recommender). With Spark, fitted on this machine from a sample of
    spark.sample_customers customers, each with their whole history."""
    run = resolve(project, data=data, rejects=rejects)
    data = run.need_data()
    run.use_tracking()
    kind = run.pick(model.value if model else None, lambda s: s.run.recommender, AUTO)
    pipeline.train_recommender(data, as_of, kind, run.pick(trials, lambda s: s.run.trials, 0),
                               run.pick(k, lambda s: s.run.k, 10),
                               run.pick(window, lambda s: s.run.window_days, DEFAULT_WINDOW_DAYS), run.rejects,
                               run.name, timezone=run.timezone, mlruns=run.mlruns, engine=run.engine(engine),
                               spark=run.spark)


@evaluate_app.command("recommender")
@reports_user_errors
def evaluate_recommender(
    as_of: AsOf, k: K = None,
    until: Annotated[datetime | None, date_option(help="End of the truth window (default: end of the data).",
                                                  future=True)] = None,
    data: DataOption = None, rejects: RejectsOption = None, project: ProjectOption = None,
) -> None:
    """Every model (defaults), the registered champion's parameters (the project's champion, with a
    project) and the baselines on one holdout."""
    run = resolve(project, data=data, rejects=rejects)
    tables = load(run.need_data(), run.rejects, quiet=True, timezone=run.timezone)
    k = run.pick(k, lambda s: s.run.k, 10)
    models = {kind: make_recommender(kind) for kind in MODELS}
    run.use_tracking()
    if alias_version(REGISTERED_NAME, CHAMPION, run.name) is not None:
        champion, version = load_alias(CHAMPION, project=run.name)
        models[f"champion v{version} ({champion.kind})"] = make_recommender(champion.kind, **champion.params)
    with progress_bar() as bar:
        task = bar.add_task("evaluating", total=len(models))
        table = evaluate(tables, to_timestamp(as_of), models, k, to_timestamp(until) if until else None,
                         progress=lambda name: bar.update(task, description=name, advance=1))
    print_metrics(table, k, f"Holdout from {iso(as_of)}: fitted before it, truth = products bought after it")


@reports_user_errors
def recommend(
    out: Annotated[Path, typer.Option("--out", metavar="PATH", help=(
        "Output .csv or .parquet; with --engine spark, a path without a suffix is a directory of Parquet "
        "files written by Spark."))],
    as_of: Annotated[datetime | None, date_option(
        "--as-of", help="Recommend from rows before this (default: just after the data's last row).")] = None,
    k: K = None,
    alias: Annotated[str, typer.Option(help="Registry alias of the model to use.")] = CHAMPION,
    include_purchased: Annotated[bool, typer.Option(
        "--include-purchased", help="Allow products the customer already bought.")] = False,
    repurchase_after: Annotated[int | None, typer.Option(
        metavar="DAYS", help="Days after which a bought product may come back (replenishment).")] = None,
    include_out_of_stock: Annotated[bool, typer.Option(
        "--include-out-of-stock", help="Allow products marked out of stock.")] = False,
    require_image: Annotated[bool, typer.Option("--require-image", help="Only products with an image URL.")] = False,
    category: Annotated[list[str] | None, typer.Option(help="Only this category (repeatable).")] = None,
    exclude_category: Annotated[list[str] | None, typer.Option(help="Never this category (repeatable).")] = None,
    min_price: Annotated[float | None, typer.Option(help="Lowest catalog price.")] = None,
    max_price: Annotated[float | None, typer.Option(help="Highest catalog price.")] = None,
    max_per_category: Annotated[int | None, typer.Option(help="At most this many per category.")] = None,
    allow_foreign_models: AllowForeign = False,
    data: DataOption = None, rejects: RejectsOption = None, engine: EngineOption = None,
    project: ProjectOption = None,
) -> None:
    """Top-k products for every known customer with the champion and the business rules."""
    rules = BusinessRules(exclude_purchased=not include_purchased, repurchase_after_days=repurchase_after,
                          exclude_out_of_stock=not include_out_of_stock, require_image=require_image,
                          categories=tuple(category or ()), exclude_categories=tuple(exclude_category or ()),
                          min_price=min_price, max_price=max_price, max_per_category=max_per_category)
    run = resolve(project, data=data, rejects=rejects)
    data = run.need_data()
    run.use_tracking()
    pipeline.recommend(data, as_of, out, run.pick(k, lambda s: s.run.k, 10), alias, rules, run.rejects, run.name,
                       allow_foreign_models, timezone=run.timezone, mlruns=run.mlruns, engine=run.engine(engine),
                       spark=run.spark)
