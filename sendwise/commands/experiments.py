"""``sendwise experiments ...``: validate, assign, simulate, analyze, power. Every command but power
reads the project (``--project DIR``, or the current directory's): its experiments file; analyze also
its data, time zone, exposure log (state/exposures.jsonl), reports folder and MLflow store. Options
given win."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer
from rich.table import Table as RichTable

from experiments import power as power_calc
from experiments.analysis import analyze
from experiments.attribution import EXPERIMENT, VARIANT, attribute, experiment_exposures, recipients
from experiments.plots import power_curve_plot
from experiments.report import print_readout, write_report
from experiments.sequential import DEFAULT_TUNING
from experiments.simulate import PlantedEffect, simulate_experiment
from features.errors import InputError, NotFoundError
from features.io import refuse_overwriting_inputs, write_parquet
from features.schema import CUSTOMER_ID
from sendwise.commands.common import DataOption, ProjectOption, Resolved, resolve
from sendwise.console import console, iso, reports_user_errors
from sendwise.pipeline import load
from serving.assignment import assign_many
from serving.experiment_config import DEFAULT_CONFIG, load_experiments
from serving.exposures import read_exposures

experiments_app = typer.Typer(help="A/B experiments: define, assign, analyze, plan.", no_args_is_help=True)

Config = Annotated[Path | None, typer.Option(
    "--config", metavar="FILE", show_default=False,
    help=f"Experiments YAML file (default: the project's experiments, else {DEFAULT_CONFIG}).")]
Name = Annotated[str, typer.Argument(help="Experiment name (as in the experiments file).")]
DEFAULT_EXPOSURES = Path("exposures/exposures.jsonl")
DEFAULT_REPORTS = Path("reports")


def _config(run: Resolved, config: Path | None) -> Path:
    """--config, else the project's experiments file, else ./experiments.yaml."""
    return run.path(config, lambda s: s.experiments, DEFAULT_CONFIG)


@experiments_app.command("validate")
@reports_user_errors
def validate(config: Config = None, project: ProjectOption = None) -> None:
    """Check the experiments file (weights, names, dates, overlaps) and list its experiments."""
    config = _config(resolve(project), config)
    experiments = load_experiments(config)
    table = RichTable(title=f"{config}: {len(experiments.experiments)} experiments")
    for col in ("name", "start", "end", "variants (weight)", "primary metric", "guardrails"):
        table.add_column(col)
    for e in experiments.experiments:
        table.add_row(e.name, iso(e.start), iso(e.end),
                      ", ".join(f"{v.name} ({v.weight:g})" for v in e.variants), e.primary_metric.value,
                      ", ".join(m.value for m in e.guardrail_metrics))
    console.print(table)


def _read_customer_ids(path: Path) -> list[str]:
    if not path.exists():
        raise NotFoundError(f"customers file {path} does not exist")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix in (".csv", ".gz"):
        frame = pd.read_csv(path, dtype=str)
    else:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if CUSTOMER_ID not in frame:
        raise InputError(f"{path}: no '{CUSTOMER_ID}' column (columns: {', '.join(map(str, frame.columns))})")
    return frame[CUSTOMER_ID].dropna().astype(str).tolist()


@experiments_app.command("assign")
@reports_user_errors
def assign_command(name: Name,
                   customers: Annotated[Path, typer.Option(
                       metavar="FILE", help="CSV/Parquet with customer_id, or one id per line.")],
                   out: Annotated[Path | None, typer.Option(
                       metavar="FILE", help="Write customer_id, experiment, variant (.csv/.parquet).")] = None,
                   config: Config = None, project: ProjectOption = None) -> None:
    """Assign customers to the experiment's variants (the same hashing as the service)."""
    config = _config(resolve(project), config)
    if out is not None:
        refuse_overwriting_inputs(out, [customers, config])
    experiment = load_experiments(config).get(name)
    ids = _read_customer_ids(customers)
    variants = assign_many(experiment, ids)
    if out is not None:
        frame = pd.DataFrame({CUSTOMER_ID: ids, EXPERIMENT: name, VARIANT: variants})
        write_parquet(frame, out) if out.suffix == ".parquet" else frame.to_csv(out, index=False)
    counts = Counter(variants)
    table = RichTable(title=f"{name}: {len(ids):,} customers")
    for col in ("variant", "weight", "customers", "share"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for v in experiment.variants:
        table.add_row(v.name, f"{v.weight:g}", f"{counts[v.name]:,}", f"{counts[v.name] / max(1, len(ids)):.2%}")
    console.print(table)
    if out is not None:
        console.print(f"written to {out}")


def _parse_effects(specs: list[str]) -> dict[str, PlantedEffect]:
    fields = set(PlantedEffect.__dataclass_fields__)
    effects: dict[str, dict[str, float]] = {}
    for spec in specs:
        try:
            variant, rest = spec.split(":", 1)
            field, value = rest.split("=", 1)
            amount = float(value)
        except ValueError as exc:
            raise InputError(f"--effect '{spec}': expected VARIANT:FIELD=RELATIVE_CHANGE, e.g. b:conversion_rate=0.1") from exc
        if field not in fields:
            raise InputError(f"--effect '{spec}': field must be one of {sorted(fields)}; got '{field}'")
        effects.setdefault(variant, {})[field] = amount
    return {v: PlantedEffect(**f) for v, f in effects.items()}


@experiments_app.command("simulate")
@reports_user_errors
def simulate_command(name: Name,
                     out: Annotated[Path, typer.Option(metavar="DIR", help="Directory for the generated shop tables.")],
                     customers: Annotated[int, typer.Option(help="Customers, one send each.")] = 50_000,
                     effect: Annotated[list[str] | None, typer.Option(
                         metavar="VARIANT:FIELD=CHANGE",
                         help="Planted effect, a relative change (repeatable), e.g. b:conversion_rate=0.1.")] = None,
                     exposures: Annotated[Path | None, typer.Option(
                         metavar="FILE", help="Exposure log to write (default: OUT/exposures.jsonl).")] = None,
                     seed: Annotated[int, typer.Option(help="Random seed.")] = 0, config: Config = None,
                     project: ProjectOption = None) -> None:
    """Generate a shop and an exposure log for the experiment, with planted effects (for trying the analysis)."""
    config = _config(resolve(project), config)
    refuse_overwriting_inputs(out, [config])
    refuse_overwriting_inputs(exposures or out / "exposures.jsonl", [config], option="--exposures")
    experiment = load_experiments(config).get(name)
    effects = _parse_effects(effect or [])
    unknown = set(effects) - {v.name for v in experiment.variants}
    if unknown:
        raise InputError(f"--effect names variants the experiment does not have: {sorted(unknown)}")
    simulated = simulate_experiment(experiment, customers, effects, seed=seed)
    log = exposures or out / "exposures.jsonl"
    simulated.write(out, log)
    console.print(f"{customers:,} customers with planted effects {effects or 'none (A/A)'}: tables in {out}, exposures in {log}")


@experiments_app.command("analyze")
@reports_user_errors
def analyze_command(name: Name, data: DataOption = None,
                    exposures: Annotated[Path | None, typer.Option(
                        metavar="FILE", show_default=False,
                        help=f"The service's exposure log (default: the project's state/exposures.jsonl, else "
                             f"{DEFAULT_EXPOSURES}).")] = None,
                    report: Annotated[Path | None, typer.Option(
                        metavar="FILE", show_default=False,
                        help="HTML report (default: the project's reports/NAME.html, else reports/NAME.html).")
                    ] = None,
                    sequential: Annotated[bool, typer.Option(
                        "--sequential", help="Always-valid intervals and p-values (safe to peek).")] = False,
                    tuning: Annotated[float, typer.Option(help="Sequential: sample size where the intervals are tightest.")] = DEFAULT_TUNING,
                    mlflow_run: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log the read-out to MLflow.")] = True,
                    config: Config = None, project: ProjectOption = None) -> None:
    """Attribute outcomes to the experiment's exposures and compare the variants."""
    run = resolve(project, data=data)
    data, config = run.need_data(), _config(run, config)
    exposures = exposures or (run.project.exposure_log if run.project else DEFAULT_EXPOSURES)
    html = report or (run.project.reports if run.project else DEFAULT_REPORTS) / f"{name}.html"
    refuse_overwriting_inputs(html, [exposures, config], data_dir=data, option="--report")
    experiment = load_experiments(config).get(name)
    if not exposures.exists():
        raise NotFoundError(f"exposure log {exposures} does not exist; pass --exposures FILE")
    who = recipients(experiment_exposures(read_exposures(exposures), experiment), experiment)
    tables = load(data, run.rejects, quiet=True, timezone=run.timezone)
    end = tables.time_range()[1]
    outcomes = attribute(who.frame, tables, experiment.attribution_window_days, experiment.pre_period_days)
    readout = analyze(outcomes, experiment, who, use_sequential=sequential, sequential_tuning=tuning)
    if end is not None:
        open_windows = int((outcomes["exposed_at"] + pd.Timedelta(days=experiment.attribution_window_days) > end).sum())
        if open_windows:
            readout.warnings.append(f"{open_windows:,} recipients' attribution windows run past the end of the data "
                                    f"({iso(end)}); their outcomes may still come in")
    print_readout(readout, console)
    if mlflow_run:
        run.use_tracking()
    run_id = write_report(readout, outcomes, html, log_to_mlflow=mlflow_run, mlruns=run.mlruns)
    console.print(f"report: {html}" + (f"; MLflow run {run_id}" if run_id else ""))


@experiments_app.command("power")
@reports_user_errors
def power_command(baseline: Annotated[float, typer.Option(help="Control rate, e.g. 0.04 for 4 % conversion (with --std: the control's mean).")],
                  mde: Annotated[float, typer.Option(help="Minimum detectable effect (relative unless --absolute).")],
                  absolute: Annotated[bool, typer.Option(
                      "--absolute", help="MDE in rate points (or the mean's units), not relative.")] = False,
                  alpha: Annotated[float, typer.Option(help="False-positive rate of the test.")] = 0.05,
                  power: Annotated[float, typer.Option(help="Chance to detect an effect of the MDE.")] = 0.8,
                  variants: Annotated[int, typer.Option(help="Variants incl. control.")] = 2,
                  std: Annotated[float | None, typer.Option(help="A mean metric (revenue per recipient) with this standard deviation per recipient, instead of a rate.")] = None,
                  recipients: Annotated[int | None, typer.Option(help="Also give the power reached with this many recipients per variant (rates).")] = None,
                  plot: Annotated[Path | None, typer.Option(
                      metavar="FILE", help="PNG of sample size against MDE (rates).")] = None) -> None:
    """Recipients needed per variant to detect an effect: two-proportion z-test for rates, or a
    two-sample test of means with --std."""
    if std is not None:
        if recipients is not None or plot is not None:
            raise InputError("--recipients and --plot work with rates; leave them out with --std")
        delta = mde if absolute else baseline * mde
        n = power_calc.sample_size_means(std, delta, alpha=alpha, power=power)
        console.print(f"mean {baseline:g} -> {baseline + delta:g} (standard deviation {std:g}), alpha {alpha}, power "
                      f"{power:.0%}: [bold]{n:,} recipients per variant[/], {n * variants:,} in all for {variants} variants")
        return
    n = power_calc.sample_size_proportions(baseline, mde, relative=not absolute, alpha=alpha, power=power)
    target = power_calc.treatment_rate(baseline, mde, relative=not absolute)
    console.print(f"baseline {baseline:.4%} -> {target:.4%} ({'absolute' if absolute else 'relative'} effect {mde:g}), "
                  f"alpha {alpha}, power {power:.0%}: [bold]{n:,} recipients per variant[/], {n * variants:,} in all "
                  f"for {variants} variants")
    if recipients is not None:
        reached = power_calc.power_proportions(recipients, baseline, mde, relative=not absolute, alpha=alpha)
        console.print(f"with {recipients:,} recipients per variant the power is {reached:.1%}")
    if variants > 2:
        console.print("(with more than one treatment, Holm's correction needs somewhat more: use alpha / (variants - 1) "
                      "for a conservative plan)")
    if plot is not None:
        relative = np.linspace(0.02, 0.5, 49)  # the curve is drawn over relative effects
        sizes = [power_calc.sample_size_proportions(baseline, r, True, alpha, power) for r in relative]
        power_curve_plot(baseline, relative, sizes, plot)
        console.print(f"plot: {plot}")
