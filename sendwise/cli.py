"""The ``sendwise`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sendwise.commands.data import data_app, features_app
from sendwise.commands.experiments import experiments_app
from sendwise.commands.models import models_app, score, train_app
from sendwise.commands.project import init, run
from sendwise.commands.recommenders import evaluate_app, recommend, train_recommender_command
from sendwise.commands.segments import segments_app
from sendwise.commands.serve import serve
from sendwise.console import reports_user_errors
from sendwise.demo import run_demo
from sendwise.privacy.cli import privacy_app

app = typer.Typer(help="sendwise: ML for marketing email, self-hosted.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
app.command("init")(init)
app.command("run")(run)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")
train_app.command("recommender")(train_recommender_command)
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(experiments_app, name="experiments")
app.command("score")(score)
app.command("recommend")(recommend)
app.command("serve")(serve)
app.add_typer(privacy_app, name="privacy")
app.add_typer(segments_app, name="segments")


@app.command("demo")
@reports_user_errors
def demo(workdir: Annotated[Path, typer.Option(help="Where the demo writes its files.")] = Path("demo"),
         customers: Annotated[int, typer.Option(help="Customers in the generated shop.")] = 10_000,
         seed: Annotated[int, typer.Option(help="Random seed.")] = 0) -> None:
    """Run the main job end to end on a generated demo shop."""
    run_demo(workdir, customers, seed)


if __name__ == "__main__":
    app()
