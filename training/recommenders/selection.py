"""``--model auto``: the recommender chosen per shop on its own validation fold.

Every candidate (:data:`CANDIDATES`, default parameters, simplest first) is fitted on the fold's
input and scored on the fold's truth (new items), within a time budget: before each candidate its
seconds are estimated from the data's size (:func:`estimated_seconds`); one that would overrun what
is left of the budget is skipped with that reason (``popular``, the fallback, always runs). A
candidate that cannot fit the data (EASE on a catalog over its cap, the reranker without enough
dated history) is skipped with its error as the reason; any other exception is recorded as the
candidate's failure and the others are compared.

The winner: the best validation NDCG@k, unless a simpler candidate is not significantly worse: the
paired bootstrap (:func:`training.bootstrap.paired_mean`, per-customer NDCG@k, 95% interval) of
best minus simpler is computed for every simpler candidate in order, and the first one whose
interval includes zero is chosen. Simplicity order (fewer moving parts, faster to fit and to serve,
explainable as "bought together"): popular, item-kNN (cosine, BM25, TF-IDF), EASE, ALS, BPR, the
reranker.

The validation fold comes from :func:`training.protocols.validation_fold`: the window before the
backtest's holdout (time split) or each customer's latest day before their held-out one
(leave-latest-out); never the holdout itself.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from features.errors import InputError, SendwiseError
from features.interactions import build_interactions
from features.schema import CUSTOMER_ID
from features.tables import Tables
from training.bootstrap import paired_mean
from training.protocols import NEW_ITEMS, Holdout
from training.recommenders.evaluation import fit_for_test, recommend_for_test
from training.recommenders.metrics import catalog_coverage, per_customer
from training.recommenders.models import make_recommender

AUTO = "auto"
DEFAULT_BUDGET_S = 900.0
CHOSEN = "chosen"
# seconds per million interactions (customer x product pairs) to fit and score: about twice the fit
# seconds measured on the validation folds of Online Retail, MovieLens and the demo shop on 2 cores
# (benchmarks/results/model_choice.json: reranker 300-360 s per million, BPR 26-56, ALS 14-17, item-kNN
# under 3); EASE adds a cubic term in products (3.7 s at 3,158 products, 59 s at 9,298)
SECONDS_PER_MILLION_PAIRS = {"popular": 1.0, "itemknn": 10.0, "ease": 20.0, "als": 40.0, "bpr": 120.0,
                             "reranker": 800.0}
EASE_SECONDS_AT_6000_PRODUCTS = 25.0


@dataclass(frozen=True)
class Candidate:
    name: str
    kind: str
    params: dict = field(default_factory=dict)


def candidates(window_days: int = 90) -> tuple[Candidate, ...]:
    """Every candidate with its default parameters, simplest first (the reranker learns from windows
    as long as the validation window)."""
    return (Candidate("popular", "popular"),
            *(Candidate(f"itemknn-{s}", "itemknn", {"similarity": s}) for s in ("cosine", "bm25", "tfidf")),
            Candidate("ease", "ease"), Candidate("als", "als"), Candidate("bpr", "bpr"),
            Candidate("reranker", "reranker", {"window_days": window_days}))


@dataclass
class CandidateResult:
    candidate: Candidate
    status: str  # CHOSEN, or why not
    ndcg: float = float("nan")
    precision: float = float("nan")
    recall: float = float("nan")
    coverage: float = float("nan")
    fit_seconds: float = float("nan")
    per_customer: pd.Series | None = None  # NDCG@k per validation customer

    @property
    def scored(self) -> bool:
        return self.per_customer is not None


@dataclass
class ModelChoice:
    """The outcome of :func:`choose_model`: every candidate's row and the one chosen."""

    protocol: str
    protocol_reason: str
    k: int
    customers: int
    results: list[CandidateResult]
    chosen: Candidate
    reason: str

    def table(self) -> pd.DataFrame:
        """One row per candidate: validation NDCG@k, precision, recall, coverage, fit seconds, status."""
        k = self.k
        return pd.DataFrame([{"candidate": r.candidate.name, "model": r.candidate.kind, f"ndcg_at_{k}": r.ndcg,
                              f"precision_at_{k}": r.precision, f"recall_at_{k}": r.recall, "coverage": r.coverage,
                              "fit_seconds": r.fit_seconds, "status": r.status} for r in self.results])

    def render(self) -> str:
        """The table as plain text lines, with the protocol and the reason for the choice."""
        k = self.k
        lines = [(f"model choice on the validation fold ({self.protocol}: {self.protocol_reason}; "
                 f"{self.customers:,} customers, new items)"),
                 (f"{'candidate':<15} {'NDCG@' + str(k):>8} {'prec@' + str(k):>8} {'recall@' + str(k):>9} "
                 f"{'coverage':>8} {'fit s':>8}  status")]
        for r in self.results:
            figures = (f"{r.ndcg:>8.4f} {r.precision:>8.4f} {r.recall:>9.4f} {r.coverage:>8.3f} {r.fit_seconds:>8.1f}"
                       if r.scored else f"{'-':>8} {'-':>8} {'-':>9} {'-':>8} {'-':>8}")
            lines.append(f"{r.candidate.name:<15} {figures}  {r.status}")
        lines.append(f"chosen: {self.chosen.name} ({self.reason})")
        return "\n".join(lines)


def estimated_seconds(kind: str, pairs: int, products: int) -> float:
    """Seconds to fit and score ``kind`` on ``pairs`` interactions among ``products`` products."""
    seconds = SECONDS_PER_MILLION_PAIRS[kind] * pairs / 1e6
    if kind == "ease":
        seconds += EASE_SECONDS_AT_6000_PRODUCTS * (products / 6000) ** 3
    return seconds


def _score(candidate: Candidate, tables: Tables, fold: Holdout, k: int) -> CandidateResult:
    start = time.perf_counter()
    model = fit_for_test(make_recommender(candidate.kind, **candidate.params), tables, fold)
    fit_seconds = time.perf_counter() - start
    recs = recommend_for_test(model, tables, fold, k, NEW_ITEMS)
    truth = fold.truth[NEW_ITEMS]
    metrics = per_customer(recs, truth, k)
    return CandidateResult(candidate, "", float(metrics["ndcg"].mean()), float(metrics["precision"].mean()),
                           float(metrics["recall"].mean()), catalog_coverage(recs, len(model.product_ids_), k),
                           fit_seconds, metrics["ndcg"])


def winner(results: list[CandidateResult]) -> tuple[CandidateResult, str]:
    """The best validation NDCG, or the simplest candidate it is not significantly better than."""
    scored = [r for r in results if r.scored]
    if not scored:
        raise InputError("no candidate recommender could be scored on the validation fold: "
                         + "; ".join(f"{r.candidate.name} {r.status}" for r in results))
    best = max(scored, key=lambda r: r.ndcg)  # the first (simplest) of equals
    for simpler in scored[:scored.index(best)]:
        joined = pd.concat({"simpler": simpler.per_customer, "best": best.per_customer}, axis=1).fillna(0.0)
        diff = paired_mean(joined["simpler"].to_numpy(), joined["best"].to_numpy(), "ndcg")
        if not diff.significant:
            why = (f"{best.candidate.name} scored highest ({best.ndcg:.4f}) but not significantly above the "
                   f"simpler {simpler.candidate.name} ({simpler.ndcg:.4f}): difference {diff.difference:+.4f}, "
                   f"95% interval [{diff.interval[0]:+.4f}, {diff.interval[1]:+.4f}]")
            return simpler, why
    if best is scored[0]:
        return best, f"the highest validation NDCG ({best.ndcg:.4f}) and the simplest"
    return best, (f"the highest validation NDCG ({best.ndcg:.4f}), significantly above every simpler candidate "
                  "(paired bootstrap, 95%)")


def choose_model(tables: Tables, fold: Holdout, k: int = 10, budget_s: float = DEFAULT_BUDGET_S,
                 window_days: int = 90, protocol_reason: str = "",
                 progress: Callable[[str], None] | None = None,
                 pool: tuple[Candidate, ...] | None = None) -> ModelChoice:
    """Fit every candidate of ``pool`` (default: :func:`candidates`, simplest first) on ``fold``'s
    input (``fold.inputs``, else ``tables`` before ``fold.as_of``), score it on ``fold``'s truth and
    choose one (see the module)."""
    say = progress or (lambda _: None)
    inputs = fold.inputs if fold.inputs is not None else tables
    matrix = build_interactions(inputs, fold.as_of).matrix
    pairs, products = int(matrix.nnz), int((np.asarray((matrix > 0).sum(axis=0)).ravel() > 0).sum())
    started = time.perf_counter()
    results: list[CandidateResult] = []
    for candidate in pool or candidates(window_days):
        left = budget_s - (time.perf_counter() - started)
        estimate = estimated_seconds(candidate.kind, pairs, products)
        if candidate.kind != "popular" and estimate > left:
            results.append(CandidateResult(candidate, f"skipped: estimated {estimate:,.0f} s, more than the "
                                                      f"{max(left, 0):,.0f} s left of the {budget_s:,.0f} s budget"))
            continue
        say(f"model choice: {candidate.name}")
        try:
            results.append(_score(candidate, tables, fold, k))
        except SendwiseError as exc:  # the data does not suit it (a catalog over EASE's cap, too short a history)
            results.append(CandidateResult(candidate, f"skipped: {str(exc).rstrip('.')}"))
        except Exception as exc:  # noqa: BLE001 - one candidate's failure leaves the others to choose from
            results.append(CandidateResult(candidate, f"failed: {type(exc).__name__}: {exc}"))
    best, reason = winner(results)
    top = max((r for r in results if r.scored), key=lambda r: r.ndcg)
    for r in results:
        if r is best:
            r.status = CHOSEN
        elif r is top:
            r.status = f"highest, not significantly above {best.candidate.name}"
        elif r.scored:
            r.status = f"{r.ndcg - best.ndcg:+.4f} against {best.candidate.name}"
    customers = int(fold.truth[NEW_ITEMS][CUSTOMER_ID].nunique())
    return ModelChoice(fold.protocol, protocol_reason, k, customers, results, best.candidate, reason)


def log_choice(choice: ModelChoice) -> None:
    """Into the active MLflow run: the table (``model_choice.json`` and ``model_choice.txt``) and the
    choice's parameters."""
    mlflow.log_table(choice.table(), "model_choice.json")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model_choice.txt"
        path.write_text(choice.render() + "\n")
        mlflow.log_artifact(str(path))
    mlflow.log_params({"auto_chosen": choice.chosen.name, "auto_protocol": choice.protocol,
                       "auto_protocol_reason": choice.protocol_reason[:500], "auto_reason": choice.reason[:500],
                       "auto_validation_customers": choice.customers})
