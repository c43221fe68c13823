"""RFM scoring and the segment table."""

from __future__ import annotations

import itertools

import pytest

from features.rfm import SEGMENTS, segment_for


def test_every_score_combination_has_exactly_the_documented_segment() -> None:
    seen = {segment_for(r, fm, orders) for r, fm, orders in itertools.product(range(1, 6), range(1, 6), (1, 2))}
    assert seen == set(SEGMENTS)


@pytest.mark.parametrize(("r", "fm", "orders", "segment"), [
    (5, 5, 9, "Champions"), (4, 4, 3, "Champions"), (3, 5, 4, "Loyal"), (5, 3, 2, "Loyal"),
    (5, 1, 1, "New"), (5, 1, 2, "Potential Loyalist"), (3, 2, 1, "Potential Loyalist"),
    (1, 5, 8, "Can't Lose"), (2, 3, 2, "At Risk"), (2, 2, 1, "Hibernating"), (1, 1, 1, "Lost"),
])
def test_segment_table(r: int, fm: int, orders: int, segment: str) -> None:
    assert segment_for(r, fm, orders) == segment
