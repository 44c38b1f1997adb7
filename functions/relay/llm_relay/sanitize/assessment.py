"""An `ApplyGuardrail` answer read into what the relay acts on (pure): one action, the text to release, and how many
findings of each kind.

The answer's top-level `action` only says whether the guardrail intervened (`NONE` or `GUARDRAIL_INTERVENED`), for
a block and an anonymization alike; what it did is in the per-policy assessments. The strongest of those actions
wins (`NONE` < `ANONYMIZED` < `BLOCKED`), and the reading fails safe: an intervention without a recognized
action, an action this module does not know, or an anonymization without one output text per content item
(nothing to release in place of the originals) all count as `BLOCKED`.

Findings are counted by kind, never by value: the answer's `match` fields hold the very text that was found (a
name, a card number) and are not read at all. Kinds are the PII entity type (`NAME`, `EMAIL`), or the policy and
the name an operator gave it (`topic:Investment advice`, `regex:Ticket`, `content:HATE`, `word:PROFANITY`); a
custom word is only `word:custom`, since its name is the word itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["NONE", "ANONYMIZED", "BLOCKED"]
ACTIONS: tuple[Action, ...] = ("NONE", "ANONYMIZED", "BLOCKED")  # weakest to strongest
INTERVENED = "GUARDRAIL_INTERVENED"
UNRECOGNIZED = "guardrail:other"  # the finding of an intervention no assessment explains


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the guardrail decided about some text.

    `text`: what may be released: the guardrail's output when it anonymized, else the text as given (for several
    content items, their texts joined by a blank line). `texts`: the same per content item, in order.
    `findings`: how many interventions of each kind (never the values found)."""

    action: Action
    text: str
    findings: dict[str, int] = field(default_factory=dict)
    texts: tuple[str, ...] = ()


def stronger(a: Action, b: Action) -> Action:
    return a if ACTIONS.index(a) >= ACTIONS.index(b) else b


def _action(value: object) -> Action:
    """A policy entry's action; an unknown one fails safe as BLOCKED."""
    if value in (None, "NONE"):
        return "NONE"
    return "ANONYMIZED" if value == "ANONYMIZED" else "BLOCKED"


def _entries(assessment: Mapping[str, Any]) -> Iterator[tuple[str, object]]:
    """(kind, action) of every entry of one assessment's policies. `match` is never read."""
    topics = assessment.get("topicPolicy") or {}
    for topic in topics.get("topics") or []:
        yield f"topic:{topic.get('name', 'unnamed')}", topic.get("action")
    content = assessment.get("contentPolicy") or {}
    for item in content.get("filters") or []:
        yield f"content:{item.get('type', 'unknown')}", item.get("action")
    words = assessment.get("wordPolicy") or {}
    for item in words.get("customWords") or []:
        yield "word:custom", item.get("action")
    for item in words.get("managedWordLists") or []:
        yield f"word:{item.get('type', 'managed')}", item.get("action")
    sensitive = assessment.get("sensitiveInformationPolicy") or {}
    for item in sensitive.get("piiEntities") or []:
        yield str(item.get("type", "PII")), item.get("action")
    for item in sensitive.get("regexes") or []:
        yield f"regex:{item.get('name', 'unnamed')}", item.get("action")
    grounding = assessment.get("contextualGroundingPolicy") or {}
    for item in grounding.get("filters") or []:
        yield f"grounding:{item.get('type', 'unknown')}", item.get("action")


def _outputs(response: Mapping[str, Any], count: int) -> tuple[str, ...] | None:
    """The guardrail's output texts, one per content item, or None when they do not line up."""
    texts = [item.get("text") for item in response.get("outputs") or []]
    if len(texts) != count or not all(isinstance(t, str) for t in texts):
        return None
    return tuple(str(t) for t in texts)


def read_assessment(response: Mapping[str, Any], texts: Sequence[str]) -> Assessment:
    """The assessment of `texts` (the content items sent, in order) from an `ApplyGuardrail` response."""
    action: Action = "NONE"
    findings: Counter[str] = Counter()
    for assessment in response.get("assessments") or []:
        for kind, value in _entries(assessment):
            entry = _action(value)
            if entry != "NONE":
                findings[kind] += 1
                action = stronger(action, entry)
    if response.get("action") == INTERVENED and action == "NONE":
        action = "BLOCKED"
        findings[UNRECOGNIZED] += 1
    released = tuple(texts)
    if action == "ANONYMIZED":
        outputs = _outputs(response, len(texts))
        if outputs is None:
            action = "BLOCKED"
        else:
            released = outputs
    return Assessment(action, "\n\n".join(released), dict(findings), released)
