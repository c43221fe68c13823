"""Reason codes: a model's largest contributions to one customer's score, in words.

The words are the feature registry's phrases (:mod:`features.registry`): every model input declares
one, with units and the value ("no order for 142 days", "3 cart adds in the last 7 days", "no
returns", "not a loyal customer"), so that a marketer reads a reason without a glossary.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import registry

REASON_DEPTH = 3  # features looked at per reason given, to replace phrases that repeat


def describe(column: str, value: float) -> str:
    """One model input's value in words, from its declaration in the feature registry:
    ``describe("recency_days", 142) == "last order 142 days ago"``."""
    return registry.describe(column, None if value is None or np.isnan(float(value)) else float(value))


def top_reasons(contributions: np.ndarray, matrix: np.ndarray, columns: list[str], k: int = 3) -> np.ndarray:
    """For each row, the ``k`` features that raise the score most, strongest first, in words; an
    (n, k) object array with None where fewer than ``k`` features raise the score. A phrase is given
    once: features that say the same ("fewer than two orders so far" for the mean gap between orders
    and for how overdue the next one is) make room for the next feature."""
    contrib = contributions[:, : len(columns)]
    depth = min(contrib.shape[1], REASON_DEPTH * k)  # enough to replace repeated phrases
    order = np.argsort(-contrib, axis=1, kind="stable")[:, :depth]
    rows = np.arange(len(contrib))
    texts = np.full((len(contrib), depth), None, dtype=object)
    for slot in range(order.shape[1]):
        feature = order[:, slot]
        raises = contrib[rows, feature] > 0
        for j in np.unique(feature[raises]):
            picked = np.flatnonzero(raises & (feature == j))
            # describe each distinct value once; rows that share it share the text
            values, inverse = np.unique(np.round(matrix[picked, j].astype(float), 4), return_inverse=True)
            phrases = np.array([describe(columns[j], v) for v in values], dtype=object)
            texts[picked, slot] = phrases[inverse.ravel()]
    out = np.full((len(contrib), k), None, dtype=object)
    out[:, : min(k, depth)] = texts[:, :k]
    repeated = np.zeros(len(contrib), bool)
    for a in range(min(k, depth)):
        for b in range(a + 1, min(k, depth)):
            repeated |= (texts[:, a] == texts[:, b]) & pd.notna(texts[:, a])
    for row in np.flatnonzero(repeated):  # few rows: the rest keep their first k
        distinct = list(dict.fromkeys(t for t in texts[row] if t is not None))[:k]
        out[row] = distinct + [None] * (k - len(distinct))
    return out


def top_reasons_row(contributions: np.ndarray, values: np.ndarray, columns: list[str], k: int = 3) -> list[str | None]:
    """:func:`top_reasons` of one row (``contributions`` and ``values`` one-dimensional), as a list:
    the same choice and words, without the per-feature array work that only pays off for many rows."""
    contrib = contributions[: len(columns)]
    depth = min(len(contrib), REASON_DEPTH * k)
    order = np.argsort(-contrib, kind="stable")[:depth]
    texts = [describe(columns[j], np.round(float(values[j]), 4)) if contrib[j] > 0 else None for j in order]
    shown = [t for t in texts[:k] if t is not None]
    if len(set(shown)) < len(shown):  # a phrase repeats: the next features make room
        texts = list(dict.fromkeys(t for t in texts if t is not None))
    return texts[:k] + [None] * (k - len(texts[:k]))


def reasons_frame(reasons: np.ndarray) -> pd.DataFrame:
    """Columns ``reason_1`` .. ``reason_k`` from :func:`top_reasons`'s array."""
    return pd.DataFrame({f"reason_{i + 1}": reasons[:, i] for i in range(reasons.shape[1])})
