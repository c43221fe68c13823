"""RFM scores (1-5) and named segments.

Scores rank the customers who have ordered before the as_of. With ``rank`` the 1-based rank of a
customer when sorted so that "better" comes last (older recency first; fewer orders first; less
revenue first), tied customers sharing the lowest rank, and ``n`` the number of such customers,
``pr = (rank - 1) / (n - 1)`` (0 when n = 1) and::

    score = min(5, 1 + floor(5 * pr))

Ties therefore always share a score (revenue is rounded to 6 decimals first, so that sums taken
in a different order tie too). ``FM = ceil((F + M) / 2)``. Segments are the first row of
:data:`SEGMENT_RULES` that matches; customers without an order have no scores and no segment.

Two ways to compute the scores (:class:`RfmRanks`): ``exact``, the ``percent_rank`` window of
:func:`score_sql` (every engine; on Spark a window without a partition, so one task sorts every
buyer), and ``approximate`` (Spark's ``spark.rfm_ranks``), :func:`approximate_scores_sql`: cut points
from one distributed ``percentile_approx`` aggregate, the same scores when its accuracy is above twice
the number of buyers (plus 8).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from features.errors import InputError


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


class RfmRanks(StrEnum):
    """How the feature query ranks the RFM scores."""

    EXACT = "exact"  # percent_rank over every buyer
    APPROXIMATE = "approximate"  # cut points from percentile_approx (Spark)


APPROX_ACCURACY = 10_000  # percentile_approx's accuracy: a rank error of about buyers / 10,000
_FRACTION_SLACK = 1e-12  # below k / 5, so that floating point cannot push ceil(p * N) past k * N / 5


def parse_rfm_ranks(value: RfmRanks | str) -> RfmRanks:
    """``value`` as an :class:`RfmRanks`; an InputError naming the setting and its values otherwise."""
    try:
        return RfmRanks(value)
    except ValueError:
        raise InputError(f"spark.rfm_ranks must be one of {', '.join(RfmRanks)}; got {value!r}") from None


@dataclass(frozen=True)
class ScoreColumn:
    """One score to compute: its name, the (portable SQL) value it ranks, and whether larger is worse."""

    name: str
    of: str
    descending: bool = False


def approximate_scores_sql(rows: str, where: str | None, scores: Sequence[ScoreColumn], key: str,
                           quantile: Callable[[str, float, int], str], accuracy: int = APPROX_ACCURACY) -> str:
    """SQL of ``key`` and the 1-5 ``scores`` of the ``rows`` where ``where`` holds, from cut points.

    With ``v`` the value made "better is larger" (negated when ``descending``; NULL, last in the exact
    order, as +infinity), n the rows and ``c_k = ceil(k (n - 1) / 5)``, :func:`score_sql` gives score
    k + 1 or more exactly to the values above the ``c_k``-th smallest, so the score is 1 + the number of
    the four cut points ``v`` is above (ties share a score; n = 1 scores 1, as percent_rank's 0). The
    ``c_k``-th smallest of n values is the ``ceil(k N / 5)``-th smallest of N = n + 4 once k copies of
    -infinity and 4 - k of +infinity are added, a position that no longer depends on n: so each cut
    point is one ``quantile(value, k / 5, accuracy)`` over those rows, all of them in one aggregate over
    every partition, cross-joined back. An ``accuracy`` above 2 N gives :func:`score_sql`'s scores: Spark's
    summary gives each value ``floor(2 N / accuracy)`` ranks of slack, none then (an accuracy just
    above N is not enough)."""
    if accuracy < 1:
        raise InputError(f"the accuracy of the approximate RFM ranks must be a positive integer; got {accuracy}")
    inf, minus_inf = "CAST('Infinity' AS DOUBLE)", "CAST('-Infinity' AS DOUBLE)"
    filtered = f" WHERE {where}" if where else ""
    values = ", ".join(f"coalesce({'-' if s.descending else ''}CAST({s.of} AS DOUBLE), {inf}) AS {s.name}"
                       for s in scores)
    nulls = ", ".join(f"CAST(NULL AS DOUBLE) AS {s.name}" for s in scores)
    cuts = ", ".join(
        quantile(f"CASE WHEN _pad = 0 THEN {s.name} WHEN _pad <= {k} THEN {minus_inf} ELSE {inf} END",
                 k / 5 - _FRACTION_SLACK, accuracy) + f" AS {s.name}_{k}"
        for s in scores for k in range(1, 5))
    picked = []
    for s in scores:
        above = " + ".join(f"CAST(v.{s.name} > c.{s.name}_{k} AS INT)" for k in range(1, 5))
        picked.append(f"CASE WHEN c._n = 1 THEN 1 ELSE 1 + {above} END AS {s.name}")
    buyers = f"SELECT {key}, {values} FROM {rows}{filtered}"
    padded = (f"SELECT 0 AS _pad, {', '.join(s.name for s in scores)} FROM ({buyers}) b "
              f"UNION ALL SELECT _pad, {nulls} FROM VALUES (1), (2), (3), (4) AS pads(_pad)")
    aggregate = f"SELECT count_if(_pad = 0) AS _n, {cuts} FROM ({padded}) p"
    return f"SELECT v.{key}, {', '.join(picked)} FROM ({buyers}) v CROSS JOIN ({aggregate}) c"
