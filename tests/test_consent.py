"""Consent: a customer without email consent on record, or unsubscribed, only ever gets ``suppress``,
whatever the policy, exploration, a model or an experiment says."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.tables import Tables
from serving.consent import NO_CONSENT, REFUSED, UNSUBSCRIBED_REASON, ConsentRule, enforce_consent
from serving.policy import OPS, SUPPRESS, ActionRule, Condition, Decision, Policy, decide

SIGNALS = ("email_consent", "unsubscribed", "emails_sent_7d", "churn_probability", "purchase_probability",
           "cart_abandoned_1d", "views_1d", "rfm_segment", "lifecycle_stage", "recency_days")
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 50), st.floats(0, 1), st.sampled_from(
    ["Champions", "Lost", "new", "prospect", "loyal"]))
ACTIONS = ("cart_recovery", "winback", "cross_sell", "newsletter", "discount_blast")

conditions = st.builds(Condition, signal=st.sampled_from(SIGNALS), op=st.sampled_from(sorted(set(OPS) - {"in"})),
                       value=VALUES)
rules = st.builds(ActionRule, action=st.sampled_from(ACTIONS), when=st.tuples(conditions) | st.tuples(),
                  content_blocks=st.just(("product_block",)))


@st.composite
def policies(draw) -> Policy:
    """Any valid policy, including ones with no suppression rules at all and full exploration."""
    actions = draw(st.lists(rules, min_size=0, max_size=5)) + [ActionRule(action=draw(st.sampled_from(ACTIONS)))]
    return Policy(suppress_when=tuple(draw(st.lists(conditions, max_size=2))), actions=tuple(actions),
                  exploration_epsilon=draw(st.sampled_from([0.0, 0.3, 1.0])))


# consent as the snapshot can hold it: python or numpy booleans, missing, or absent altogether
VALUE_OF = {"true": True, "false": False, "none": None, "np.true": np.bool_(True), "np.false": np.bool_(False)}
ABSENT = "absent"

# May the customer be emailed? (email_consent, unsubscribed) -> (rule "recorded", rule "unless-refused"),
# with the reasons a blocked customer's suppress carries under each rule. Written out, not computed.
Y, N = True, False
MAY_EMAIL: dict[tuple[str, str], tuple[bool, bool]] = {
    ("true", "false"): (Y, Y), ("true", "np.false"): (Y, Y), ("true", "none"): (Y, Y), ("true", "absent"): (Y, Y),
    ("true", "true"): (N, N), ("true", "np.true"): (N, N),
    ("np.true", "false"): (Y, Y), ("np.true", "np.false"): (Y, Y), ("np.true", "none"): (Y, Y),
    ("np.true", "absent"): (Y, Y), ("np.true", "true"): (N, N), ("np.true", "np.true"): (N, N),
    ("false", "false"): (N, N), ("false", "np.false"): (N, N), ("false", "none"): (N, N), ("false", "absent"): (N, N),
    ("false", "true"): (N, N), ("false", "np.true"): (N, N),
    ("np.false", "false"): (N, N), ("np.false", "np.false"): (N, N), ("np.false", "none"): (N, N),
    ("np.false", "absent"): (N, N), ("np.false", "true"): (N, N), ("np.false", "np.true"): (N, N),
    ("none", "false"): (N, Y), ("none", "np.false"): (N, Y), ("none", "none"): (N, Y), ("none", "absent"): (N, Y),
    ("none", "true"): (N, N), ("none", "np.true"): (N, N),
    ("absent", "false"): (N, Y), ("absent", "np.false"): (N, Y), ("absent", "none"): (N, Y),
    ("absent", "absent"): (N, Y), ("absent", "true"): (N, N), ("absent", "np.true"): (N, N),
}
CONSENT_KEYS = [*VALUE_OF, ABSENT]


def with_consent(signals: dict, consent: str, unsubscribed: str) -> dict:
    signals = dict(signals)
    for name, key in (("email_consent", consent), ("unsubscribed", unsubscribed)):
        if key != ABSENT:
            signals[name] = VALUE_OF[key]
    return signals


def test_the_truth_table_covers_every_pair() -> None:
    assert set(MAY_EMAIL) == {(c, u) for c in CONSENT_KEYS for u in CONSENT_KEYS}


@pytest.mark.parametrize(("consent", "unsubscribed", "rule", "reasons"), [
    ("none", "absent", ConsentRule.RECORDED, [NO_CONSENT]),
    ("false", "absent", ConsentRule.RECORDED, [NO_CONSENT]),
    ("false", "absent", ConsentRule.UNLESS_REFUSED, [REFUSED]),
    ("np.false", "np.true", ConsentRule.UNLESS_REFUSED, [REFUSED, UNSUBSCRIBED_REASON]),
    ("true", "true", ConsentRule.RECORDED, [UNSUBSCRIBED_REASON]),
    ("absent", "true", ConsentRule.UNLESS_REFUSED, [UNSUBSCRIBED_REASON]),
])
def test_a_suppressed_customer_is_told_why(consent: str, unsubscribed: str, rule: ConsentRule,
                                           reasons: list[str]) -> None:
    decision = Decision(action="winback", offer="none", content_blocks=["product_block"], reasons=["policy"],
                        probability=1.0, explored=False)
    final = enforce_consent(decision, with_consent({}, consent, unsubscribed), rule)
    assert (final.action, final.reasons, final.content_blocks) == (SUPPRESS, reasons, [])


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies(), signals=st.fixed_dictionaries({s: VALUES for s in SIGNALS[2:]}),
       consent=st.sampled_from(CONSENT_KEYS), unsubscribed=st.sampled_from(CONSENT_KEYS), seed=st.integers(0, 2**16),
       override=st.sampled_from(ACTIONS) | st.none(), rule=st.sampled_from(ConsentRule))
def test_no_consent_is_always_suppressed(policy: Policy, signals: dict, consent: str, unsubscribed: str, seed: int,
                                         override: str | None, rule: ConsentRule) -> None:
    signals = with_consent(signals, consent, unsubscribed)
    decision = decide(policy, signals, random.Random(seed))
    if override is not None:  # what an experiment or a model might put in its place
        decision = Decision(action=override, offer="none", content_blocks=["product_block"], reasons=["variant B"],
                            probability=0.5, explored=False)
    final = enforce_consent(decision, signals, rule)
    if MAY_EMAIL[consent, unsubscribed][rule is ConsentRule.UNLESS_REFUSED]:
        assert final == decision  # the gate changes nothing for a customer who may be emailed
    else:
        assert final.action == SUPPRESS and final.content_blocks == [] and final.probability == 1.0
        if decision.action != SUPPRESS:
            assert set(final.reasons) <= {NO_CONSENT, REFUSED, UNSUBSCRIBED_REASON} and final.reasons


# A policy that targets exactly the customers without consent, explores always, suppresses nothing.
HOSTILE_POLICY = """
actions:
  - {action: discount_blast, when: [{signal: email_consent, op: "==", value: false}], content_blocks: [product_block]}
  - {action: winback, when: [{signal: unsubscribed, op: "==", value: true}], content_blocks: [product_block]}
  - {action: newsletter, content_blocks: [product_block]}
exploration_epsilon: 1.0
"""


def test_the_service_suppresses_every_customer_without_consent(served_env: dict, demo_tables: Tables,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every customer of the generated shop (and unknown ids) through the real service, with a
    hostile policy and an 'experiment' that overrides half the decisions."""
    policy = tmp_path / "hostile.yaml"
    policy.write_text(HOSTILE_POLICY)
    for key, value in served_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SENDWISE_POLICY", str(policy))
    monkeypatch.setenv("SENDWISE_EXPOSURE_LOG", str(tmp_path / "exposures.jsonl"))
    import serving.answers as answers_module  # builds the decisions the service answers
    import serving.service as service_module
    from serving.schemas import NextBestActionBatchRequest

    real_decide, rng = answers_module.decide, random.Random(3)

    def experiment(policy: Policy, signals: dict, generator: random.Random) -> Decision:
        decision = real_decide(policy, signals, generator)
        if rng.random() < 0.5:  # variant B: always send the promotion
            return Decision(action="discount_blast", offer="discount_30", content_blocks=["product_block"],
                            reasons=["experiment variant B"], probability=0.5, explored=False)
        return decision

    monkeypatch.setattr(answers_module, "decide", experiment)
    svc = service_module.Sendwise.inner()
    ids = [r[0] for r in demo_tables.con.sql("SELECT customer_id FROM customers ORDER BY 1").fetchall()]
    blocked = {r[0] for r in demo_tables.con.sql(
        """SELECT customer_id FROM customers WHERE email_consent IS NOT TRUE
           UNION SELECT customer_id FROM events WHERE event_type = 'unsubscribe'""").fetchall()}
    results = svc.next_best_action_batch(NextBestActionBatchRequest(customer_ids=ids + ["unknown-1", "unknown-2"]))
    actions = {r.customer_id: r.action for r in results.results}
    assert len(blocked) > 30 and len(actions) == len(ids) + 2
    assert {c for c, a in actions.items() if a != SUPPRESS} == set(ids) - blocked  # consenting ones are emailed
    assert all(actions[c] == SUPPRESS for c in blocked | {"unknown-1", "unknown-2"})
    assert all(r.product_block is None for r in results.results if r.action == SUPPRESS)


def test_unless_refused_emails_customers_without_a_record(served_env: dict, demo_tables: Tables, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--consent unless-refused`` an unknown customer gets a cold-start action, a recorded
    refusal or an unsubscribe still gets ``suppress``."""
    for key, value in served_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SENDWISE_CONSENT", "unless-refused")
    monkeypatch.setenv("SENDWISE_EXPOSURE_LOG", str(tmp_path / "exposures.jsonl"))
    from serving.schemas import NextBestActionBatchRequest
    from serving.service import Sendwise

    refused = {r[0] for r in demo_tables.con.sql(
        """SELECT customer_id FROM customers WHERE email_consent = false
           UNION SELECT customer_id FROM events WHERE event_type = 'unsubscribe'""").fetchall()}
    results = Sendwise.inner().next_best_action_batch(NextBestActionBatchRequest(
        customer_ids=sorted(refused)[:20] + ["unknown-1"])).results
    assert len(refused) > 20 and all(r.action == SUPPRESS for r in results[:20])
    assert results[-1].action == "newsletter" and not results[-1].known  # the policy's default for no signals
