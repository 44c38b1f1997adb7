"""The sanitizer's policy (pure): what is checked, on which side, and what a match does.

A policy has two sides, the prompt (checked before the request leaves the relay) and the output (checked on the
live stream), each `off`, `redact` (the value is replaced by a placeholder) or `block` (the request is refused, or
the stream ended `content_filter`). The deployment's settings are a floor: a key's own policy can make either side
stricter or add entity types, never loosen what the deployment asks for (`effective`).

Entity types are plain names (`EMAIL`, `CREDIT_CARD`, ...); the recognizers that find them live in
`recognizers.py`, which this module does not import, so that a relay with the sanitizer off never loads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["off", "redact", "block"]
MODES: tuple[Mode, ...] = ("off", "redact", "block")  # weakest to strictest
POLICY_VERSION = 1  # the version of the rules below; written on every usage record that was sanitized

# Every built-in entity type, in the order a tie between two recognizers is broken (earlier wins). Kept here (not
# derived from the recognizers) so settings and the CLI can check names without loading them; a unit test holds
# the two lists together.
ENTITY_TYPES: tuple[str, ...] = (
    "PRIVATE_KEY",
    "JWT",
    "AWS_ACCESS_KEY",
    "API_KEY",
    "GITHUB_TOKEN",
    "SLACK_TOKEN",
    "EMAIL",
    "CREDIT_CARD",
    "IBAN",
    "US_SSN",
    "IP_ADDRESS",
    "PHONE_NUMBER",
)
DEFAULT_PLACEHOLDER = "[{entity}]"


def parse_mode(text: str) -> Mode:
    value = text.strip().lower()
    for mode in MODES:
        if value == mode:
            return mode
    raise ValueError(f"sanitizer mode must be one of {', '.join(MODES)}, not {text!r}")


def parse_entities(text: str | Iterable[str]) -> frozenset[str]:
    """Entity type names from `EMAIL,CREDIT_CARD` (or an iterable); empty or `all`: every built-in type."""
    names = [n.strip().upper() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names or names == ["ALL"]:
        return frozenset(ENTITY_TYPES)
    unknown = sorted(set(names) - set(ENTITY_TYPES))
    if unknown:
        raise ValueError(f"unknown entity type(s) {', '.join(unknown)}; known: {', '.join(ENTITY_TYPES)}")
    return frozenset(names)


def check_placeholder(template: str) -> str:
    """A placeholder template: `{entity}` is replaced by the entity type. It goes into JSON strings (tool-call
    arguments) and must never look like the value it hides, so quotes, backslashes and control characters are
    refused."""
    try:
        sample = template.format(entity="EMAIL")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"placeholder {template!r} may only use {{entity}}: {exc}") from None
    if not sample or any(c in sample for c in '"\\') or not sample.isprintable():
        raise ValueError(f"placeholder {template!r} must be printable, without quotes or backslashes")
    return template


def stricter(a: Mode, b: Mode) -> Mode:
    return a if MODES.index(a) >= MODES.index(b) else b


@dataclass(frozen=True, slots=True)
class Side:
    """One side of a policy: its mode and the entity types it looks for."""

    mode: Mode = "off"
    entities: frozenset[str] = frozenset(ENTITY_TYPES)

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def floor(self, other: Side) -> Side:
        """This side, never weaker than `other`: the stricter mode, and every entity type either checks."""
        entities = (self.entities if self.on else frozenset()) | (other.entities if other.on else frozenset())
        return Side(stricter(self.mode, other.mode), entities or self.entities)


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """A key's own policy as stored on its record (None fields: the deployment's value)."""

    output: Mode | None = None
    prompt: Mode | None = None
    entities: frozenset[str] | None = None

    @property
    def empty(self) -> bool:
        return self.output is None and self.prompt is None and self.entities is None

    def as_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {}
        if self.output is not None:
            item["output"] = self.output
        if self.prompt is not None:
            item["prompt"] = self.prompt
        if self.entities is not None:
            item["entities"] = sorted(self.entities)
        return item

    @classmethod
    def from_item(cls, item: Mapping[str, Any] | None) -> KeyPolicy | None:
        if not item:
            return None
        entities = item.get("entities")
        return cls(
            output=parse_mode(str(item["output"])) if "output" in item else None,
            prompt=parse_mode(str(item["prompt"])) if "prompt" in item else None,
            entities=parse_entities(entities) if entities is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Policy:
    """The policy in force for one request."""

    output: Side = Side()
    prompt: Side = Side()
    placeholder: str = DEFAULT_PLACEHOLDER

    @property
    def on(self) -> bool:
        return self.output.on or self.prompt.on

    @property
    def entities(self) -> frozenset[str]:
        return (self.output.entities if self.output.on else frozenset()) | (
            self.prompt.entities if self.prompt.on else frozenset()
        )

    def for_key(self, key: KeyPolicy | None) -> Policy:
        """The policy for a key: the key's own sides, floored by this (the deployment's) policy."""
        if key is None or key.empty:
            return self
        entities = key.entities if key.entities is not None else frozenset(ENTITY_TYPES)
        own_output = Side(key.output or self.output.mode, entities)
        own_prompt = Side(key.prompt or self.prompt.mode, entities)
        return Policy(own_output.floor(self.output), own_prompt.floor(self.prompt), self.placeholder)


OFF = Policy()
