"""From a feature frame to the numeric matrix the models see."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.rfm import SEGMENTS
from features.schema import AS_OF, COUNTRY, CUSTOMER_ID
from features.training_set import Target

LIFECYCLE_STAGES = ("prospect", "new", "active", "loyal", "at-risk", "lapsed")
# Text columns that a shop names freely (not a fixed vocabulary) stay out of the models.
# Labels never enter a model.
NOT_MODELLED = (CUSTOMER_ID, AS_OF, COUNTRY, "top_category", *(t.value for t in Target))
ONE_HOT = {"rfm_segment": SEGMENTS, "lifecycle_stage": LIFECYCLE_STAGES}


def feature_columns(features: pd.DataFrame) -> list[str]:
    """The model's input columns for a feature frame, in a stable order."""
    columns = [c for c in features.columns if c not in NOT_MODELLED and c not in ONE_HOT]
    for name, values in ONE_HOT.items():
        columns += [f"{name}={v}" for v in values]
    return columns


def design_matrix(features: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``features`` as float32 columns ``columns``: booleans 0/1, missing values NaN, one-hot
    vocabularies expanded; a column absent from ``features`` is all NaN."""
    out = {}
    for col in columns:
        if "=" in col and col.split("=", 1)[0] in ONE_HOT:
            source, value = col.split("=", 1)
            out[col] = (features[source] == value).to_numpy(dtype=np.float32, na_value=0)
        elif col in features:
            out[col] = pd.to_numeric(features[col].astype("Float64"), errors="coerce").to_numpy(
                dtype=np.float32, na_value=np.nan)
        else:
            out[col] = np.full(len(features), np.nan, np.float32)
    return pd.DataFrame(out, index=features.index)
