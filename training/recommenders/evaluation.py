"""Scoring recommenders on a holdout of :mod:`training.protocols` (time split or leave-latest-out).

``evaluate(tables, as_of, models)``: every model is fitted on rows before ``as_of``; the truth is
the products each customer bought in ``[as_of, until)`` (``until`` defaults to the end of the data).
The test customers bought something before ``as_of`` and something in the window. Two variants:

* ``new items``: truth = products the customer had not bought before ``as_of``; recommendations
  exclude products the customer bought before ``as_of``;
* ``all items``: truth = every product bought in the window (repurchases count); nothing excluded.

A holdout with its own ``inputs`` (leave-latest-out) is scored the same way on those inputs.
Metrics: :mod:`training.recommenders.metrics` at ``k`` plus catalog coverage.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pandas as pd

from features.interactions import InteractionConfig, build_interactions, pairs_matrix, select_rows
from features.schema import CUSTOMER_ID
from features.tables import Tables
from training.protocols import ALL_ITEMS, NEW_ITEMS, Holdout, time_split
from training.recommenders.batch import top_k_frame
from training.recommenders.metrics import METRICS, catalog_coverage, per_customer, ranking_metrics
from training.recommenders.models import CatalogTooLargeError, Recommender

holdout = time_split  # the protocol of ``evaluate`` and ``train recommender``
__all__ = ["ALL_ITEMS", "NEW_ITEMS", "Holdout", "evaluate", "fit_for_test", "holdout", "per_customer_metrics",
           "recommend_for_test", "score"]


def fit_for_test(model: Recommender, tables: Tables, test: Holdout,
                 base_config: InteractionConfig | None = None) -> Recommender:
    """``model`` fitted on the holdout's input: ``test.inputs`` (or ``tables``) before ``test.as_of``."""
    return model.fit_tables(_inputs(tables, test), test.as_of, base_config)


def _inputs(tables: Tables, test: Holdout) -> Tables:
    return test.inputs if test.inputs is not None else tables


def recommend_for_test(model: Recommender, tables: Tables, test: Holdout, k: int, variant: str,
                       base_config: InteractionConfig | None = None) -> pd.DataFrame:
    """The fitted ``model``'s top ``k`` for the test customers of ``variant``."""
    customers = pd.Index(sorted(set(test.truth[variant][CUSTOMER_ID])))
    interactions = build_interactions(_inputs(tables, test), test.as_of, model.interaction_config(base_config),
                                      product_ids=model.product_ids_)
    rows = model.rows_for(customers, interactions)
    user_items = select_rows(interactions.matrix, interactions.rows(customers))
    exclude = pairs_matrix(test.before, customers, model.product_ids_) if variant == NEW_ITEMS else None
    return top_k_frame(model, customers, rows, user_items, k, exclude)


def score(model: Recommender, tables: Tables, test: Holdout, k: int,
          base_config: InteractionConfig | None = None) -> list[dict]:
    """Metric rows (one per variant) of a model already fitted before ``test.as_of``."""
    out = []
    for variant in (NEW_ITEMS, ALL_ITEMS):
        recs = recommend_for_test(model, tables, test, k, variant, base_config)
        truth = test.truth[variant]
        out.append({"variant": variant, "customers": truth[CUSTOMER_ID].nunique(),
                    **ranking_metrics(recs, truth, k),
                    "coverage": catalog_coverage(recs, len(model.product_ids_), k)})
    return out


def per_customer_metrics(model: Recommender, tables: Tables, test: Holdout, k: int,
                         base_config: InteractionConfig | None = None) -> pd.DataFrame:
    """Every metric per test customer (new-items variant) of a model fitted before ``test.as_of``."""
    recs = recommend_for_test(model, tables, test, k, NEW_ITEMS, base_config)
    return per_customer(recs, test.truth[NEW_ITEMS], k)


def evaluate(tables: Tables, as_of: datetime, models: dict[str, Recommender], k: int = 10,
             until: datetime | None = None, base_config: InteractionConfig | None = None,
             progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Fit every model before ``as_of`` and score it on the window after: one row per model and variant
    (a model over its catalog cap, EASE on a large catalog, gets rows of NaN named with the reason)."""
    test = holdout(tables, as_of, until)
    rows = []
    for name, model in models.items():
        if progress:
            progress(name)
        try:
            model.fit_tables(tables, as_of, base_config)
        except CatalogTooLargeError as exc:
            rows += [{"model": f"{name} (skipped: {exc})", "variant": variant,
                      "customers": test.truth[variant][CUSTOMER_ID].nunique(),
                      **dict.fromkeys((*METRICS, "coverage"), float("nan"))} for variant in (NEW_ITEMS, ALL_ITEMS)]
            continue
        rows += [{"model": name, **r} for r in score(model, tables, test, k, base_config)]
    return pd.DataFrame(rows)
