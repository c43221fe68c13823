"""A trained classifier as one bundle: the model (an XGBoost booster, or a formula model: the logistic
regression on log-RFM of :mod:`training.linear` or the BG/NBD churn quantity of
:mod:`training.bgnbd_classifier`), calibrator, input columns and metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import xgboost as xgb

from features.errors import InputError
from training.bgnbd_classifier import BgNbdChurnModel
from training.calibration import Calibrator
from training.design import design_matrix
from training.linear import LogRFMModel

BUNDLE_FILE = "sendwise_bundle.json"
BOOSTER_FILE = "model.ubj"  # an XGBoost bundle's booster, next to the descriptor
XGBOOST, LOGISTIC, BGNBD = "xgboost", "logistic", "bgnbd"  # the kinds of model a bundle holds


class FormulaModel(Protocol):
    """A model that is a closed formula of a few inputs (its ``COLUMNS``, the bundle's columns)."""

    def raw_proba(self, matrix: np.ndarray) -> np.ndarray: ...

    def contributions(self, matrix: np.ndarray) -> np.ndarray: ...

    def to_dict(self) -> dict: ...


# kind -> (class, descriptor key); "linear" is the key logistic bundles have been saved with
FORMULAS: dict[str, tuple[type, str]] = {LOGISTIC: (LogRFMModel, "linear"), BGNBD: (BgNbdChurnModel, "bgnbd")}


@dataclass
class ModelBundle:
    target: str  # churned or purchased
    horizon_days: int
    columns: list[str]
    booster: xgb.Booster | None  # None: a formula model
    calibrator: Calibrator
    meta: dict = field(default_factory=dict)  # trained_as_of, holdout metrics, version, ...
    formula: FormulaModel | None = None  # the logistic or BG/NBD model, when there is no booster

    def __post_init__(self) -> None:
        if (self.booster is None) == (self.formula is None):
            raise ValueError("a model bundle holds exactly one model: an XGBoost booster or a formula model "
                             f"({', '.join(FORMULAS)})")

    @property
    def kind(self) -> str:
        """``xgboost``, ``logistic`` or ``bgnbd``."""
        if self.booster is not None:
            return XGBOOST
        return next(kind for kind, (cls, _) in FORMULAS.items() if isinstance(self.formula, cls))

    def matrix(self, features: pd.DataFrame) -> np.ndarray:
        return design_matrix(features, self.columns).to_numpy(np.float32)

    def raw_proba(self, features: pd.DataFrame, matrix: np.ndarray | None = None) -> np.ndarray:
        x = self.matrix(features) if matrix is None else matrix
        return self.booster.inplace_predict(x) if self.booster is not None else self.formula.raw_proba(x)

    def predict_proba(self, features: pd.DataFrame, matrix: np.ndarray | None = None) -> np.ndarray:
        """Calibrated probability of the target within the horizon (``matrix``: a precomputed
        :meth:`matrix` of ``features``)."""
        return self.calibrator.apply(self.raw_proba(features, matrix))

    def contributions(self, features: pd.DataFrame, exact: bool = False,
                      matrix: np.ndarray | None = None) -> np.ndarray:
        """Per-feature contributions to the log-odds (last column: bias). ``exact`` uses TreeSHAP;
        the default (Saabas approximation) is many times faster and ranks the same top reasons in
        most rows. A formula model's contributions are exact whatever ``exact`` says. A ``matrix`` (the
        model's columns in its order, as :meth:`matrix` makes them) is neither named nor checked against
        the booster's columns, which costs much of a one-row call (the service makes one after each event)."""
        x = self.matrix(features) if matrix is None else matrix
        if self.formula is not None:
            return self.formula.contributions(x)
        dmatrix = xgb.DMatrix(x, feature_names=self.columns if matrix is None else None, missing=np.nan)
        return self.booster.predict(dmatrix, pred_contribs=True, approx_contribs=not exact,
                                    validate_features=matrix is None)

    def descriptor(self) -> dict:
        return {"target": self.target, "horizon_days": self.horizon_days, "columns": self.columns,
                "calibrator": self.calibrator.to_dict(), "meta": self.meta, "kind": self.kind,
                **({FORMULAS[self.kind][1]: self.formula.to_dict()} if self.formula is not None else {})}

    def save(self, directory: Path | str) -> Path:
        """Write :data:`BOOSTER_FILE` (an XGBoost model) and the bundle descriptor; returns the
        descriptor's path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.booster is not None:
            self.booster.save_model(directory / BOOSTER_FILE)
        path = directory / BUNDLE_FILE
        path.write_text(json.dumps(self.descriptor(), indent=1, default=str))
        return path

    @classmethod
    def from_parts(cls, booster: xgb.Booster | None, descriptor: dict) -> ModelBundle:
        """A bundle from its descriptor and, for an XGBoost one, its booster (bundles saved before the
        logistic kind existed have no ``kind``: XGBoost)."""
        kind = descriptor.get("kind", XGBOOST)
        if kind != XGBOOST and kind not in FORMULAS:
            raise InputError(f"The model bundle's kind is {kind!r}; expected one of {XGBOOST}, {', '.join(FORMULAS)}.")
        formula = None
        if kind in FORMULAS:
            model_class, key = FORMULAS[kind]
            formula = model_class.from_dict(descriptor[key])
        return cls(descriptor["target"], int(descriptor["horizon_days"]), list(descriptor["columns"]),
                   booster if formula is None else None, Calibrator.from_dict(descriptor["calibrator"]),
                   dict(descriptor.get("meta", {})), formula)

    @classmethod
    def load(cls, directory: Path | str) -> ModelBundle:
        directory = Path(directory)
        descriptor = json.loads((directory / BUNDLE_FILE).read_text())
        booster = None
        if descriptor.get("kind", XGBOOST) == XGBOOST:
            booster = xgb.Booster()
            booster.load_model(directory / BOOSTER_FILE)
        return cls.from_parts(booster, descriptor)
