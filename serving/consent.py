"""Email consent, enforced on every next-best-action after the policy, exploration and any
experiment: a customer without recorded consent, or who unsubscribed, only ever gets ``suppress``.

Two rules (``sendwise serve --consent``):

* ``recorded`` (the default): consent must be on record (``email_consent`` true in the snapshot). A
  customer the service does not know (or who was forgotten), and a shop whose data has no consent
  column, get ``suppress``.
* ``unless-refused``: for a shop that keeps consent upstream (its email platform sends only to
  subscribers) or has none in its data: only a recorded refusal (``email_consent`` false) or an
  unsubscribe suppresses.
"""

from __future__ import annotations

from enum import StrEnum

import pandas as pd

from features.schema import EMAIL_CONSENT, UNSUBSCRIBED
from serving.policy import SUPPRESS, Decision

NO_CONSENT = "no email consent on record"
REFUSED = "refused email consent"
UNSUBSCRIBED_REASON = "unsubscribed from email"


class ConsentRule(StrEnum):
    RECORDED = "recorded"
    UNLESS_REFUSED = "unless-refused"


def consent_blockers(signals: dict, rule: ConsentRule = ConsentRule.RECORDED) -> list[str]:
    """Why the customer may not be emailed (empty when they may)."""
    blockers = []
    consent = signals.get(EMAIL_CONSENT)
    if consent is None:
        if rule is ConsentRule.RECORDED:
            blockers.append(NO_CONSENT)
    elif not bool(consent):
        blockers.append(NO_CONSENT if rule is ConsentRule.RECORDED else REFUSED)
    unsubscribed = signals.get(UNSUBSCRIBED)
    if unsubscribed is not None and bool(unsubscribed):
        blockers.append(UNSUBSCRIBED_REASON)
    return blockers


def enforce_consent(decision: Decision, signals: dict, rule: ConsentRule = ConsentRule.RECORDED) -> Decision:
    """``decision`` when the customer may be emailed, else ``suppress`` with the reasons."""
    if decision.action == SUPPRESS:
        return decision
    blockers = consent_blockers(signals, rule)
    if not blockers:
        return decision
    return Decision(action=SUPPRESS, offer="none", content_blocks=[], reasons=blockers, probability=1.0,
                    explored=False)


def may_email(signals: pd.DataFrame, rule: ConsentRule = ConsentRule.RECORDED) -> pd.Series:
    """Per row of ``signals`` (columns ``email_consent`` and ``unsubscribed`` where the data has
    them), whether :func:`consent_blockers` is empty: the same rule, for a whole table at once."""
    missing = pd.Series(pd.NA, index=signals.index, dtype="boolean")
    consent = signals[EMAIL_CONSENT].astype("boolean") if EMAIL_CONSENT in signals else missing
    unsubscribed = signals[UNSUBSCRIBED].astype("boolean") if UNSUBSCRIBED in signals else missing
    allowed = consent.fillna(False) if rule is ConsentRule.RECORDED else consent.fillna(True)
    return (allowed & ~unsubscribed.fillna(False)).astype(bool)


def emailable_line(allowed: pd.Series, rule: ConsentRule) -> tuple[str, str | None]:
    """``emailable: N of M customers (X%) under consent rule R``, and a warning when nobody may be
    emailed that names the rule and the setting that changes it (None otherwise)."""
    n, m = int(allowed.sum()), len(allowed)
    line = f"emailable: {n:,} of {m:,} customers ({n / m if m else 0:.1%}) under consent rule {rule.value}"
    if m and n == 0:
        fix = ("set `consent: unless-refused` in sendwise.yaml (or pass --consent unless-refused) if the shop "
               "keeps consent upstream, or add email_consent to the customers table"
               if rule is ConsentRule.RECORDED else "check the customers' email_consent and unsubscribe events")
        return line, f"no customer may be emailed under consent rule {rule.value}: every answer will be suppress; {fix}."
    return line, None
