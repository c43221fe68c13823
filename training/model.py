"""A trained classifier as one bundle: XGBoost booster, calibrator, input columns and metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

from training.calibration import Calibrator
from training.design import design_matrix

BUNDLE_FILE = "sendwise_bundle.json"


@dataclass
class ModelBundle:
    target: str  # churned or purchased
    horizon_days: int
    columns: list[str]
    booster: xgb.Booster
    calibrator: Calibrator
    meta: dict = field(default_factory=dict)  # trained_as_of, holdout metrics, version, ...

    def matrix(self, features: pd.DataFrame) -> np.ndarray:
        return design_matrix(features, self.columns).to_numpy(np.float32)

    def raw_proba(self, features: pd.DataFrame, matrix: np.ndarray | None = None) -> np.ndarray:
        return self.booster.inplace_predict(self.matrix(features) if matrix is None else matrix)

    def predict_proba(self, features: pd.DataFrame, matrix: np.ndarray | None = None) -> np.ndarray:
        """Calibrated probability of the target within the horizon (``matrix``: a precomputed
        :meth:`matrix` of ``features``)."""
        return self.calibrator.apply(self.raw_proba(features, matrix))

    def contributions(self, features: pd.DataFrame, exact: bool = False,
                      matrix: np.ndarray | None = None) -> np.ndarray:
        """Per-feature contributions to the log-odds (last column: bias). ``exact`` uses TreeSHAP;
        the default (Saabas approximation) is many times faster and ranks the same top reasons in
        most rows."""
        x = self.matrix(features) if matrix is None else matrix
        dmatrix = xgb.DMatrix(x, feature_names=self.columns, missing=np.nan)
        return self.booster.predict(dmatrix, pred_contribs=True, approx_contribs=not exact)

    def descriptor(self) -> dict:
        return {"target": self.target, "horizon_days": self.horizon_days, "columns": self.columns,
                "calibrator": self.calibrator.to_dict(), "meta": self.meta}

    def save(self, directory: Path | str) -> Path:
        """Write ``model.ubj`` and the bundle descriptor; returns the descriptor's path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(directory / "model.ubj")
        path = directory / BUNDLE_FILE
        path.write_text(json.dumps(self.descriptor(), indent=1, default=str))
        return path

    @classmethod
    def from_parts(cls, booster: xgb.Booster, descriptor: dict) -> ModelBundle:
        return cls(descriptor["target"], int(descriptor["horizon_days"]), list(descriptor["columns"]),
                   booster, Calibrator.from_dict(descriptor["calibrator"]), dict(descriptor.get("meta", {})))

    @classmethod
    def load(cls, directory: Path | str) -> ModelBundle:
        directory = Path(directory)
        booster = xgb.Booster()
        booster.load_model(directory / "model.ubj")
        return cls.from_parts(booster, json.loads((directory / BUNDLE_FILE).read_text()))
