"""`GET /v1/models` (pure): which models a key may use, in OpenAI's list shape."""

from __future__ import annotations

from llm_relay.model_list import model_list, usable_models

PRICED = ["gpt-4o", "gpt-4o-mini", "o3"]


def test_the_allow_list_intersected_with_the_keys_own_list():
    assert usable_models(frozenset({"a", "b", "c"}), frozenset({"b", "c", "z"}), PRICED) == ["b", "c"]


def test_the_allow_list_alone_for_a_key_without_its_own_list():
    assert usable_models(frozenset({"b", "a"}), None, PRICED) == ["a", "b"]


def test_with_star_the_keys_list_or_else_the_priced_models():
    assert usable_models(None, None, PRICED) == PRICED
    assert usable_models(None, frozenset({"my-local-model"}), PRICED) == ["my-local-model"]


def test_openai_list_shape():
    listed = model_list(["a"], created=1700000000)
    assert listed == {
        "object": "list",
        "data": [{"id": "a", "object": "model", "created": 1700000000, "owned_by": "llm-relay"}],
    }
