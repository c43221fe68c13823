"""``sendwise train recommender``, ``sendwise evaluate recommender`` and ``sendwise recommend``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table as RichTable

from features.build import to_timestamp
from features.errors import InputError
from features.io import refuse_overwriting_inputs, write_parquet
from features.schema import CUSTOMER_ID
from sendwise.commands.data import DataDir, RejectsDir, date_option, load
from sendwise.console import console, progress_bar, reports_user_errors
from training.recommenders.batch import check_k, recommend_all
from training.recommenders.evaluation import evaluate
from training.recommenders.metrics import METRICS, SOURCE
from training.recommenders.models import MODELS, TUNABLE, make_recommender
from training.recommenders.rules import BusinessRules
from training.recommenders.store import REGISTERED_NAME, load_alias
from training.recommenders.train import DEFAULT_WINDOW_DAYS, train_recommender
from training.registry import CHAMPION, alias_version
from training.tracking import configure_tracking

evaluate_app = typer.Typer(help="Evaluate models on a time-based holdout.", no_args_is_help=True)

AsOf = Annotated[datetime, date_option("--as-of", help="Fit on rows before this date.")]
K = Annotated[int, typer.Option("--k", help="Length of each list (1-100).")]
HINT = "Train one first: `sendwise train recommender --data DIR --as-of DATE`."


def print_metrics(table: pd.DataFrame, k: int, title: str) -> None:
    out = RichTable(title=title, title_justify="left")
    for col in ("model", "variant", "customers", *(f"{m}@{k}" for m in METRICS), "coverage"):
        out.add_column(col, justify="left" if col in ("model", "variant") else "right")
    for row in table.sort_values(["variant", "ndcg"], ascending=[False, False]).itertuples(index=False):
        r = row._asdict()
        out.add_row(r["model"], r["variant"], f"{r['customers']:,}", *(f"{r[m]:.4f}" for m in METRICS),
                    f"{r['coverage']:.3f}")
    console.print(out)


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
    tables = load(data, rejects, quiet=True)
    with progress_bar() as bar:
        task = bar.add_task("training", total=None)
        result = train_recommender(tables, as_of, model, trials, k, window,
                                   progress=lambda what: bar.update(task, description=what))
    print_metrics(result.table, k, f"recommender v{result.version} ({model}): holdout "
                                   f"{result.holdout.as_of:%Y-%m-%d} to {result.holdout.until:%Y-%m-%d}")
    console.print(f"parameters: {result.params}")
    console.print(f"MLflow run {result.run_id}; registered as {REGISTERED_NAME} v{result.version} (alias challenger)")


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
    if out.suffix not in (".csv", ".parquet"):
        raise InputError(f"--out must end in .csv or .parquet; got {out.name}")
    refuse_overwriting_inputs(out, data_dir=data)
    check_k(k)
    rules = BusinessRules(exclude_purchased=not include_purchased, repurchase_after_days=repurchase_after,
                          exclude_out_of_stock=not include_out_of_stock, require_image=require_image,
                          categories=tuple(category or ()), exclude_categories=tuple(exclude_category or ()),
                          min_price=min_price, max_price=max_price, max_per_category=max_per_category)
    tables = load(data, rejects, quiet=True)
    configure_tracking()
    model, version = load_alias(alias, HINT)
    with progress_bar() as bar:
        task = bar.add_task("recommending", total=None)
        recs = recommend_all(tables, to_timestamp(as_of), model, k, rules,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
    if out.suffix == ".csv":
        out.parent.mkdir(parents=True, exist_ok=True)
        recs.to_csv(out, index=False)
    else:
        write_parquet(recs, out)
    customers = recs[CUSTOMER_ID].nunique()
    console.print(f"{len(recs):,} recommendations for {customers:,} customers with {REGISTERED_NAME} v{version} "
                  f"({model.kind}); written to {out}")
    console.print(recs[SOURCE].value_counts().rename("rows").to_frame().T.to_string())

