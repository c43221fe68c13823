"""Reason codes: a model's largest contributions to one customer's score, in words."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd

_WINDOW = re.compile(r"^(?P<base>[a-z_]+?)_(?P<days>\d+)d$")

def _n(value: float, noun: str, plural: str | None = None) -> str:
    """``value`` as shown (no decimals) with its noun, singular for exactly 1: "1 order", "2 orders"."""
    shown = f"{value:.0f}"
    return f"{shown} {noun if shown in ('1', '-1') else plural or noun + 's'}"


def _last(days: str) -> str:
    return "the last day" if days == "1" else f"the last {days} days"


_PHRASES: dict[str, Callable[[float], str]] = {
    "recency_days": lambda v: f"no order for {_n(v, 'day')}",
    "days_since_first_order": lambda v: f"first order {_n(v, 'day')} ago",
    "tenure_days": lambda v: f"customer for {_n(v, 'day')}",
    "orders_count": lambda v: f"{_n(v, 'order')} in total",
    "revenue": lambda v: f"spent {v:,.2f} in total",
    "avg_order_value": lambda v: f"average order {v:,.2f}",
    "items_per_order": lambda v: f"{v:.1f} items per order",
    "distinct_products": lambda v: f"bought {_n(v, 'different product')}",
    "avg_unit_price": lambda v: f"average item price {v:,.2f}",
    "ipi_mean_days": lambda v: f"usually orders every {_n(v, 'day')}",
    "ipi_std_days": lambda v: f"order rhythm varies by {_n(v, 'day')}",
    "overdue_days": lambda v: f"{_n(v, 'day')} past the usual next order" if v > 0 else f"next order due in {_n(-v, 'day')}",
    "overdue_ratio": lambda v: f"{v:.1f}x the usual gap since the last order",
    "returns_count": lambda v: _n(v, "return"),
    "returned_value": lambda v: f"returned {v:,.2f}",
    "return_rate": lambda v: f"returned {v:.0%} of spend",
    "top_category_share": lambda v: f"{v:.0%} of spend in one category",
    "categories_count": lambda v: f"bought from {_n(v, 'category', 'categories')}",
    "days_since_last_open": lambda v: f"last opened an email {_n(v, 'day')} ago",
    "days_since_last_click": lambda v: f"last clicked an email {_n(v, 'day')} ago",
    "unsubscribed": lambda v: "unsubscribed from email" if v else "subscribed to email",
    "email_consent": lambda v: "gave email consent" if v else "no email consent",
    "cart_abandoned_1d": lambda v: "abandoned a cart in the last day" if v else "no cart abandoned in the last day",
    "cart_abandoned_7d": lambda v: "abandoned a cart this week" if v else "no cart abandoned this week",
    "abandoned_cart_value": lambda v: f"abandoned cart worth {v:,.2f}",
    "intent_score": lambda v: f"shopping intent score {v:.0f}",
    "rfm_recency": lambda v: f"recency score {v:.0f} of 5",
    "rfm_frequency": lambda v: f"frequency score {v:.0f} of 5",
    "rfm_monetary": lambda v: f"spend score {v:.0f} of 5",
}
_WINDOW_PHRASES: dict[str, Callable[[float, str], str]] = {
    "orders": lambda v, d: f"{_n(v, 'order')} in {_last(d)}",
    "revenue": lambda v, d: f"spent {v:,.2f} in {_last(d)}",
    "emails_sent": lambda v, d: f"{_n(v, 'email')} sent in {_last(d)}",
    "email_opens": lambda v, d: f"{_n(v, 'email open')} in {_last(d)}",
    "email_clicks": lambda v, d: f"{_n(v, 'email click')} in {_last(d)}",
    "open_rate": lambda v, d: f"opened {v:.0%} of emails in {_last(d)}",
    "click_rate": lambda v, d: f"clicked {v:.0%} of emails in {_last(d)}",
    "views": lambda v, d: f"{_n(v, 'product view')} in {_last(d)}",
    "cart_adds": lambda v, d: f"{_n(v, 'cart add')} in {_last(d)}",
    "checkouts": lambda v, d: f"{_n(v, 'checkout')} started in {_last(d)}",
}


def describe(column: str, value: float) -> str:
    """One feature value in words, e.g. ``describe("recency_days", 142) == "no order for 142 days"``."""
    if "=" in column:
        name, level = column.split("=", 1)
        label = name.replace("_", " ").replace("rfm segment", "RFM segment")
        return f"{label} {level}" if value else f"not {label} {level}"
    if value is None or np.isnan(float(value)):
        return {"recency_days": "never ordered", "days_since_last_open": "never opened an email",
                "days_since_last_click": "never clicked an email"}.get(column, f"no {column.replace('_', ' ')}")
    if column in _PHRASES:
        return _PHRASES[column](float(value))
    match = _WINDOW.match(column)
    if match and match["base"] in _WINDOW_PHRASES:
        return _WINDOW_PHRASES[match["base"]](float(value), match["days"])
    return f"{column.replace('_', ' ')} = {value:g}"


def top_reasons(contributions: np.ndarray, matrix: np.ndarray, columns: list[str], k: int = 3) -> np.ndarray:
    """For each row, the ``k`` features that raise the score most, strongest first, in words; an
    (n, k) object array with None where fewer than ``k`` features raise the score."""
    contrib = contributions[:, : len(columns)]
    order = np.argsort(-contrib, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(contrib))
    texts = np.full((len(contrib), k), None, dtype=object)
    for slot in range(order.shape[1]):
        feature = order[:, slot]
        raises = contrib[rows, feature] > 0
        for j in np.unique(feature[raises]):
            picked = np.flatnonzero(raises & (feature == j))
            # describe each distinct value once; rows that share it share the text
            values, inverse = np.unique(np.round(matrix[picked, j].astype(float), 4), return_inverse=True)
            phrases = np.array([describe(columns[j], v) for v in values], dtype=object)
            texts[picked, slot] = phrases[inverse.ravel()]
    return texts


def reasons_frame(reasons: np.ndarray) -> pd.DataFrame:
    """Columns ``reason_1`` .. ``reason_k`` from :func:`top_reasons`'s array."""
    return pd.DataFrame({f"reason_{i + 1}": reasons[:, i] for i in range(reasons.shape[1])})
