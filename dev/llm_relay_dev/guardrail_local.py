"""Amazon Bedrock Guardrails' `ApplyGuardrail` answer, computed from a rule set instead of a guardrail: what the
local Bedrock server (`bedrock_local.py`) answers on botocore's path for it,
`POST /guardrail/{guardrailIdentifier}/version/{guardrailVersion}/apply`.

A rule is a regular expression (`pattern`), an `action` (`ANONYMIZED` or `BLOCKED`) and a `name` saying which
policy it stands for: `topic:<name>` a denied topic, `content:<TYPE>` a content filter, `word:custom` or
`word:<MANAGED LIST>` a word policy (these three only block), `regex:<name>` a custom regex, anything else a PII
entity type (`NAME`, `EMAIL`, ...). An anonymized match becomes `{<entity type or regex name>}`, as Bedrock
writes it; a block answers Bedrock's default blocked message. The rules are `BedrockLocalConfig.guardrail_rules`;
by default those of `RELAY_DEV_GUARDRAIL_RULES` (`RULES_ENV`), a JSON list such as
    [{"pattern": "(?i)\\bacme\\b", "action": "BLOCKED", "name": "topic:Competitors"}]
and without it `DEFAULT_RULES` (what `make dev` uses): a denied topic ("investment advice", "which stocks to
buy"), two personal names anonymized as `{NAME}`, and an AWS access key id blocked.

Faults come from a marker in the assessed text: `guardrail:throttle` (HTTP 429 ThrottlingException, on every
attempt) and `guardrail:slow` (the answer held back `guardrail_slow_ms`, or until the client gives up, whichever
comes first: past any client's timeout). The config's `guardrail_throttle` and `guardrail_slow` flags do the same
for every call.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

RULES_ENV = "RELAY_DEV_GUARDRAIL_RULES"
ACTIONS = ("ANONYMIZED", "BLOCKED")
BLOCK_ONLY = ("topic", "content", "word")  # policies whose only action is to block
BLOCKED_MESSAGE = "Sorry, the model cannot answer this question."  # Bedrock's default blocked messaging
THROTTLE_MARKER = "guardrail:throttle"
SLOW_MARKER = "guardrail:slow"
_UNITS = (
    "topicPolicyUnits",
    "contentPolicyUnits",
    "wordPolicyUnits",
    "sensitiveInformationPolicyUnits",
    "sensitiveInformationPolicyFreeUnits",
    "contextualGroundingPolicyUnits",
)


@dataclass(frozen=True, slots=True)
class GuardrailRule:
    """One rule of the local guardrail (see the module docstring for `name`)."""

    pattern: str
    action: str
    name: str

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"guardrail rule {self.name!r}: action must be one of {', '.join(ACTIONS)}")
        if self.policy in BLOCK_ONLY and self.action != "BLOCKED":
            raise ValueError(f"guardrail rule {self.name!r}: a {self.policy} policy can only block")
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"guardrail rule {self.name!r}: bad pattern: {exc}") from None

    @property
    def policy(self) -> str:
        prefix, colon, _ = self.name.partition(":")
        return prefix if colon and prefix in (*BLOCK_ONLY, "regex") else "pii"

    @property
    def label(self) -> str:
        """The topic, filter type, word list, regex name or entity type: what Bedrock reports it as."""
        return self.name.partition(":")[2] if self.policy != "pii" else self.name


DEFAULT_RULES: tuple[GuardrailRule, ...] = (
    GuardrailRule(
        r"(?i)\binvestment advice\b|\bwhich stocks? (?:to|should I) buy\b", "BLOCKED", "topic:Investment advice"
    ),
    GuardrailRule(r"\b(?:Jane Doe|John Smith)\b", "ANONYMIZED", "NAME"),
    GuardrailRule(r"\bAKIA[0-9A-Z]{16}\b", "BLOCKED", "AWS_ACCESS_KEY"),
)


def rules_from_json(text: str) -> tuple[GuardrailRule, ...]:
    """Rules from a JSON list of {"pattern", "action", "name"} objects (ValueError when malformed)."""
    items = json.loads(text)
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValueError(f"{RULES_ENV} must be a JSON list of objects")
    try:
        return tuple(GuardrailRule(str(i["pattern"]), str(i["action"]), str(i["name"])) for i in items)
    except KeyError as exc:
        raise ValueError(f"{RULES_ENV}: every rule needs pattern, action and name (missing {exc})") from None


def rules_from_env() -> tuple[GuardrailRule, ...]:
    """The rules of `RELAY_DEV_GUARDRAIL_RULES`, else `DEFAULT_RULES`."""
    text = os.environ.get(RULES_ENV, "").strip()
    return rules_from_json(text) if text else DEFAULT_RULES


@dataclass
class GuardrailCall:
    """What the server recorded of one ApplyGuardrail call: never the text, only its size."""

    guardrail: str
    version: str
    source: str
    items: int
    chars: int
    action: str | None = None  # None: no answer (a fault)
    fault: str | None = None  # `throttle`, `slow`
    client_left: bool = False  # the client gave up before the answer (a slow answer past its timeout)


def fault_for(texts: list[str], *, throttle: bool = False, slow: bool = False) -> str | None:
    """The fault a call asks for by a marker in its text, or the config's flags ask for on every call."""
    joined = "\n".join(texts)
    if throttle or THROTTLE_MARKER in joined:
        return "throttle"
    if slow or SLOW_MARKER in joined:
        return "slow"
    return None


@dataclass(frozen=True, slots=True)
class _Match:
    rule: GuardrailRule
    item: int
    start: int
    end: int
    text: str


def _matches(rules: tuple[GuardrailRule, ...], texts: list[str]) -> list[_Match]:
    return [
        _Match(rule, item, found.start(), found.end(), found.group())
        for item, text in enumerate(texts)
        for rule in rules
        for found in re.finditer(rule.pattern, text)
        if found.end() > found.start()
    ]


def _anonymized(text: str, matches: list[_Match]) -> str:
    """`text` with every anonymized match replaced by `{label}` (overlaps: the earliest, then the longest, wins)."""
    out, position = [], 0
    for match in sorted(matches, key=lambda m: (m.start, -m.end)):
        if match.start >= position:
            out += [text[position : match.start], "{" + match.rule.label + "}"]
            position = match.end
    return "".join([*out, text[position:]])


def _policies(matches: list[_Match]) -> dict[str, Any]:
    """The assessment's policies, as Bedrock lays them out (topics and filters once each, the others per match)."""
    by = {policy: [m for m in matches if m.rule.policy == policy] for policy in ("topic", "content", "word", "regex")}
    pii = [m for m in matches if m.rule.policy == "pii"]
    assessment: dict[str, Any] = {}
    if by["topic"]:
        names = dict.fromkeys(m.rule.label for m in by["topic"])
        topics = [{"name": n, "type": "DENY", "action": "BLOCKED", "detected": True} for n in names]
        assessment["topicPolicy"] = {"topics": topics}
    if by["content"]:
        kinds = dict.fromkeys(m.rule.label for m in by["content"])
        filters = [{"type": k, "confidence": "HIGH", "filterStrength": "HIGH", "action": "BLOCKED"} for k in kinds]
        assessment["contentPolicy"] = {"filters": [{**f, "detected": True} for f in filters]}
    if by["word"]:
        custom = [
            {"match": m.text, "action": "BLOCKED", "detected": True} for m in by["word"] if m.rule.label == "custom"
        ]
        managed = [
            {"match": m.text, "type": m.rule.label, "action": "BLOCKED", "detected": True}
            for m in by["word"]
            if m.rule.label != "custom"
        ]
        assessment["wordPolicy"] = {"customWords": custom, "managedWordLists": managed}
    if pii or by["regex"]:
        entities = [{"match": m.text, "type": m.rule.label, "action": m.rule.action, "detected": True} for m in pii]
        regexes = [
            {"name": m.rule.label, "match": m.text, "regex": m.rule.pattern, "action": m.rule.action, "detected": True}
            for m in by["regex"]
        ]
        assessment["sensitiveInformationPolicy"] = {"piiEntities": entities, "regexes": regexes}
    return assessment


def _usage(rules: tuple[GuardrailRule, ...], chars: int) -> dict[str, int]:
    """Text units (1,000 characters each) for every policy the rule set configures, as Bedrock bills them."""
    units = math.ceil(chars / 1000)
    configured = {rule.policy for rule in rules}
    billed = {
        "topicPolicyUnits": "topic",
        "contentPolicyUnits": "content",
        "wordPolicyUnits": "word",
        "sensitiveInformationPolicyUnits": "pii",
    }
    usage = {name: units if billed.get(name) in configured else 0 for name in _UNITS}
    if "regex" in configured:
        usage["sensitiveInformationPolicyUnits"] = units
    return usage


def apply_rules(rules: tuple[GuardrailRule, ...], texts: list[str]) -> dict[str, Any]:
    """The ApplyGuardrail response body for `texts` (the request's text content items, in order)."""
    matches = _matches(rules, texts)
    blocked = any(m.rule.action == "BLOCKED" for m in matches)
    chars = sum(len(t) for t in texts)
    if blocked:
        outputs, reason = [{"text": BLOCKED_MESSAGE}], "Guardrail blocked."
    elif matches:
        outputs = [{"text": _anonymized(t, [m for m in matches if m.item == i])} for i, t in enumerate(texts)]
        reason = "Guardrail masked."
    else:
        outputs, reason = [], "No action."
    coverage = {"textCharacters": {"guarded": chars, "total": chars}}
    usage = _usage(rules, chars)
    metrics = {"guardrailProcessingLatency": 1, "usage": usage, "guardrailCoverage": coverage}
    return {
        "usage": usage,
        "action": "GUARDRAIL_INTERVENED" if matches else "NONE",
        "actionReason": reason,
        "outputs": outputs,
        "assessments": [{**_policies(matches), "invocationMetrics": metrics}],
        "guardrailCoverage": coverage,
    }
