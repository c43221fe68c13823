"""The next-best-action policy: precedence, suppression that nothing overrides, exploration."""

from __future__ import annotations

import random

import pytest

from features.errors import InputError, NotFoundError
from serving.policy import SUPPRESS, Policy, decide

POLICY = Policy.load()
ENGAGED = {"email_consent": True, "unsubscribed": False, "emails_sent_7d": 0}


@pytest.mark.parametrize(("signals", "action"), [
    (ENGAGED | {"cart_abandoned_1d": True, "churn_probability": 0.9}, "cart_recovery"),
    (ENGAGED | {"views_1d": 2, "churn_probability": 0.9}, "browse_abandonment"),
    (ENGAGED | {"churn_probability": 0.7, "rfm_segment": "Champions"}, "winback"),
    (ENGAGED | {"purchase_probability": 0.6, "recency_days": 10}, "cross_sell"),
    (ENGAGED | {"purchase_probability": 0.6, "recency_days": 90}, "newsletter"),
    (ENGAGED | {"rfm_segment": "Champions", "churn_probability": 0.1}, "loyalty_reward"),
    (ENGAGED | {"lifecycle_stage": "new"}, "onboarding"),
    ({}, "newsletter"),  # every signal missing: no condition holds but the default
])
def test_first_matching_action_wins(signals: dict, action: str) -> None:
    assert decide(POLICY, signals, random.Random(0)).action == action


@pytest.mark.parametrize("blocker", [{"email_consent": False}, {"unsubscribed": True}, {"emails_sent_7d": 3}])
def test_suppression_beats_everything_even_exploration(blocker: dict) -> None:
    explore_always = POLICY.model_copy(update={"exploration_epsilon": 1.0})
    signals = ENGAGED | {"cart_abandoned_1d": True, "churn_probability": 0.95} | blocker
    for seed in range(50):
        decision = decide(explore_always, signals, random.Random(seed))
        assert decision.action == SUPPRESS and decision.probability == 1.0 and decision.content_blocks == []


def test_exploration_logs_the_probability_of_the_pick() -> None:
    policy = POLICY.model_copy(update={"exploration_epsilon": 0.2})
    signals = ENGAGED | {"churn_probability": 0.7, "rfm_segment": "Champions"}  # winback, loyalty, newsletter
    rng = random.Random(1)
    decisions = [decide(policy, signals, rng) for _ in range(4000)]
    greedy = [d for d in decisions if not d.explored]
    assert {d.action for d in greedy} == {"winback"} and all(d.probability == pytest.approx(0.8) for d in greedy)
    explored = [d for d in decisions if d.explored]
    assert {d.action for d in explored} == {"loyalty_reward", "newsletter"}
    assert all(d.probability == pytest.approx(0.1) for d in explored)
    assert 0.17 < len(explored) / len(decisions) < 0.23


def test_a_policy_file_is_validated(tmp_path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("actions:\n  - {action: winback, when: [{signal: churn_probability, op: '>=', value: 0.6}]}\n")
    with pytest.raises(InputError, match="the last action must have no conditions"):
        Policy.load(bad)
    bad.write_text("actions:\n  - {action: x, when: [{signal: a, op: '~', value: 1}]}\n  - {action: y}\n")
    with pytest.raises(InputError, match="op"):
        Policy.load(bad)
    bad.write_text("actions: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        Policy.load(bad)
    with pytest.raises(NotFoundError, match="does not exist"):
        Policy.load(bad.with_name("missing.yaml"))


def test_a_policy_naming_an_unknown_signal_fails_when_loaded_listing_the_known_ones(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("suppress_when: [{signal: emails_sent_7, op: '>=', value: 3}]\nactions:\n  - {action: newsletter}\n")
    with pytest.raises(InputError, match=r"suppress_when\.0\.signal: .*unknown signal 'emails_sent_7'; known signals: "
                                         r"churn_probability, purchase_probability, churn_risk, expected_orders, predicted_clv, p_alive, country, "
                                         r"email_consent"):
        Policy.load(path)


def test_the_feature_windows_decide_which_signals_a_policy_may_name(tmp_path, monkeypatch) -> None:
    """Under 10-day email windows the default policy's frequency cap (emails_sent_7d) no longer exists:
    it fails at load instead of silently never holding; a policy on emails_sent_10d loads."""
    from features.config import FeatureConfig
    from serving.policy import known_signals

    ten = FeatureConfig(email_windows_days=(10,))
    assert "emails_sent_10d" in known_signals(ten) and "emails_sent_7d" not in known_signals(ten)
    with pytest.raises(InputError, match="unknown signal 'emails_sent_7d'"):
        Policy.load(config=ten)
    settings = tmp_path / "features.yaml"
    settings.write_text("email_windows_days: [10]\n")
    monkeypatch.setenv("SENDWISE_FEATURE_CONFIG", str(settings))  # what `sendwise serve` reads
    with pytest.raises(InputError, match="unknown signal 'emails_sent_7d'"):
        Policy.load()
    capped = tmp_path / "p.yaml"
    capped.write_text("suppress_when: [{signal: emails_sent_10d, op: '>=', value: 3}]\nactions:\n  - {action: x}\n")
    assert Policy.load(capped).suppress_when[0].signal == "emails_sent_10d"
