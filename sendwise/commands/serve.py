"""``sendwise serve``: checks that the service can start, then runs ``bentoml serve``."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from features.io import load_data_dir
from sendwise.commands.data import DataDir
from sendwise.console import console, errors, reports_user_errors
from serving.config import ServeConfig
from serving.consent import ConsentRule
from serving.experiment_config import load_experiments
from serving.policy import Policy
from serving.state import NotReadyError, catalog_coverage, load_champions, safe_catalog
from serving.variants import variant_aliases

ROOT = Path(__file__).resolve().parents[2]  # the project root (bentofile.yaml)


def preflight(config: ServeConfig) -> None:
    """Fail fast, naming what is missing or broken and the command that fixes it (the champions are
    loaded once here: a crash-looping server worker would only repeat the error)."""
    if not config.data.is_dir():
        raise NotReadyError(f"data directory {config.data} does not exist.")
    Policy.load(config.policy) if config.policy else Policy.load()  # a bad policy file fails here
    if config.snapshot is not None and not config.snapshot.exists():
        raise NotReadyError(f"feature snapshot {config.snapshot} does not exist. Create it with "
                            f"`sendwise features snapshot --data {config.data} --out {config.snapshot}`.")
    # a missing alias, an artifact that is missing or corrupt, or a model of another project fails here
    champions = load_champions(config)
    for warning in champions.warnings:  # models of other data (without a project), foreign ones allowed
        errors.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    # The data as the service will read it: a wrong column or type fails here (ContractError), and
    # rejected rows go to the state directory, never into the data directory.
    tables, report = load_data_dir(config.data, config.rejects_dir)
    for warning in report.warnings:
        errors.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if report.rejects_dir is not None:
        errors.print(f"[yellow]warning:[/] {report.rejected:,} rejected row(s) written to {report.rejects_dir}",
                     highlight=False, soft_wrap=True)
    if (message := safe_catalog(tables).message) is not None:
        errors.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    if (message := catalog_coverage(champions.recommender, tables)) is not None:
        errors.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    tables.con.close()
    if config.experiments is not None:
        now = datetime.now(UTC).replace(tzinfo=None)
        for experiment in load_experiments(config.experiments).experiments:  # a bad file fails here
            for v in (v for v in experiment.variants if experiment.end > now):
                try:
                    if v.policy is not None:
                        Policy.load(v.policy)
                    if v.model_aliases:
                        for warning in load_champions(config, variant_aliases(config, v)).warnings:
                            errors.print(f"[yellow]warning:[/] experiment '{experiment.name}', variant '{v.name}': "
                                         f"{warning}", highlight=False, soft_wrap=True)
                except (NotReadyError, OSError, ValueError) as exc:
                    raise NotReadyError(f"experiment '{experiment.name}', variant '{v.name}': {exc}") from exc


@reports_user_errors
def serve(
    data: DataDir,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
    snapshot: Annotated[Path | None, typer.Option(help="Feature snapshot (default: built from --data).")] = None,
    mlruns: Annotated[Path, typer.Option(help="MLflow store root (MLFLOW_TRACKING_URI overrides).")] = Path("mlruns"),
    exposure_log: Annotated[Path, typer.Option(help="Append-only exposure log.")] = Path("exposures/exposures.jsonl"),
    state_dir: Annotated[Path | None, typer.Option(
        help="Where the service writes besides the exposure log (the data's rejected rows); the data "
             "directory is only read. Default: state/ next to the exposure log.")] = None,
    policy: Annotated[Path | None, typer.Option(help="Next-best-action policy YAML (default: serving/policy.yaml).")] = None,
    currency: Annotated[str, typer.Option(help="ISO code of the catalog's prices.")] = "GBP",
    experiments: Annotated[Path | None, typer.Option(
        help="Experiments YAML: /next_best_action serves the running experiment's variants.")] = None,
    consent: Annotated[ConsentRule, typer.Option(
        help="recorded: email only customers with consent on record; unless-refused: all but recorded "
             "refusals and unsubscribes (for shops that keep consent upstream).")] = ConsentRule.RECORDED,
) -> None:
    """Start the send-time service (BentoML) with the champion models."""
    # Options given here, the rest (SENDWISE_API_KEY) from the environment, as the server will read it.
    config = ServeConfig.from_env(data=data, snapshot=snapshot, mlruns=mlruns, exposure_log=exposure_log,
                                  state_dir=state_dir, policy=policy, currency=currency, experiments=experiments,
                                  consent=consent)
    preflight(config)
    console.print(f"serving on http://{host}:{port} (API docs: /docs); models from {mlruns}"
                  + ("; every route but the health checks needs header x-api-key" if config.api_key else ""))
    env = os.environ | config.to_env() | {"BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:Sendwise", "--host", host, "--port", str(port)]
    sys.stdout.flush()
    os.chdir(ROOT)
    # bentoml takes this process's place, so that a signal sent to `sendwise serve` (a process manager
    # stopping it) reaches the server's supervisor instead of leaving it running without a parent
    os.execve(sys.executable, command, env)
