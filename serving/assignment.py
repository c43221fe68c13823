"""Deterministic assignment of customers to variants.

A customer's bucket is the first 8 bytes of SHA-256(salt, customer id) read as a number in [0, 1):
the same on every machine, process and restart (no seed, no state), and independent between
experiments with different salts. Buckets are cut by the cumulative variant weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from serving.experiment_config import Experiment

_SCALE = float(2 ** 64)


def bucket(salt: str, customer_id: str) -> float:
    """The customer's position in [0, 1) for this salt."""
    digest = hashlib.sha256(f"{salt}\x1f{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def _edges(experiment: Experiment) -> np.ndarray:
    weights = np.array([v.weight for v in experiment.variants])
    return np.cumsum(weights)[:-1] / weights.sum()


def assign(experiment: Experiment, customer_id: str) -> str:
    """The variant name of one customer."""
    index = int(np.searchsorted(_edges(experiment), bucket(experiment.hash_salt, customer_id), side="right"))
    return experiment.variants[index].name


def assign_many(experiment: Experiment, customer_ids: Iterable[str]) -> list[str]:
    """Variant names of many customers, in order."""
    salt = experiment.hash_salt
    buckets = np.fromiter((bucket(salt, str(c)) for c in customer_ids), float)
    names = [v.name for v in experiment.variants]
    return [names[i] for i in np.searchsorted(_edges(experiment), buckets, side="right")]
