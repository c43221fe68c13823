"""The share of customers who may be emailed: the table-wide rule agrees with the per-customer one."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.schema import EMAIL_CONSENT, UNSUBSCRIBED
from serving.consent import ConsentRule, consent_blockers, emailable_line, may_email

flags = st.sampled_from([True, False, None])


@given(rows=st.lists(st.tuples(flags, flags), max_size=30), rule=st.sampled_from(list(ConsentRule)))
def test_may_email_is_consent_blockers_row_by_row(rows, rule):
    frame = pd.DataFrame(rows, columns=[EMAIL_CONSENT, UNSUBSCRIBED], dtype=object)
    expected = [not consent_blockers({EMAIL_CONSENT: c, UNSUBSCRIBED: u}, rule) for c, u in rows]
    assert may_email(frame, rule).tolist() == expected


@pytest.mark.parametrize(("rule", "expected"), [(ConsentRule.RECORDED, 0), (ConsentRule.UNLESS_REFUSED, 3)])
def test_data_without_consent_columns(rule, expected):
    assert may_email(pd.DataFrame({"customer_id": ["a", "b", "c"]}), rule).sum() == expected


def test_line_and_warning_name_the_rule_and_the_setting():
    line, warning = emailable_line(pd.Series([False, False]), ConsentRule.RECORDED)
    assert line == "emailable: 0 of 2 customers (0.0%) under consent rule recorded"
    assert "consent: unless-refused" in warning and "recorded" in warning
    line, warning = emailable_line(pd.Series([True, False, True, True]), ConsentRule.UNLESS_REFUSED)
    assert line == "emailable: 3 of 4 customers (75.0%) under consent rule unless-refused"
    assert warning is None
