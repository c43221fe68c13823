"""RFM scores (1-5) and named segments.

Scores rank the customers who have ordered before the as_of. With ``rank`` the 1-based rank of a
customer when sorted so that "better" comes last (older recency first; fewer orders first; less
revenue first), tied customers sharing the lowest rank, and ``n`` the number of such customers,
``pr = (rank - 1) / (n - 1)`` (0 when n = 1) and::

    score = min(5, 1 + floor(5 * pr))

Ties therefore always share a score (revenue is rounded to 6 decimals first, so that sums taken
in a different order tie too). ``FM = ceil((F + M) / 2)``. Segments are the first row of
:data:`SEGMENT_RULES` that matches; customers without an order have no scores and no segment.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SegmentRule:
    segment: str
    r_min: int = 1
    r_max: int = 5
    fm_min: int = 1
    fm_max: int = 5
    single_order_only: bool = False

    def matches(self, r: int, fm: int, orders_count: int) -> bool:
        return (
            self.r_min <= r <= self.r_max
            and self.fm_min <= fm <= self.fm_max
            and (not self.single_order_only or orders_count == 1)
        )


SEGMENT_RULES: tuple[SegmentRule, ...] = (
    SegmentRule("Champions", r_min=4, fm_min=4),
    SegmentRule("Loyal", r_min=3, fm_min=3),
    SegmentRule("New", r_min=4, fm_max=2, single_order_only=True),
    SegmentRule("Potential Loyalist", r_min=3, fm_max=2),
    SegmentRule("Can't Lose", r_max=2, fm_min=4),
    SegmentRule("At Risk", r_max=2, fm_min=3, fm_max=3),
    SegmentRule("Hibernating", r_min=2, r_max=2, fm_max=2),
    SegmentRule("Lost", r_max=1, fm_max=2),
)
SEGMENTS: tuple[str, ...] = tuple(rule.segment for rule in SEGMENT_RULES)


def segment_for(r: int, fm: int, orders_count: int) -> str:
    """The segment of one customer's scores."""
    for rule in SEGMENT_RULES:
        if rule.matches(r, fm, orders_count):
            return rule.segment
    raise ValueError(f"no RFM segment for R={r}, FM={fm}")


def segment_sql(r: str, fm: str, orders_count: str) -> str:
    """A SQL CASE expression equal to :func:`segment_for` over the named columns."""
    whens = []
    for rule in SEGMENT_RULES:
        cond = f"{r} BETWEEN {rule.r_min} AND {rule.r_max} AND {fm} BETWEEN {rule.fm_min} AND {rule.fm_max}"
        if rule.single_order_only:
            cond += f" AND {orders_count} = 1"
        whens.append(f"WHEN {cond} THEN '{rule.segment.replace(chr(39), chr(39) * 2)}'")
    return f"CASE {' '.join(whens)} END"


def score_sql(column: str, descending: bool) -> str:
    """SQL window expression giving the 1-5 score of ``column`` among rows with orders."""
    order = "DESC" if descending else "ASC"
    return (
        f"CAST(least(5, 1 + floor(5 * percent_rank() OVER (ORDER BY {column} {order} NULLS LAST))) AS INTEGER)"
    )
