"""The report of a ``sendwise run``: a self-contained HTML page (plots inline) under ``DIR/reports``
and a run in the MLflow experiment ``sendwise-runs`` (tag ``sendwise.project``) holding the same
figures as metrics and the page as an artifact. Each model's figures are shown next to the last
run's."""

from __future__ import annotations

import base64
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
import mlflow
from mlflow.tracking import MlflowClient

from features.io import atomic_write
from training.tracking import experiment_id, git_commit

if TYPE_CHECKING:
    from sendwise.project import Project
    from sendwise.run import RunResult

TEMPLATES = Path(__file__).with_name("templates")
MLFLOW_EXPERIMENT = "sendwise-runs"
PROJECT_TAG = "sendwise.project"
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined)


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def previous_figures(project: str) -> dict[str, dict[str, float]]:
    """The challengers' backtest figures of the project's last run, per model (empty for a first run)."""
    experiment = MlflowClient().get_experiment_by_name(MLFLOW_EXPERIMENT)
    if experiment is None:
        return {}
    runs = MlflowClient().search_runs([experiment.experiment_id], f"tags.`{PROJECT_TAG}` = '{project}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return {}
    figures: dict[str, dict[str, float]] = {}
    for key, value in runs[0].data.metrics.items():
        model, _, metric = key.partition(".challenger.")
        if metric:
            figures.setdefault(model, {})[metric] = value
    return figures


def write_report(project: Project, result: RunResult) -> Path:
    """Write the HTML report and log the MLflow run; returns the report's path."""
    previous = previous_figures(result.project)
    stamp = f"{result.started:%Y%m%dT%H%M%SZ}"
    path = project.reports / f"run-{stamp}.html"
    html = _ENV.get_template("run_report.html.j2").render(
        result=result, previous=previous, started=f"{result.started:%Y-%m-%dT%H:%M:%SZ}",
        data_end=f"{result.data_end:%Y-%m-%dT%H:%M:%S}", fmt=_fmt, iso=lambda d: f"{d:%Y-%m-%dT%H:%M:%S}",
        images={o.model: [(name, base64.b64encode(png).decode()) for name, png in o.plots.items()]
                for o in result.outcomes})
    atomic_write(path, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    mlflow.set_experiment(experiment_id=experiment_id(MLFLOW_EXPERIMENT))
    with mlflow.start_run(run_name=f"{result.project}-{stamp}"):
        mlflow.set_tags({PROJECT_TAG: result.project, "git_commit": git_commit(),
                         "failed": ",".join(f.model for f in result.failures)})
        mlflow.log_params({"data_end": result.data_end.isoformat(), "customers": result.customers})
        mlflow.log_metric("seconds", result.seconds)
        for o in result.outcomes:
            for who, values in o.figures.items():
                mlflow.log_metrics({f"{o.model}.{who.replace(' ', '_')}.{m}": v for m, v in values.items()
                                    if v is not None and math.isfinite(v)})
            mlflow.log_metric(f"{o.model}.promoted", float(o.promoted))
            mlflow.set_tag(f"{o.model}.reason", o.reason[:5000])
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / path.name
            copy.write_text(html, encoding="utf-8")
            mlflow.log_artifact(str(copy), artifact_path="report")
    return path
