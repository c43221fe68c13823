"""Experiments as configuration: one YAML file (default ``experiments.yaml``) listing experiments.

```yaml
experiments:
  - name: winback_subject            # also the hashing salt unless `salt` is given
    start: 2025-10-01                # UTC; exposures in [start, end) count
    end: 2025-10-29
    primary_metric: conversion_rate
    guardrail_metrics: [unsubscribe_rate]
    attribution_window_days: 7       # outcomes in [first exposure, + 7 days)
    variants:                        # the first is the control unless `control` names another
      - {name: control, weight: 0.5}
      - {name: new_subject, weight: 0.5, subject_line: "We saved your favourites",
         model_aliases: {recommender: challenger}, policy: policies/winback.yaml,
         content_block: hero_v2}
```

A variant's ``policy`` path is relative to the experiments file. Its ``model_aliases`` name
aliases of the service's project's models (``shop.recommender@challenger`` for project ``shop``).

Weights must sum to 1, variant names must be unique, and two experiments may not run at the same
time (a customer would be in both and their effects could not be told apart).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.errors import InputError, NotFoundError, validation_problems

DEFAULT_CONFIG = Path("experiments.yaml")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Metric(StrEnum):
    OPEN_RATE = "open_rate"
    CLICK_RATE = "click_rate"
    CONVERSION_RATE = "conversion_rate"
    UNSUBSCRIBE_RATE = "unsubscribe_rate"
    REVENUE_PER_RECIPIENT = "revenue_per_recipient"

    @property
    def is_rate(self) -> bool:
        return self is not Metric.REVENUE_PER_RECIPIENT

    @property
    def higher_is_better(self) -> bool:
        return self is not Metric.UNSUBSCRIBE_RATE


class ExperimentConfigError(InputError):
    """An experiments file that cannot be used; the message names the experiment and the field."""


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    weight: float = Field(gt=0, le=1)
    model_aliases: dict[Literal["churn", "propensity", "recommender"], str] = {}
    policy: Path | None = None
    subject_line: str | None = None
    content_block: str | None = None


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    salt: str | None = None
    start: datetime
    end: datetime
    variants: tuple[Variant, ...] = Field(min_length=2)
    control: str | None = None
    primary_metric: Metric = Metric.CONVERSION_RATE
    guardrail_metrics: tuple[Metric, ...] = (Metric.UNSUBSCRIBE_RATE,)
    attribution_window_days: int = Field(7, ge=1, le=365)
    pre_period_days: int = Field(90, ge=1, le=3650)  # the CUPED covariate: revenue in this window before exposure
    alpha: float = Field(0.05, gt=0, lt=1)

    _utc_times = field_validator("start", "end")(_utc)

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        total = sum(v.weight for v in self.variants)
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise InputError(f"variant weights sum to {total:g}; they must sum to 1")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise InputError(f"variant names must be unique; got {names}")
        if self.control is not None and self.control not in names:
            raise InputError(f"control '{self.control}' is not one of the variants {names}")
        if self.end <= self.start:
            raise InputError(f"end ({self.end}) must be after start ({self.start})")
        return self

    @property
    def hash_salt(self) -> str:
        return self.salt or self.name

    @property
    def control_variant(self) -> str:
        return self.control or self.variants[0].name

    @property
    def treatments(self) -> list[str]:
        return [v.name for v in self.variants if v.name != self.control_variant]

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise NotFoundError(f"experiment '{self.name}' has no variant '{name}'")

    def is_running(self, at: datetime) -> bool:
        return self.start <= _utc(at) < self.end


class ExperimentSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    experiments: tuple[Experiment, ...] = ()

    @model_validator(mode="after")
    def _no_overlap(self) -> ExperimentSet:
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise InputError(f"experiment names must be unique; got {names}")
        ordered = sorted(self.experiments, key=lambda e: e.start)
        for a, b in pairwise(ordered):
            if b.start < a.end:
                raise InputError(
                    f"experiments '{a.name}' ({a.start:%Y-%m-%dT%H:%M} to {a.end:%Y-%m-%dT%H:%M}) and '{b.name}' "
                    f"({b.start:%Y-%m-%dT%H:%M} to {b.end:%Y-%m-%dT%H:%M}) overlap: a customer would be in both. "
                    "Give them windows that do not overlap.")
        return self

    def get(self, name: str) -> Experiment:
        for e in self.experiments:
            if e.name == name:
                return e
        known = ", ".join(e.name for e in self.experiments) or "none"
        raise NotFoundError(f"no experiment named '{name}' (defined: {known})")

    def running(self, at: datetime) -> Experiment | None:
        """The experiment running at ``at`` (at most one: they may not overlap)."""
        return next((e for e in self.experiments if e.is_running(at)), None)


def load_experiments(path: Path | str = DEFAULT_CONFIG) -> ExperimentSet:
    """Read and check an experiments file; raises :class:`ExperimentConfigError` naming the problem."""
    path = Path(path)
    if not path.exists():
        raise ExperimentConfigError(f"experiments file {path} does not exist; write one (see `serving/experiment_config.py`) "
                                    "or pass --config FILE.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ExperimentConfigError(f"{path}: not valid YAML: {exc}") from exc
    for experiment in raw.get("experiments") or [] if isinstance(raw, dict) else []:
        for variant in experiment.get("variants") or [] if isinstance(experiment, dict) else []:
            if isinstance(variant, dict) and isinstance(variant.get("policy"), str):
                variant["policy"] = str(path.parent / variant["policy"])  # relative to the file
    try:
        experiments = ExperimentSet.model_validate(raw)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ExperimentConfigError(f"{path}: {problems}") from exc
    for experiment in experiments.experiments:
        for variant in experiment.variants:
            if variant.policy is not None and not variant.policy.exists():
                raise ExperimentConfigError(f"{path}: experiment '{experiment.name}', variant '{variant.name}': "
                                            f"policy file {variant.policy} does not exist")
    return experiments
