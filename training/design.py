"""From a feature frame to the numeric matrix the models see.

The model's inputs are the feature registry's (:meth:`features.registry.Registry.model_inputs`):
numeric and flag features, and one 0/1 column per level of a one-hot feature
(``lifecycle_stage=loyal``). Text a shop names freely (country, top category) and labels never
enter a model. Attributes enter only as of the as_of, from their history: a shop that gives only
today's consent gives the model none (the column is empty), so no model learns from it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.config import FeatureConfig
from features.errors import InputError
from features.registry import LIFECYCLE_STAGES, registry

__all__ = ["LIFECYCLE_STAGES", "design_matrix", "design_row", "feature_columns", "trained_feature_config"]

FEATURE_CONFIG = "feature_config"  # a model's metadata key: the feature settings it was trained with


def feature_columns(features: pd.DataFrame | None = None, config: FeatureConfig | None = None) -> list[str]:
    """The model's input columns for the feature settings ``config`` (default: the current ones), in a
    stable order. With ``features``, every input must be a column of it (or a level of one): a frame
    built with other settings is an InputError."""
    reg = registry(config)
    columns = reg.model_inputs()
    if features is not None:
        missing = [c for c in columns if c.split("=", 1)[0] not in features.columns]
        if missing:
            raise InputError(f"the features lack the model inputs {', '.join(missing[:5])}"
                             f"{' ...' if len(missing) > 5 else ''}: were they built with other feature settings?")
    return columns


def design_matrix(features: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``features`` as float32 columns ``columns``: booleans 0/1, missing values NaN, one-hot
    levels ``name=level`` expanded; a column absent from ``features`` is all NaN."""
    if len(features) == 1:  # one customer (the service, after an event): per-column pandas work is most of it
        row = design_row(features.iloc[0].to_dict(), columns)
        return pd.DataFrame(row[None, :], columns=columns, index=features.index)
    out = {}
    for col in columns:
        name, _, level = col.partition("=")
        if level and name in features:
            out[col] = (features[name] == level).to_numpy(dtype=np.float32, na_value=0)
        elif col in features:
            out[col] = pd.to_numeric(features[col].astype("Float64"), errors="coerce").to_numpy(
                dtype=np.float32, na_value=np.nan)
        else:
            out[col] = np.full(len(features), np.nan, np.float32)
    return pd.DataFrame(out, index=features.index)


def design_row(values: dict, columns: list[str]) -> np.ndarray:
    """One customer's ``values`` as :func:`design_matrix` makes a row of them: float32, NaN for missing."""
    out = np.full(len(columns), np.nan, np.float32)
    for i, col in enumerate(columns):
        name, _, level = col.partition("=")
        if level and name in values:
            value = values[name]
            out[i] = 1.0 if isinstance(value, str) and value == level else 0.0
        elif col in values:
            value = values[col]
            try:
                out[i] = np.nan if value is None or value is pd.NA else float(value)
            except (TypeError, ValueError):  # as to_numeric(errors="coerce")
                out[i] = np.nan
    return out


def trained_feature_config(meta: dict) -> FeatureConfig:
    """The feature settings a model was trained with, from its metadata (defaults for a model that
    predates the record)."""
    recorded = meta.get(FEATURE_CONFIG)
    return FeatureConfig() if recorded is None else FeatureConfig.from_dict(recorded, "the model's feature settings")
