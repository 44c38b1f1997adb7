"""`GET /v1/models` (pure): the models one key may use, in OpenAI's list shape, so that the SDKs'
`client.models.list()` and chat front-ends, which call it first, offer only models the relay will accept. The
candidates are the priced models and the names the upstream table spells out (a glob routes, a literal name is
also listed), each kept only if an upstream serves it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

OWNER = "llm-relay"


def usable_models(
    allowed: frozenset[str] | None, key_models: frozenset[str] | None, priced: Iterable[str]
) -> list[str]:
    """The allow-list (`RELAY_ALLOWED_MODELS`) intersected with the key's own list. With `*` any model name is
    allowed, which cannot be listed: the key's own list then, or else the models that have a price."""
    if allowed is None:
        names = set(key_models) if key_models is not None else set(priced)
    else:
        names = set(allowed) if key_models is None else set(allowed) & set(key_models)
    return sorted(names)


def model_list(models: Iterable[str], created: int) -> dict[str, Any]:
    """OpenAI's `list` object of `model` objects (`created`: epoch seconds, here when the relay started)."""
    return {"object": "list", "data": [model_object(name, created) for name in models]}


def model_object(name: str, created: int) -> dict[str, Any]:
    """One `model` object (`GET /v1/models/{model}`, and each entry of the list)."""
    return {"id": name, "object": "model", "created": created, "owned_by": OWNER}
