"""An experiment read-out as rich tables, a self-contained HTML report with plots, and an MLflow run."""

from __future__ import annotations

import base64
import json
import math
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import mlflow
import pandas as pd
from rich.console import Console
from rich.table import Table

from experiments import plots
from experiments.analysis import Readout
from serving.experiment_config import Metric
from training.tracking import configure_tracking, experiment_id, git_commit

TEMPLATES = Path(__file__).with_name("templates")
MLFLOW_EXPERIMENT = "sendwise-ab"


def pct(value: float, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:+.{digits}f}%"


def fmt_value(metric: Metric, value: float) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:,.2f}" if not metric.is_rate else f"{100 * value:.2f}%"


def fmt_abs(metric: Metric, value: float) -> str:
    """An absolute lift: percentage points for rates, currency units for revenue."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+,.3f}" if not metric.is_rate else f"{100 * value:+.2f} pp"


def fmt_loss(metric: Metric, value: float) -> str:
    """An expected loss (never negative): percentage points for rates, currency units for revenue."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:,.4f}" if not metric.is_rate else f"{100 * value:.3f} pp"


def fmt_p(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def print_readout(readout: Readout, console: Console) -> None:
    experiment = readout.experiment
    variants = Table(title=f"Experiment {experiment.name}: variants")
    for col in ("variant", "recipients", "suppressed", *(m.value for m in Metric)):
        variants.add_column(col, justify="left" if col == "variant" else "right")
    for s in readout.summaries:
        variants.add_row(s.variant, f"{s.recipients:,}", f"{s.suppressed:,}", *(fmt_value(m, s.values[m]) for m in Metric))
    console.print(variants)
    kind = "always-valid" if readout.sequential else f"{1 - experiment.alpha:.0%}"
    comparisons = Table(title=f"Against control '{experiment.control_variant}' ({kind} intervals)")
    for col in ("metric", "treatment", "abs. lift [interval]", "rel. lift [interval]", "p", "Holm p",
                "P(beat)", "exp. loss"):
        comparisons.add_column(col, justify="left" if col in ("metric", "treatment") else "right")
    for r in readout.results:
        c = r.comparison
        style = ("green" if r.better() else "red") if r.significant(experiment.alpha) else None
        comparisons.add_row(
            r.metric.value + (" (CUPED)" if r.unadjusted else ""), r.treatment,
            f"{fmt_abs(r.metric, c.absolute_lift)} [{fmt_abs(r.metric, c.absolute_ci[0])}, {fmt_abs(r.metric, c.absolute_ci[1])}]",
            f"{pct(c.relative_lift)} [{pct(c.relative_ci[0])}, {pct(c.relative_ci[1])}]",
            fmt_p(c.p_value), fmt_p(c.adjusted_p_value),
            f"{r.bayes.probability_to_beat_control:.1%}", fmt_loss(r.metric, r.bayes.expected_loss_treatment), style=style)
    console.print(comparisons)
    srm = readout.srm
    console.print(f"sample-ratio check: chi-square {srm.chi2:.3f}, p = {srm.p_value:.4g} "
                  + ("[bold red]MISMATCH[/]" if srm.mismatch else "(no mismatch)"))
    if readout.cuped_theta is not None:
        console.print(f"CUPED on revenue: theta {readout.cuped_theta:.4f}, variance reduced by "
                      f"{100 * readout.cuped_variance_reduction:.1f}%")
    for t in experiment.treatments:
        console.print(f"[bold]{t}[/]: {readout.verdict(t)}")
    for w in readout.warnings:
        console.print(f"[yellow]warning:[/] {w}")


def _plots(readout: Readout, outcomes: pd.DataFrame, directory: Path) -> list[tuple[str, Path]]:
    return [
        ("Metrics by variant (95 % intervals)", plots.rates_plot(readout, outcomes, directory / "rates.png")),
        ("Relative lift", plots.lift_plot(readout, directory / "lift.png")),
        ("Lift over time", plots.lift_over_time_plot(readout, outcomes, directory / "lift_over_time.png")),
    ]


def render_html(readout: Readout, images: list[tuple[str, Path]]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    experiment = readout.experiment
    return env.get_template("report.html.j2").render(
        readout=readout, experiment=experiment, metrics=list(Metric),
        guardrails=", ".join(m.value for m in experiment.guardrail_metrics) or "none",
        weights={v.name: f"{v.weight:g}" for v in experiment.variants},
        verdicts=[(t, readout.verdict(t)) for t in experiment.treatments],
        images=[(title, base64.b64encode(path.read_bytes()).decode()) for title, path in images],
        generated=datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"), pct=pct, fmt_value=fmt_value, fmt_abs=fmt_abs,
        fmt_loss=fmt_loss, fmt_p=fmt_p)


def readout_record(readout: Readout) -> dict:
    """The read-out as plain JSON-able data (for MLflow and for scripts)."""
    return {
        "experiment": readout.experiment.name, "sequential": readout.sequential,
        "variants": [{"variant": s.variant, "recipients": s.recipients, "suppressed": s.suppressed,
                      **{m.value: s.values[m] for m in Metric}} for s in readout.summaries],
        "comparisons": [{"metric": r.metric.value, "treatment": r.treatment,
                         **asdict(r.comparison),
                         "probability_to_beat_control": r.bayes.probability_to_beat_control,
                         "expected_loss": r.bayes.expected_loss_treatment,
                         "significant": r.significant(readout.experiment.alpha)} for r in readout.results],
        "srm": {"chi2": readout.srm.chi2, "p_value": readout.srm.p_value, "mismatch": readout.srm.mismatch},
        "suppression_balance_p_value": readout.suppression_p_value,
        "cuped": {"theta": readout.cuped_theta, "variance_reduction": readout.cuped_variance_reduction},
        "verdicts": {t: readout.verdict(t) for t in readout.experiment.treatments},
        "warnings": readout.warnings,
    }


def write_report(readout: Readout, outcomes: pd.DataFrame, html_path: Path | str, log_to_mlflow: bool = True,
                 mlruns: Path | str | None = None) -> str | None:
    """Write the HTML report; log the read-out, plots and report to MLflow. Returns the run id."""
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        images = _plots(readout, outcomes, Path(tmp))
        html_path.write_text(render_html(readout, images))
        if not log_to_mlflow:
            return None
        configure_tracking(mlruns)
        mlflow.set_experiment(experiment_id=experiment_id(MLFLOW_EXPERIMENT, mlruns))
        experiment = readout.experiment
        with mlflow.start_run(run_name=f"{experiment.name}-readout") as run:
            mlflow.log_params({"experiment": experiment.name, "start": experiment.start.isoformat(),
                               "end": experiment.end.isoformat(), "control": experiment.control_variant,
                               "primary_metric": experiment.primary_metric.value, "alpha": experiment.alpha,
                               "attribution_window_days": experiment.attribution_window_days,
                               "sequential": readout.sequential,
                               "weights": json.dumps({v.name: v.weight for v in experiment.variants})})
            mlflow.set_tags({"git_commit": git_commit(), "kind": "ab-readout"})
            for s in readout.summaries:
                mlflow.log_metric(f"{s.variant}.recipients", s.recipients)
                mlflow.log_metrics({f"{s.variant}.{m.value}": v for m, v in s.values.items() if math.isfinite(v)})
            for r in readout.results:
                prefix = f"{r.treatment}.{r.metric.value}"
                c = r.comparison
                mlflow.log_metrics({k: v for k, v in {
                    f"{prefix}.relative_lift": c.relative_lift, f"{prefix}.absolute_lift": c.absolute_lift,
                    f"{prefix}.p_value": c.p_value,
                    f"{prefix}.probability_to_beat_control": r.bayes.probability_to_beat_control}.items()
                    if math.isfinite(v)})
            mlflow.log_metric("srm_p_value", readout.srm.p_value)
            mlflow.log_text(json.dumps(readout_record(readout), indent=1, default=str), "readout.json")
            for _, path in images:
                mlflow.log_artifact(str(path), artifact_path="plots")
            mlflow.log_artifact(str(html_path), artifact_path="report")
        return run.info.run_id
