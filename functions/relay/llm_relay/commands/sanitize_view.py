"""How the CLI shows a sanitizer policy: a key's own (None fields: the deployment's) and the one in force (the
key's, floored by the deployment's). Entity types read `all` when every built-in type is on."""

from __future__ import annotations

from typing import Any

from ..sanitize.policy import ENTITY_TYPES, KeyPolicy, Policy, Side


def entities_text(entities: frozenset[str]) -> str:
    """`all`, or the names in sorted order, comma-separated (the form `--sanitize-entities` takes)."""
    return "all" if entities >= frozenset(ENTITY_TYPES) else ",".join(sorted(entities))


def _entities_json(entities: frozenset[str]) -> str | list[str]:
    return "all" if entities >= frozenset(ENTITY_TYPES) else sorted(entities)


def own_json(policy: KeyPolicy | None) -> dict[str, Any] | None:
    """A key's own policy as JSON (None: it has none, the deployment's applies; a None field: that part of it)."""
    if policy is None or policy.empty:
        return None
    return {
        "output": policy.output,
        "prompt": policy.prompt,
        "entities": None if policy.entities is None else _entities_json(policy.entities),
    }


def effective_json(policy: Policy) -> dict[str, Any]:
    """The policy in force as JSON: each side's mode and the entity types it checks (none when it is off)."""
    return {"output": _side_json(policy.output), "prompt": _side_json(policy.prompt)}


def _side_json(side: Side) -> dict[str, Any]:
    return {"mode": side.mode, "entities": _entities_json(side.entities) if side.on else []}


def own_text(policy: KeyPolicy | None) -> str:
    """`output off, prompt default, entities EMAIL,IBAN`; `default` where the deployment's applies."""
    if policy is None or policy.empty:
        return "default (the deployment's)"
    entities = "default" if policy.entities is None else entities_text(policy.entities)
    return f"output {policy.output or 'default'}, prompt {policy.prompt or 'default'}, entities {entities}"


def effective_text(policy: Policy) -> str:
    """`output redact (all), prompt block (EMAIL,IBAN)`; a side that is off is just `off`."""
    return f"output {_side_text(policy.output)}, prompt {_side_text(policy.prompt)}"


def _side_text(side: Side) -> str:
    return f"{side.mode} ({entities_text(side.entities)})" if side.on else "off"


def short_text(policy: Policy) -> str:
    """A table cell: `out=redact prompt=block`, or `off` when neither side is on."""
    return f"out={policy.output.mode} prompt={policy.prompt.mode}" if policy.on else "off"
