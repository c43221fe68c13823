"""Settings of the customer feature build, in one declarative place.

The settings a command uses come from one YAML file (``--feature-config FILE``, or the
``SENDWISE_FEATURE_CONFIG`` environment variable naming it; defaults otherwise), e.g.::

    order_windows_days: [14, 60]
    email_windows_days: [7, 30]
    intent_weights: {view: 1, add_to_cart: 4, purchase: 10}
    lifecycle: {new_days: 21}

The windows name the feature columns (``orders_14d``), and so the model inputs and the signals a
policy may name; a trained model records the settings it was built with, and scoring and serving
build features with them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from features.errors import InputError, NotFoundError, validation_problems

CONFIG_ENV = "SENDWISE_FEATURE_CONFIG"


class IntentWeights(BaseModel):
    """Points per action inside the intent window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    view: float = 3.0
    add_to_cart: float = 5.0
    purchase: float = 10.0


class LifecycleRules(BaseModel):
    """Thresholds of the lifecycle stage (see docs/features.md, "Lifecycle stages").

    A customer's expected gap between orders is their own mean inter-purchase interval, or, with
    fewer than two orders, the median of that interval over all customers at the same as_of
    (``default_gap_days`` when nobody has two orders), clipped to ``[min_gap_days, max_gap_days]``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    new_days: float = Field(30.0, gt=0)
    loyal_min_orders: int = Field(4, ge=2)
    at_risk_factor: float = Field(1.5, gt=0)
    lapsed_factor: float = Field(3.0, gt=0)
    default_gap_days: float = Field(60.0, gt=0)
    min_gap_days: float = Field(7.0, gt=0)
    max_gap_days: float = Field(365.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> LifecycleRules:
        if self.lapsed_factor <= self.at_risk_factor:
            raise InputError(
                f"lapsed_factor must be greater than at_risk_factor; got {self.lapsed_factor} <= "
                f"{self.at_risk_factor}"
            )
        if self.max_gap_days < self.min_gap_days:
            raise InputError("max_gap_days must be at least min_gap_days")
        return self


class FeatureConfig(BaseModel):
    """Windows and weights of the point-in-time customer features."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    order_windows_days: tuple[int, ...] = (30, 90, 365)
    email_windows_days: tuple[int, ...] = (7, 30, 90)
    browse_windows_days: tuple[int, ...] = (1, 7, 30)
    intent_window_days: int = Field(30, gt=0)
    intent_weights: IntentWeights = IntentWeights()
    abandoned_cart_days: tuple[int, ...] = (1, 7)
    lifecycle: LifecycleRules = LifecycleRules()

    @model_validator(mode="after")
    def _positive_windows(self) -> FeatureConfig:
        for name in ("order_windows_days", "email_windows_days", "browse_windows_days", "abandoned_cart_days"):
            windows = getattr(self, name)
            if not windows or any(w <= 0 for w in windows):
                raise InputError(f"{name} must be a non-empty list of positive day counts; got {windows}")
            if len(set(windows)) != len(windows):
                raise InputError(f"{name} must not repeat a window (each names a column); got {windows}")
        return self

    @classmethod
    def load(cls, path: Path | str) -> FeatureConfig:
        """Settings from a YAML file; a missing, malformed or invalid file names the problem."""
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"feature settings file {path} does not exist (--feature-config or {CONFIG_ENV}).")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "feature settings") -> FeatureConfig:
        """Settings from a mapping (a YAML file's, or a model's recorded :meth:`to_dict`)."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = validation_problems(exc)
            raise InputError(f"{source}: {problems}") from exc
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from exc

    @classmethod
    def current(cls) -> FeatureConfig:
        """The settings named by ``SENDWISE_FEATURE_CONFIG`` (a YAML file), else the defaults."""
        path = os.environ.get(CONFIG_ENV)
        return cls.load(path) if path else cls()

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, numbers) that :meth:`from_dict` reads back; what a model records."""
        return self.model_dump(mode="json")
