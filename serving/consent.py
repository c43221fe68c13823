"""Email consent, enforced on every next-best-action after the policy, exploration and any
experiment: a customer without recorded consent, or who unsubscribed, only ever gets ``suppress``.

Consent must be on record (``email_consent`` true in the snapshot). A customer the service does not
know (or who was forgotten), and a shop whose data has no consent column, get ``suppress``.
"""

from __future__ import annotations

from features.schema import EMAIL_CONSENT, UNSUBSCRIBED
from serving.policy import SUPPRESS, Decision

NO_CONSENT = "no email consent on record"
UNSUBSCRIBED_REASON = "unsubscribed from email"


def consent_blockers(signals: dict) -> list[str]:
    """Why the customer may not be emailed (empty when they may)."""
    blockers = []
    consent = signals.get(EMAIL_CONSENT)
    if consent is None or not bool(consent):
        blockers.append(NO_CONSENT)
    unsubscribed = signals.get(UNSUBSCRIBED)
    if unsubscribed is not None and bool(unsubscribed):
        blockers.append(UNSUBSCRIBED_REASON)
    return blockers


def enforce_consent(decision: Decision, signals: dict) -> Decision:
    """``decision`` when the customer may be emailed, else ``suppress`` with the reasons."""
    if decision.action == SUPPRESS:
        return decision
    blockers = consent_blockers(signals)
    if not blockers:
        return decision
    return Decision(action=SUPPRESS, offer="none", content_blocks=[], reasons=blockers, probability=1.0,
                    explored=False)
