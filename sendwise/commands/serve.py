"""``sendwise serve``: checks that the service can start, then runs ``bentoml serve``."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from features.build import build_features
from features.errors import InputError
from features.io import load_data_dir
from features.snapshot import read_snapshot, snapshot_as_of
from sendwise.commands.common import ProjectOption
from sendwise.console import console, errors, reports_user_errors, shown_uri
from sendwise.pipeline import print_emailable
from sendwise.project import apply_feature_settings, find_project, serve_settings
from serving.clock import ClockMode
from serving.config import ServeConfig
from serving.consent import ConsentRule
from serving.experiment_config import load_experiments
from serving.policy import Policy
from serving.segments import SegmentSet
from serving.state import (
    NotReadyError,
    catalog_coverage,
    check_snapshot,
    load_champions,
    safe_catalog,
    serving_feature_config,
)
from serving.variants import variant_aliases
from training.tracking import configure_tracking

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
    tables, report = load_data_dir(config.data, config.rejects_dir, timezone=config.timezone,
                                   event_log=config.event_source)
    for warning in report.warnings:
        errors.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if report.rejects_dir is not None:
        errors.print(f"[yellow]warning:[/] {report.rejected:,} rejected row(s) written to {report.rejects_dir}",
                     highlight=False, soft_wrap=True)
    if (message := safe_catalog(tables, config.product_url).message) is not None:
        errors.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    if (message := catalog_coverage(champions.recommender, tables)) is not None:
        errors.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    # the models, the snapshot and the policy's signals must share one set of feature settings
    settings = serving_feature_config([champions.churn, champions.propensity])
    features = read_snapshot(config.snapshot)[0] if config.snapshot else build_features(tables, snapshot_as_of(tables))
    check_snapshot(features, settings, config)
    print_emailable(tables, features, config.consent)
    tables.con.close()
    config.open_event_log().close()  # an online store that is down, or would lose events, fails here
    if config.segments is not None:
        SegmentSet.load(config.segments, settings)  # a bad file fails here, naming the segment and field
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
    project: ProjectOption = None,
    data: Annotated[Path | None, typer.Option(help="Directory of contract tables (default: the project's).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: the project's, else 3000).")] = None,
    host: Annotated[str | None, typer.Option(
        help="Interface to bind; 0.0.0.0 exposes it to the network (default: the project's, else 127.0.0.1).")] = None,
    snapshot: Annotated[Path | None, typer.Option(
        help="Feature snapshot (default: the project's state/snapshot.parquet; without a project, built from --data).")
    ] = None,
    mlruns: Annotated[Path | None, typer.Option(
        help="MLflow store root (default: the project's mlruns/, else mlruns; MLFLOW_TRACKING_URI overrides).")] = None,
    exposure_log: Annotated[Path | None, typer.Option(
        help="Append-only exposure log (default: the project's state/exposures.jsonl, else exposures.jsonl in "
             "the folder exposures).")
    ] = None,
    state_dir: Annotated[Path | None, typer.Option(
        help="Where the service writes besides the exposure log (the data's rejected rows); the data "
             "directory is only read. Default: the project's state/, else state/ next to the exposure log.")] = None,
    policy: Annotated[Path | None, typer.Option(help="Next-best-action policy YAML (default: serving/policy.yaml).")] = None,
    currency: Annotated[str | None, typer.Option(help="ISO code of the catalog's prices (default: GBP).")] = None,
    experiments: Annotated[Path | None, typer.Option(
        help="Experiments YAML: /next_best_action serves the running experiment's variants.")] = None,
    consent: Annotated[ConsentRule | None, typer.Option(
        help="recorded: email only customers with consent on record; unless-refused: all but recorded "
             "refusals and unsubscribes (for shops that keep consent upstream). Default: recorded.")] = None,
    allow_foreign_models: Annotated[bool, typer.Option(
        "--allow-foreign-models", help="Serve models registered for another project.")] = False,
    clock: Annotated[ClockMode | None, typer.Option(
        help="The clock events and windows use: wall, data (the data's end plus the time since the start, for "
             "historical data) or auto (data when the data ended over 30 days ago). Default: the project's, else auto."
    )] = None,
    segments: Annotated[Path | None, typer.Option(
        help="Segments and delayed triggers YAML (docs/segments.md). Default: the project's segments.yaml.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes (default: the project's, else 1); more than one needs an online store.")] = None,
    online_store: Annotated[str | None, typer.Option(
        help="Redis URL of the online store, where the event log is shared by every worker and replica "
             "(default: SENDWISE_ONLINE_STORE, else the project's; none: the file log, one worker).")] = None,
) -> None:
    """Start the send-time service (BentoML) with the champion models (of the project, when there is one)."""
    found = find_project(project)
    flags = {"data": data, "snapshot": snapshot, "mlruns": mlruns, "exposure_log": exposure_log,
             "state_dir": state_dir, "policy": policy, "currency": currency, "experiments": experiments,
             "consent": consent, "allow_foreign_models": allow_foreign_models or None, "clock": clock,
             "segments": segments, "workers": workers, "online_store": online_store}
    given = {k: v for k, v in flags.items() if v is not None}
    if found is None:
        if data is None:
            raise InputError("no data: pass --data DIR, or --project DIR (or run in a folder holding sendwise.yaml).")
        config = ServeConfig.from_env(**given)
    else:
        if snapshot is None and not found.snapshot.exists():
            raise NotReadyError(f"project {found.name} has no serving snapshot yet ({found.snapshot}): run "
                                f"`sendwise run --project {found.root}` first; it trains the models and writes it.")
        apply_feature_settings(found)
        config = ServeConfig.from_env(**(serve_settings(found) | given))
        port = port or found.settings.serve.port
        host = host or found.settings.serve.host
    port, host = port or 3000, host or "127.0.0.1"
    preflight(config)
    store = configure_tracking(config.mlruns)
    console.print(f"serving on http://{host}:{port} (API docs: /docs); models "
                  + (f"of project {config.project} " if config.project else "") + f"from {shown_uri(store)}"
                  + ("; every route but the health checks needs header x-api-key" if config.api_key else ""))
    if host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        errors.print(f"[yellow]warning:[/] {host} exposes the service beyond this machine without an API key: set "
                     "SENDWISE_API_KEY so that every route but the health checks needs it.", highlight=False,
                     soft_wrap=True)
    # the store this process found (the project's tracking_uri included) is the server's
    env = os.environ | config.to_env() | {"MLFLOW_TRACKING_URI": store, "BENTOML_DO_NOT_TRACK": "true",
                                          "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:Sendwise", "--host", host, "--port", str(port)]
    sys.stdout.flush()
    os.chdir(ROOT)
    # bentoml takes this process's place, so that a signal sent to `sendwise serve` (a process manager
    # stopping it) reaches the server's supervisor instead of leaving it running without a parent
    os.execve(sys.executable, command, env)
