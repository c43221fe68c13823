"""``sendwise train recommender``, ``sendwise evaluate recommender`` and ``sendwise recommend``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from features.build import to_timestamp
from sendwise import pipeline
from sendwise.commands.data import DataDir, RejectsDir, date_option
from sendwise.console import progress_bar, reports_user_errors
from sendwise.pipeline import load, print_metrics
from training.recommenders.evaluation import evaluate
from training.recommenders.models import MODELS, TUNABLE, make_recommender
from training.recommenders.rules import BusinessRules
from training.recommenders.store import REGISTERED_NAME, load_alias
from training.recommenders.train import DEFAULT_WINDOW_DAYS
from training.registry import CHAMPION, alias_version
from training.tracking import configure_tracking

evaluate_app = typer.Typer(help="Evaluate models on a time-based holdout.", no_args_is_help=True)

AsOf = Annotated[datetime, date_option("--as-of", help="Fit on rows before this date.")]
K = Annotated[int, typer.Option("--k", help="Length of each list (1-100).")]


@reports_user_errors
def train_recommender_command(
    data: DataDir, as_of: AsOf,
    model: Annotated[str, typer.Option("--model", help=f"One of {', '.join(TUNABLE)}.")] = "als",
    trials: Annotated[int, typer.Option(help="Optuna trials on the fold before the holdout (0: defaults).")] = 0,
    k: K = 10,
    window: Annotated[int, typer.Option(help="Days in the tuning fold (and the holdout when the data "
                                             "stops at --as-of).")] = DEFAULT_WINDOW_DAYS,
    rejects: RejectsDir = None,
) -> None:
    """Recommender on rows before --as-of; tuned, evaluated, logged to MLflow and registered."""
    pipeline.train_recommender(data, as_of, model, trials, k, window, rejects)


@evaluate_app.command("recommender")
@reports_user_errors
def evaluate_recommender(
    data: DataDir, as_of: AsOf, k: K = 10,
    until: Annotated[datetime | None, date_option(help="End of the truth window (default: end of the data).",
                                                  future=True)] = None,
    rejects: RejectsDir = None,
) -> None:
    """Every model (defaults), the registered champion's parameters and the baselines on one holdout."""
    tables = load(data, rejects, quiet=True)
    models = {kind: make_recommender(kind) for kind in MODELS}
    configure_tracking()
    if alias_version(REGISTERED_NAME, CHAMPION) is not None:
        champion, version = load_alias(CHAMPION)
        models[f"champion v{version} ({champion.kind})"] = make_recommender(champion.kind, **champion.params)
    with progress_bar() as bar:
        task = bar.add_task("evaluating", total=len(models))
        table = evaluate(tables, to_timestamp(as_of), models, k, to_timestamp(until) if until else None,
                         progress=lambda name: bar.update(task, description=name, advance=1))
    print_metrics(table, k, f"Holdout from {as_of}: fitted before it, truth = products bought after it")


@reports_user_errors
def recommend(
    data: DataDir, as_of: Annotated[datetime, date_option("--as-of", help="Recommend from rows before this.")],
    out: Annotated[Path, typer.Option("--out", help="Output .csv or .parquet.")],
    k: K = 10,
    alias: Annotated[str, typer.Option(help="Registry alias of the model to use.")] = CHAMPION,
    include_purchased: Annotated[bool, typer.Option(help="Allow products the customer already bought.")] = False,
    repurchase_after: Annotated[int | None, typer.Option(
        help="Days after which a bought product may come back (replenishment).")] = None,
    include_out_of_stock: Annotated[bool, typer.Option(help="Allow products marked out of stock.")] = False,
    require_image: Annotated[bool, typer.Option(help="Only products with an image URL.")] = False,
    category: Annotated[list[str] | None, typer.Option(help="Only this category (repeatable).")] = None,
    exclude_category: Annotated[list[str] | None, typer.Option(help="Never this category (repeatable).")] = None,
    min_price: Annotated[float | None, typer.Option(help="Lowest catalog price.")] = None,
    max_price: Annotated[float | None, typer.Option(help="Highest catalog price.")] = None,
    max_per_category: Annotated[int | None, typer.Option(help="At most this many per category.")] = None,
    rejects: RejectsDir = None,
) -> None:
    """Top-k products for every known customer with the champion and the business rules."""
    rules = BusinessRules(exclude_purchased=not include_purchased, repurchase_after_days=repurchase_after,
                          exclude_out_of_stock=not include_out_of_stock, require_image=require_image,
                          categories=tuple(category or ()), exclude_categories=tuple(exclude_category or ()),
                          min_price=min_price, max_price=max_price, max_per_category=max_per_category)
    pipeline.recommend(data, as_of, out, k, alias, rules, rejects)
