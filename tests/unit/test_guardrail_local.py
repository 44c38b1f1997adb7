"""The local guardrail's rules (pure): from the environment or the defaults, refused when a policy could not act so,
and answers shaped as Bedrock's, which the relay's reading agrees with."""

from __future__ import annotations

import json

import pytest

from llm_relay.sanitize.assessment import read_assessment
from llm_relay_dev.bedrock_local import BedrockLocalConfig
from llm_relay_dev.guardrail_local import (
    DEFAULT_RULES,
    RULES_ENV,
    GuardrailRule,
    apply_rules,
    fault_for,
    rules_from_json,
)


def test_the_rules_come_from_the_environment_else_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RULES_ENV, raising=False)
    assert BedrockLocalConfig().guardrail_rules == DEFAULT_RULES
    rules = [{"pattern": "(?i)acme", "action": "BLOCKED", "name": "topic:Competitors"}]
    monkeypatch.setenv(RULES_ENV, json.dumps(rules))
    assert BedrockLocalConfig().guardrail_rules == (GuardrailRule("(?i)acme", "BLOCKED", "topic:Competitors"),)


@pytest.mark.parametrize(
    "rules",
    [
        '{"pattern": "x"}',
        '[{"pattern": "x", "action": "BLOCKED"}]',
        '[{"pattern": "x", "action": "ANONYMIZED", "name": "topic:Finance"}]',
        '[{"pattern": "x", "action": "MASKED", "name": "NAME"}]',
        '[{"pattern": "(", "action": "BLOCKED", "name": "NAME"}]',
    ],
)
def test_malformed_rules_are_refused(rules: str) -> None:
    with pytest.raises(ValueError):
        rules_from_json(rules)


def test_the_default_rules_answer_as_bedrock_does() -> None:
    # GIVEN `make dev`'s rules WHEN two content items are assessed, one with a name
    masked = apply_rules(DEFAULT_RULES, ["Hello John Smith.", "Fine."])
    # THEN one anonymized output per item, the entity's match in the assessment, billed units and coverage
    assert masked["action"] == "GUARDRAIL_INTERVENED"
    assert masked["outputs"] == [{"text": "Hello {NAME}."}, {"text": "Fine."}]
    [entity] = masked["assessments"][0]["sensitiveInformationPolicy"]["piiEntities"]
    assert entity == {"match": "John Smith", "type": "NAME", "action": "ANONYMIZED", "detected": True}
    assert masked["usage"]["topicPolicyUnits"] == 1 and masked["usage"]["contentPolicyUnits"] == 0
    assert masked["guardrailCoverage"] == {"textCharacters": {"guarded": 22, "total": 22}}
    # AND a denied topic blocks with Bedrock's message, whatever else matched
    blocked = apply_rules(DEFAULT_RULES, ["Jane Doe wants investment advice."])
    assert blocked["outputs"] == [{"text": "Sorry, the model cannot answer this question."}]
    assert blocked["assessments"][0]["topicPolicy"]["topics"][0]["name"] == "Investment advice"
    # AND the relay reads both as it should
    assert read_assessment(masked, ["Hello John Smith.", "Fine."]).texts == ("Hello {NAME}.", "Fine.")
    assert read_assessment(blocked, ["x"]).findings == {"topic:Investment advice": 1, "NAME": 1}
    assert apply_rules(DEFAULT_RULES, ["The fox."])["action"] == "NONE"


def test_faults_by_marker_or_by_flag() -> None:
    assert fault_for(["a", "b guardrail:throttle"]) == "throttle"
    assert fault_for(["guardrail:slow"]) == "slow"
    assert fault_for(["plain"], slow=True) == "slow"
    assert fault_for(["plain"]) is None
