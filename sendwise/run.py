"""``sendwise run``: the retraining job a scheduler calls, for one project.

import (when the project has an export) -> validate -> for each model: backtest on the latest fully
labelled window, champion and challenger on the same holdout, refit on everything, register, promote
when the challenger wins (:mod:`training.retrain`) -> new serving snapshot -> run report (HTML under
``DIR/reports`` and an MLflow run in ``sendwise-runs``).

A lock (``DIR/state/run.lock``) keeps two runs of a project from overlapping. Models are registered
and aliases moved only at the end of their own step and the snapshot is replaced atomically, so a
step that fails leaves the last good models and snapshot in place. Exit codes (:class:`ExitCode`).
"""

from __future__ import annotations

import fcntl
import os
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path

from features.config import FeatureConfig
from features.errors import InputError, SendwiseError
from features.importers import run_import
from features.snapshot import write_snapshot
from features.training_set import Target, data_end
from sendwise.console import console, errors, progress_bar, shown_uri
from sendwise.pipeline import load, print_emailable, print_import
from sendwise.project import Project
from sendwise.run_report import write_report
from training.registry import CHAMPION, alias_version, registered_name
from training.retrain import RetrainOutcome, RetrainSettings, retrain_classifier, retrain_recommender


class ExitCode(IntEnum):
    """What ``sendwise run`` tells a scheduler."""

    OK = 0  # every model retrained (promoted or kept), snapshot and report written
    BUG = 1  # an unexpected error (a traceback): please report it
    USER_ERROR = 2  # settings or data to fix (the message says what); nothing was changed
    LOCKED = 3  # another run of this project holds the lock: try again later
    MODEL_FAILED = 4  # a model's step failed (the report says why): its champion stays; the rest was done


class RunLockedError(SendwiseError):
    """Another ``sendwise run`` of the project is running."""


@contextmanager
def run_lock(project: Project) -> Iterator[None]:
    """Hold ``DIR/state/run.lock`` for the run (released by the OS however the process ends)."""
    project.state.mkdir(parents=True, exist_ok=True)
    path = project.state / "run.lock"
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunLockedError(f"another `sendwise run` of project {project.name} is running ({holder}); "
                                 f"it holds {path}. Try again when it has finished.") from None
        except OSError as exc:  # a file system without locks (some network and FUSE mounts)
            raise InputError(f"cannot lock {path} ({exc.strerror}): put the project's state/ folder on a local "
                             "file system, where two runs can be kept from overlapping.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()


@dataclass
class ModelFailure:
    model: str
    error: str


@dataclass
class RunResult:
    project: str
    started: datetime
    seconds: float
    data_end: datetime
    customers: int
    outcomes: list[RetrainOutcome] = field(default_factory=list)
    failures: list[ModelFailure] = field(default_factory=list)
    emailable: str = ""
    snapshot: Path | None = None
    report: Path | None = None

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.MODEL_FAILED if self.failures else ExitCode.OK


def retrain_settings(project: Project) -> RetrainSettings:
    run = project.settings.run
    return RetrainSettings(project=project.name, margin=run.margin, trials=run.trials, periods=run.periods,
                           churn_horizon_days=run.churn_horizon_days,
                           propensity_horizon_days=run.propensity_horizon_days, recommender=run.recommender,
                           k=run.k, window_days=run.window_days, clv_horizon_days=run.clv_horizon_days,
                           data_source=str(project.data))


def run_project(project: Project) -> RunResult:
    """The whole job under the project's lock; returns what happened (see :class:`RunResult`)."""
    started, clock = datetime.now(UTC), time.perf_counter()
    with run_lock(project):
        uri = project.use_tracking()
        console.print(f"project {project.name} ({project.root}); MLflow store {shown_uri(uri)}")
        if project.settings.import_ is not None:
            source = project.settings.import_
            console.rule(f"import {source.format.value} export {project.path(source.source)}")
            print_import(run_import(source.format, project.path(source.source), project.data,
                                    mapping=source.map or None, timezone=project.settings.timezone,
                                    encoding=source.encoding))
        console.rule("validate")
        tables = load(project.data, project.rejects, timezone=project.settings.timezone, event_log=project.event_source)
        end = data_end(tables)
        config = FeatureConfig.load(project.path(project.settings.feature_config)) \
            if project.settings.feature_config else FeatureConfig.current()
        settings = retrain_settings(project)
        result = RunResult(project.name, started, 0.0, end, 0)
        def champion(model: str) -> str | None:
            return alias_version(registered_name(model, project.name), CHAMPION)

        steps = [("churn", lambda say: retrain_classifier(tables, Target.CHURNED, settings, config, say)),
                 ("propensity", lambda say: retrain_classifier(tables, Target.PURCHASED, settings, config, say)),
                 ("recommender", lambda say: retrain_recommender(tables, settings, say))]
        for name, step in steps:
            console.rule(f"{name}: backtest, compare with the champion, refit through {end:%Y-%m-%dT%H:%M:%S}")
            try:
                with progress_bar() as bar:
                    task = bar.add_task(name, total=None)
                    outcome = step(lambda what, task=task, bar=bar, name=name: bar.update(
                        task, description=f"{name}: {what}"))
            except Exception as exc:  # noqa: BLE001 - one model's failure (a store outage, a bug) stops only its step
                if not isinstance(exc, SendwiseError):
                    errors.print_exception(max_frames=8)
                message = str(exc).rstrip(".") if isinstance(exc, SendwiseError) else f"{type(exc).__name__}: {exc}"
                kept = "no champion yet" if champion(name) is None else f"its champion v{champion(name)} stays"
                errors.print(f"[bold red]{name} failed:[/] {message}. {kept.capitalize()}.", highlight=False,
                             soft_wrap=True)
                result.failures.append(ModelFailure(name, f"{message}. {kept.capitalize()}."))
                continue
            print_outcome(outcome)
            result.outcomes.append(outcome)
        console.rule("serving snapshot")
        features, when = write_snapshot(tables, project.snapshot, config=config)
        result.customers, result.snapshot = len(features), project.snapshot
        console.print(f"snapshot of {len(features):,} customers at {when:%Y-%m-%dT%H:%M:%S} written to {project.snapshot}")
        result.emailable = print_emailable(tables, features, project.settings.consent)
        result.seconds = time.perf_counter() - clock
        result.report = write_report(project, result)
        console.print(f"report: {result.report} (and the MLflow experiment sendwise-runs); "
                      f"plots and runs: `mlflow ui --backend-store-uri {shlex.quote(shown_uri(uri))}`")
        tables.con.close()
    return result


def print_outcome(outcome: RetrainOutcome) -> None:
    for line in outcome.protocol.splitlines()[1:]:  # what was chosen and why (the first line: the protocol)
        console.print(line, highlight=False, soft_wrap=True)
    metric = outcome.metric
    figures = ", ".join(f"{who} {values[metric]:.4f}" for who, values in outcome.figures.items() if metric in values)
    console.print(f"backtest at {outcome.backtest_as_of:%Y-%m-%d} ({outcome.holdout_rows:,} customers), "
                  f"{metric}: {figures}")
    verdict = "[green]promoted[/]" if outcome.promoted else "[yellow]kept the champion's recipe[/]"
    now = (f"champion now v{outcome.champion_after}" if outcome.promoted
           else f"refitted as v{outcome.champion_after}, the champion")
    console.print(f"{outcome.registered_name} v{outcome.challenger_version} registered (challenger); {verdict}: "
                  f"{outcome.reason}; {now}, trained through {outcome.trained_through:%Y-%m-%dT%H:%M:%S}")
    for warning in outcome.warnings:
        errors.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
