"""Settings of the customer feature build, in one declarative place."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from features.errors import InputError


class IntentWeights(BaseModel):
    """Points per action inside the intent window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    view: float = 3.0
    add_to_cart: float = 5.0
    purchase: float = 10.0


class LifecycleRules(BaseModel):
    """Thresholds of the lifecycle stage (see README, "Lifecycle stages").

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
        return self
