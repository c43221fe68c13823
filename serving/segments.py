"""Dynamic segments and delayed triggers, declared in a project's ``segments.yaml``.

A segment is a named rule over a customer's features and model scores; a customer is a member while
the rule holds. A rule is ``{all: [rules]}``, ``{any: [rules]}``, ``{not: rule}``, a condition
``{signal, op, value}`` with the ops of :mod:`serving.policy`, or the same written as one string::

    segments:
      - name: churn-risk-regulars
        when: "churn_probability >= 0.6 and orders_count >= 3"
      - name: browsing-no-order
        when: {all: [{signal: views_1d, op: ">=", value: 1},
                     {any: [{signal: recency_days, op: ">", value: 1}, {signal: orders_count, op: "==", value: 0}]}]}
    triggers:
      - {name: cart-reminder, after: add_to_cart, unless: order, within: 1h}

Signals are every output feature of the feature registry (windowed ones such as ``views_1d`` or
``orders_30d`` say "in the last N days") and the model scores; the file is checked when it is loaded:
an unknown signal, an op the signal's type cannot take, a value of the wrong type or not among a level
feature's levels, a bad name or window is an :class:`~features.errors.InputError` naming the file, the
segment or trigger and the field. As in the policy, a condition on a missing value (None, NaN) is false.

:meth:`SegmentSet.members` evaluates one customer (the online path), :meth:`SegmentSet.membership`
a whole frame at once (the batch export); the two agree (tests/test_segments.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from features.config import FeatureConfig
from features.errors import InputError, NotFoundError, validation_problems
from features.registry import Dtype, registry
from features.schema import CUSTOMER_ID, EventType
from serving.policy import OPS
from training.scoring import RISK_LABELS

SEGMENTS_FILE = "segments.yaml"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # starts with a letter or digit: safe as a CSV column header
ORDER = "order"  # the event type of a purchase (POST /events), besides the contract's
EVENT_TYPES = (*(e.value for e in EventType), ORDER)
WINDOW = re.compile(r"^(?P<n>[1-9][0-9]{0,3})(?P<unit>[mhd])$")
WINDOW_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
MAX_WINDOW = timedelta(days=90)
ORDERED_OPS = ("<", "<=", ">", ">=")


@dataclass(frozen=True)
class Signal:
    """What a rule may compare a signal with: its type and, for a level feature, its levels."""

    dtype: Dtype
    levels: tuple[str, ...] = ()


def known_signals(config: FeatureConfig | None = None) -> dict[str, Signal]:
    """Every signal a segment may name under the feature settings ``config`` (default: the current
    ones): the registry's output features and the model scores."""
    found = {f.name: Signal(f.dtype, f.levels) for f in registry(config).features if not f.internal}
    scores = {"churn_probability": Signal(Dtype.FLOAT), "purchase_probability": Signal(Dtype.FLOAT),
              "churn_risk": Signal(Dtype.TEXT, RISK_LABELS), "expected_orders": Signal(Dtype.FLOAT),
              "predicted_clv": Signal(Dtype.FLOAT), "p_alive": Signal(Dtype.FLOAT)}  # serving.policy.SCORE_SIGNALS
    return found | scores


# -- rules ------------------------------------------------------------------------------------------


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class Condition:
    signal: str
    op: str
    value: Any

    def holds(self, values: dict) -> bool:
        got = values.get(self.signal)
        if _missing(got):
            return False
        try:
            return bool(OPS[self.op](got, self.value))
        except TypeError:
            return False

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        column = frame[self.signal]
        present = column.notna().to_numpy()
        if self.op == "in":
            hit = column.isin(list(self.value))
        else:
            if self.op in ORDERED_OPS and column.dtype == object:
                column = pd.to_numeric(column, errors="coerce")
            hit = OPS[self.op](column, self.value)
        return present & pd.Series(hit).fillna(False).to_numpy(dtype=bool)

    def signals(self) -> set[str]:
        return {self.signal}


@dataclass(frozen=True)
class All:
    rules: tuple[Rule, ...]

    def holds(self, values: dict) -> bool:
        return all(r.holds(values) for r in self.rules)

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        return np.logical_and.reduce([r.mask(frame) for r in self.rules])

    def signals(self) -> set[str]:
        return set().union(*(r.signals() for r in self.rules))


@dataclass(frozen=True)
class AnyOf:
    rules: tuple[Rule, ...]

    def holds(self, values: dict) -> bool:
        return any(r.holds(values) for r in self.rules)

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        return np.logical_or.reduce([r.mask(frame) for r in self.rules])

    def signals(self) -> set[str]:
        return set().union(*(r.signals() for r in self.rules))


@dataclass(frozen=True)
class Not:
    rule: Rule

    def holds(self, values: dict) -> bool:
        return not self.rule.holds(values)

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        return ~self.rule.mask(frame)

    def signals(self) -> set[str]:
        return self.rule.signals()


Rule = Condition | All | AnyOf | Not


def _check_value(signal: str, op: str, value: Any, spec: Signal) -> None:
    """A ValueError when ``value`` is not of ``signal``'s type, or ``op`` does not apply to it."""
    if op in ORDERED_OPS and spec.dtype in (Dtype.BOOL, Dtype.TEXT):
        raise ValueError(f"op {op!r} does not apply to {signal} ({spec.dtype.value}); use ==, != or in")
    if op == "in":
        if not isinstance(value, list) or not value:
            raise ValueError(f"op 'in' needs a non-empty list of values for {signal}; got {value!r}")
        for item in value:
            _check_value(signal, "==", item, spec)
        return
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    ok = {Dtype.INT: numeric, Dtype.FLOAT: numeric, Dtype.BOOL: isinstance(value, bool),
          Dtype.TEXT: isinstance(value, str)}[spec.dtype]
    if not ok:
        expected = {Dtype.INT: "a number", Dtype.FLOAT: "a number", Dtype.BOOL: "true or false",
                    Dtype.TEXT: "a text"}[spec.dtype]
        raise ValueError(f"{signal} is {spec.dtype.value}: its value must be {expected}; got {value!r}")
    if numeric and not math.isfinite(value):
        raise ValueError(f"{signal}: the value must be a finite number; got {value!r}")
    if spec.levels and value not in spec.levels:
        raise ValueError(f"{signal} is one of {', '.join(map(repr, spec.levels))}; got {value!r}")


def parse_rule(raw: Any, signals: dict[str, Signal], where: str = "when") -> Rule:
    """The rule of YAML ``raw`` (a mapping, or a string in the compact form); a ValueError naming the
    place (``when.all.1.signal``) and what was expected."""
    if isinstance(raw, str):
        return parse_compact(raw, signals, where)
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{where}: a rule is {{all: [...]}}, {{any: [...]}}, {{not: rule}}, "
                         f"{{signal, op, value}} or a string; got {raw!r}")
    keys = set(raw)
    if keys in ({"all"}, {"any"}):
        key = keys.pop()
        items = raw[key]
        if not isinstance(items, list) or not items:
            raise ValueError(f"{where}.{key}: a non-empty list of rules; got {items!r}")
        rules = tuple(parse_rule(r, signals, f"{where}.{key}.{i}") for i, r in enumerate(items))
        return All(rules) if key == "all" else AnyOf(rules)
    if keys == {"not"}:
        return Not(parse_rule(raw["not"], signals, f"{where}.not"))
    if keys == {"signal", "op", "value"}:
        return _condition(raw["signal"], raw["op"], raw["value"], signals, where)
    raise ValueError(f"{where}: unexpected keys {sorted(map(str, keys))}; a rule has exactly one of all, any, not, "
                     "or the three keys signal, op, value")


def _condition(signal: Any, op: Any, value: Any, signals: dict[str, Signal], where: str) -> Condition:
    if signal not in signals:
        raise ValueError(f"{where}.signal: unknown signal {signal!r}; known signals: {', '.join(signals)}")
    if op not in OPS:
        raise ValueError(f"{where}.op: unknown op {op!r}; known ops: {', '.join(OPS)}")
    try:
        _check_value(signal, op, value, signals[signal])
    except ValueError as exc:
        raise ValueError(f"{where}.value: {exc}") from None
    return Condition(signal, op, tuple(value) if op == "in" else value)


# -- the compact form: "churn_probability >= 0.6 and (orders_count >= 3 or not unsubscribed == true)" --

_TOKEN = re.compile(r"""\s*(?:(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<str>'[^']*'|"[^"]*")
                        |(?P<op>==|!=|<=|>=|<|>)|(?P<punct>[()\[\],])|(?P<word>[A-Za-z_][A-Za-z0-9_-]*))""",
                    re.VERBOSE)
_KEYWORDS = {"and", "or", "not", "in"}


def _tokens(text: str, where: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"{where}: cannot read {text[pos:].strip()[:20]!r} in {text!r}")
        kind = match.lastgroup
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


class _Parser:
    """or-expr := and-expr ("or" and-expr)*; and-expr := unary ("and" unary)*;
    unary := "not" unary | "(" or-expr ")" | signal op value."""

    def __init__(self, text: str, signals: dict[str, Signal], where: str) -> None:
        self.text, self.signals, self.where = text, signals, where
        self.tokens, self.i = _tokens(text, where), 0

    def error(self, expected: str) -> ValueError:
        got = self.tokens[self.i][1] if self.i < len(self.tokens) else "the end"
        return ValueError(f"{self.where}: expected {expected} but found {got!r} in {self.text!r}")

    def peek(self, value: str) -> bool:
        return self.i < len(self.tokens) and self.tokens[self.i][1] == value

    def take(self, expected: str) -> tuple[str, str]:
        if self.i >= len(self.tokens):
            raise self.error(expected)
        self.i += 1
        return self.tokens[self.i - 1]

    def parse(self) -> Rule:
        rule = self.or_expr()
        if self.i != len(self.tokens):
            raise self.error("'and', 'or' or the end")
        return rule

    def or_expr(self) -> Rule:
        rules = [self.and_expr()]
        while self.peek("or"):
            self.i += 1
            rules.append(self.and_expr())
        return rules[0] if len(rules) == 1 else AnyOf(tuple(rules))

    def and_expr(self) -> Rule:
        rules = [self.unary()]
        while self.peek("and"):
            self.i += 1
            rules.append(self.unary())
        return rules[0] if len(rules) == 1 else All(tuple(rules))

    def unary(self) -> Rule:
        if self.peek("not"):
            self.i += 1
            return Not(self.unary())
        if self.peek("("):
            self.i += 1
            rule = self.or_expr()
            if not self.peek(")"):
                raise self.error("')'")
            self.i += 1
            return rule
        kind, signal = self.take("a signal name, 'not' or '('")
        if kind != "word" or signal in _KEYWORDS:
            self.i -= 1
            raise self.error("a signal name, 'not' or '('")
        kind, op = self.take(f"an op ({', '.join(OPS)})")
        if op not in OPS:
            self.i -= 1
            raise self.error(f"an op ({', '.join(OPS)})")
        value = self.values() if op == "in" else self.value()
        return _condition(signal, op, value, self.signals, self.where)

    def value(self) -> Any:
        kind, text = self.take("a value (a number, true, false or a text)")
        if kind == "num":
            number = float(text)
            return int(text) if re.fullmatch(r"-?\d+", text) else number
        if kind == "str":
            return text[1:-1]
        if kind == "word" and text not in _KEYWORDS:
            return {"true": True, "false": False}.get(text, text)
        self.i -= 1
        raise self.error("a value (a number, true, false or a text)")

    def values(self) -> list:
        if not self.peek("["):
            raise self.error("'[' opening a list of values")
        self.i += 1
        items = [self.value()]
        while self.peek(","):
            self.i += 1
            items.append(self.value())
        if not self.peek("]"):
            raise self.error("',' or ']'")
        self.i += 1
        return items


def parse_compact(text: str, signals: dict[str, Signal], where: str = "when") -> Rule:
    """The rule written as one string: conditions ``signal op value`` joined by ``and``, ``or``,
    ``not`` and parentheses (``not`` binds tightest, then ``and``); texts in quotes or bare
    (``lifecycle_stage in [loyal, 'at-risk']``)."""
    return _Parser(text, signals, where).parse()


# -- the file ---------------------------------------------------------------------------------------


def _signals(info: ValidationInfo) -> dict[str, Signal]:
    return (info.context or {}).get("signals") or known_signals()


class Segment(BaseModel):
    """One segment: its name (a CSV column of the export and the ``name`` of its transitions) and rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    when: Any
    _rule: Rule = PrivateAttr()

    @model_validator(mode="after")
    def _parse(self, info: ValidationInfo) -> Segment:
        try:
            self._rule = parse_rule(self.when, _signals(info))
        except ValueError as exc:
            raise ValueError(f"segment {self.name!r}: {exc}") from None
        return self

    @property
    def rule(self) -> Rule:
        return self._rule


class Trigger(BaseModel):
    """A delayed trigger: ``after`` an event, unless an ``unless`` event comes ``within`` the window,
    fire once (per cart: the ``after`` event that armed it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_PATTERN)
    after: str
    unless: str
    within: str
    webhook: bool = True

    @field_validator("after", "unless")
    @classmethod
    def _event_type(cls, value: str, info: ValidationInfo) -> str:
        if value not in EVENT_TYPES:
            raise ValueError(f"trigger {info.data.get('name')!r}: unknown event type {value!r}; known: "
                             f"{', '.join(EVENT_TYPES)}")
        return value

    @field_validator("within")
    @classmethod
    def _window(cls, value: str, info: ValidationInfo) -> str:
        match = WINDOW.match(str(value))
        if match is None or int(match["n"]) * WINDOW_UNITS[match["unit"]] > MAX_WINDOW:
            raise ValueError(f"trigger {info.data.get('name')!r}: a window such as 30m, 1h or 2d (minutes, hours "
                             f"or days, at most "
                             f"{MAX_WINDOW.days}d); got {value!r}")
        return value

    @model_validator(mode="after")
    def _different(self) -> Trigger:
        if self.after == self.unless:
            raise ValueError(f"trigger {self.name!r}: after and unless are both {self.after!r}")
        return self

    @property
    def delay(self) -> timedelta:
        match = WINDOW.match(self.within)
        return int(match["n"]) * WINDOW_UNITS[match["unit"]]


class SegmentSet(BaseModel):
    """The segments and triggers of one ``segments.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    segments: tuple[Segment, ...] = ()
    triggers: tuple[Trigger, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> SegmentSet:
        names = [s.name for s in self.segments] + [t.name for t in self.triggers]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"names must be unique across segments and triggers; repeated: {', '.join(repeated)}")
        return self

    @classmethod
    def load(cls, path: Path | str, config: FeatureConfig | None = None) -> SegmentSet:
        """Read and check a segments file against the signals of the feature settings ``config``
        (default: the current ones); every problem names the file and the place."""
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"segments file {path} does not exist; write one (see docs/segments.md).")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid YAML: {exc}") from None
        return cls.parse(raw, config, str(path))

    @classmethod
    def parse(cls, raw: Any, config: FeatureConfig | None = None, source: str = SEGMENTS_FILE) -> SegmentSet:
        """As :meth:`load`, from the file's parsed YAML ``raw``; ``source`` names it in errors."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise InputError(f"{source}: must hold a mapping with segments: and triggers:; got {type(raw).__name__}")
        try:
            return cls.model_validate(raw, context={"signals": known_signals(config)})
        except ValidationError as exc:
            raise InputError(f"{source}: {validation_problems(exc)}") from None

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.segments]

    @property
    def signals(self) -> list[str]:
        """The signals the segments read, sorted."""
        return sorted(set().union(*(s.rule.signals() for s in self.segments)))

    def members(self, values: dict) -> list[str]:
        """The sorted names of the segments whose rule holds for one customer's ``values``."""
        return sorted(s.name for s in self.segments if s.rule.holds(values))

    def membership(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``customer_id`` and one 0/1 column per segment (in file order) for every row of ``frame``
        (one per customer, with the columns of :attr:`signals`); a missing column is an InputError."""
        missing = [c for c in [CUSTOMER_ID, *self.signals] if c not in frame.columns]
        if missing:
            raise InputError(f"the customer frame lacks the columns {', '.join(missing)} the segments read")
        frame = frame.reset_index(drop=True)
        out = pd.DataFrame({CUSTOMER_ID: frame[CUSTOMER_ID].to_numpy()})
        for segment in self.segments:
            out[segment.name] = segment.rule.mask(frame).astype("int8")
        return out

    def trigger(self, name: str) -> Trigger:
        return next(t for t in self.triggers if t.name == name)

