"""Evaluation plots as PNG files (ROC, precision-recall, calibration, cumulative gains, importance)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve


def save_figure(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roc_plot(y: np.ndarray, scores: dict[str, np.ndarray], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (holdout)")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def pr_plot(y: np.ndarray, scores: dict[str, np.ndarray], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        precision, recall, _ = precision_recall_curve(y, s)
        ax.plot(recall, precision, label=name)
    ax.axhline(np.mean(y), color="k", ls=":", lw=1, label="base rate")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (holdout)")
    ax.legend(loc="upper right")
    return save_figure(fig, path)


def calibration_plot(y: np.ndarray, probabilities: dict[str, np.ndarray], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, p in probabilities.items():
        observed, predicted = calibration_curve(y, p, n_bins=10, strategy="quantile")
        ax.plot(predicted, observed, "o-", label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect")
    ax.set(xlabel="predicted probability", ylabel="observed rate", title="Calibration (holdout)")
    ax.legend(loc="upper left")
    return save_figure(fig, path)


def gains_plot(y: np.ndarray, scores: dict[str, np.ndarray], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    share = np.arange(1, len(y) + 1) / len(y)
    for name, s in scores.items():
        captured = np.cumsum(np.asarray(y)[np.argsort(-s, kind="stable")]) / np.sum(y)
        ax.plot(share, captured, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="random")
    ax.set(xlabel="share of customers targeted", ylabel="share of positives captured",
           title="Cumulative gains (holdout)")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def importance_plot(columns: list[str], contributions: np.ndarray, path: Path, top: int = 20) -> Path:
    """Mean |contribution| to the log-odds per feature (bias column dropped)."""
    mean_abs = np.abs(contributions[:, :-1]).mean(axis=0)
    order = np.argsort(mean_abs)[-top:]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(order) + 1))
    ax.barh([columns[i] for i in order], mean_abs[order])
    ax.set(xlabel="mean |contribution| to log-odds", title="Feature importance (holdout)")
    return save_figure(fig, path)


def ranking_plot(table, path: Path, k: int = 10) -> Path:
    """Bars of NDCG@k, recall@k and hit rate@k per recommender model, one panel per variant."""
    variants = list(dict.fromkeys(table["variant"]))
    fig, axes = plt.subplots(1, len(variants), figsize=(5 * len(variants), 4), squeeze=False)
    for ax, variant in zip(axes[0], variants, strict=True):
        rows = table[table["variant"] == variant].sort_values("ndcg")
        y = np.arange(len(rows))
        for offset, metric in zip((-0.27, 0.0, 0.27), ("ndcg", "recall", "hit_rate"), strict=True):
            ax.barh(y + offset, rows[metric], height=0.25, label=f"{metric}@{k}")
        ax.set_yticks(y, rows["model"])
        ax.set(title=f"{variant} (holdout)", xlabel="score")
        ax.legend(loc="lower right")
    return save_figure(fig, path)
