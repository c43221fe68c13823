"""Next-best-action policy: declarative rules over customer signals, loaded from YAML.

See ``serving/policy.yaml`` for the default and the rule language. Suppression (no consent,
unsubscribed, frequency cap) is checked first and can never be explored away.

A condition names a signal: a model score (:data:`SCORE_SIGNALS`) or a feature the registry declares
as a signal (:func:`known_signals`; the windows of the feature settings name some of them). A policy
naming any other fails when it is loaded, with the list of known ones.
"""

from __future__ import annotations

import operator
import random
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from features.config import FeatureConfig
from features.errors import InputError, NotFoundError, validation_problems
from features.registry import registry

DEFAULT_POLICY = Path(__file__).with_name("policy.yaml")
OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
       ">=": operator.ge, "in": lambda a, b: a in b}
SUPPRESS = "suppress"
SCORE_SIGNALS = ("churn_probability", "purchase_probability", "churn_risk", "expected_orders", "predicted_clv",
                 "p_alive")


def known_signals(config: FeatureConfig | None = None) -> list[str]:
    """Every signal a policy may name under the feature settings ``config`` (default: the current ones)."""
    return [*SCORE_SIGNALS, *registry(config).signals()]


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    signal: str
    op: Literal["==", "!=", "<", "<=", ">", ">=", "in"]
    value: Any

    @field_validator("signal")
    @classmethod
    def _known(cls, signal: str, info: ValidationInfo) -> str:
        known = (info.context or {}).get("signals") or known_signals()
        if signal not in known:
            raise ValueError(f"unknown signal {signal!r}; known signals: {', '.join(known)}")
        return signal

    def holds(self, signals: dict) -> bool:
        got = signals.get(self.signal)
        if got is None:
            return False
        try:
            return bool(OPS[self.op](got, self.value))
        except TypeError:
            return False

    def describe(self) -> str:
        return f"{self.signal} {self.op} {self.value}"


class ActionRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    action: str
    when: tuple[Condition, ...] = ()
    offer: str = "none"
    content_blocks: tuple[str, ...] = ()

    def holds(self, signals: dict) -> bool:
        return all(c.holds(signals) for c in self.when)


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    suppress_when: tuple[Condition, ...] = ()
    actions: tuple[ActionRule, ...] = Field(..., min_length=1)
    exploration_epsilon: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _has_default(self) -> Policy:
        if self.actions[-1].when:
            raise InputError("the last action must have no conditions: it is the default")
        if any(a.action == SUPPRESS for a in self.actions):
            raise InputError("'suppress' is reserved for suppress_when")
        return self

    @classmethod
    def load(cls, path: Path | str = DEFAULT_POLICY, config: FeatureConfig | None = None) -> Policy:
        """Read and check a policy file; a missing or malformed file, or a signal unknown under the
        feature settings ``config`` (default: the current ones), names the problem."""
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"policy file {path} does not exist; pass --policy FILE (see serving/policy.yaml).")
        try:
            return cls.model_validate(yaml.safe_load(path.read_text()), context={"signals": known_signals(config)})
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML: {exc}") from exc
        except ValidationError as exc:
            problems = validation_problems(exc)
            raise InputError(f"{path}: {problems}") from exc


class Decision(BaseModel):
    action: str
    offer: str
    content_blocks: list[str]
    reasons: list[str]
    probability: float = Field(description="probability that the policy picks this action for this customer")
    explored: bool


def decide(policy: Policy, signals: dict, rng: random.Random) -> Decision:
    """The action for one customer's ``signals``."""
    suppressed = [c.describe() for c in policy.suppress_when if c.holds(signals)]
    if suppressed:
        return Decision(action=SUPPRESS, offer="none", content_blocks=[], reasons=suppressed,
                        probability=1.0, explored=False)
    eligible = [a for a in policy.actions if a.holds(signals)]
    greedy, others = eligible[0], eligible[1:]
    eps = policy.exploration_epsilon if others else 0.0
    explored = eps > 0 and rng.random() < eps
    chosen = rng.choice(others) if explored else greedy
    probability = eps / len(others) if explored else 1.0 - eps
    reasons = [c.describe() for c in chosen.when] or ["default action"]
    return Decision(action=chosen.action, offer=chosen.offer, content_blocks=list(chosen.content_blocks),
                    reasons=reasons, probability=probability, explored=explored)
