"""`GET /v1/models` over a real socket, read with the official openai SDK: authenticated like every route, it
lists the models the key may use."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai.types import Model

from llm_relay.keys import ApiKey, hash_key
from tests.conftest import RelayFactory


def _list(url: str, key: str) -> list[Model]:
    """`client.models.list()`, as the SDK's users call it, with the client closed afterwards."""
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
        return list(client.models.list())


def test_openai_sdk_lists_the_allowed_models(make_relay: RelayFactory) -> None:
    # GIVEN a relay with an allow-list, and a key limited to part of it (plus a model the relay refuses)
    relay = make_relay(allowed_models="gpt-4o-mini,gpt-4o,o3")
    relay.stores.keys.put(
        ApiKey("rk_models0000", "models", allowed_models=frozenset({"gpt-4o", "o3", "other"})), hash_key("lr-models")
    )
    # WHEN the SDK lists the models with the relay's dev key, and with the limited key
    everything, limited = _list(relay.url, relay.key), _list(relay.url, "lr-models")
    # THEN each sees the allow-list, intersected with the key's own list
    assert sorted(m.id for m in everything) == ["gpt-4o", "gpt-4o-mini", "o3"]
    assert [m.id for m in limited] == ["gpt-4o", "o3"]
    assert all(m.object == "model" and m.owned_by == "llm-relay" for m in limited)


def test_with_any_model_allowed_the_priced_models_are_listed(make_relay: RelayFactory) -> None:
    relay = make_relay(allowed_models="*", prices_json='{"models": {"house-model": {"input": 1, "output": 2}}}')
    ids = [m.id for m in _list(relay.url, relay.key)]
    assert "house-model" in ids and "gpt-4o-mini" in ids


def test_models_needs_a_valid_key(make_relay: RelayFactory) -> None:
    relay = make_relay()
    with pytest.raises(openai.AuthenticationError):
        _list(relay.url, "lr-nope")
    response = httpx.get(f"{relay.url}/v1/models")
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"


def test_the_routed_models_of_the_upstream_table_are_listed_and_each_can_be_retrieved(
    make_relay: RelayFactory,
) -> None:
    # GIVEN an upstream table that spells out one model and routes others by a glob, and any model allowed
    table = [
        {"name": "local", "kind": "ollama", "url": "http://127.0.0.1:9", "models": ["llama3.2", "llama*"]},
        {"name": "cloud", "kind": "openai", "url": "http://127.0.0.1:9/v1", "models": ["gpt-*"]},
    ]
    relay = make_relay(upstream_url=None, upstreams=json.dumps(table), allowed_models="*")
    relay.stores.keys.put(
        ApiKey("rk_models0001", "models", allowed_models=frozenset({"llama3.2"})), hash_key("lr-llama-only")
    )
    # WHEN the SDK lists the models
    ids = [m.id for m in _list(relay.url, relay.key)]
    # THEN the literal routed model is listed beside the priced ones the table serves, and no priced model that no
    # upstream serves
    assert "llama3.2" in ids and "gpt-4o-mini" in ids
    assert "claude-3-5-haiku" not in ids
    with openai.OpenAI(base_url=f"{relay.url}/v1", api_key=relay.key, max_retries=0) as client:
        # AND one model is answered, listed or reached by a glob only
        assert client.models.retrieve("llama3.2").id == "llama3.2"
        assert client.models.retrieve("llama3.1:8b").owned_by == "llm-relay"
        # AND a model no upstream serves is not found
        with pytest.raises(openai.NotFoundError) as missing:
            client.models.retrieve("claude-3-5-haiku")
    assert missing.value.code == "model_not_found"
    with openai.OpenAI(base_url=f"{relay.url}/v1", api_key="lr-llama-only", max_retries=0) as limited:
        # AND a key limited to one model sees that one only
        assert [m.id for m in limited.models.list()] == ["llama3.2"]
        with pytest.raises(openai.NotFoundError):
            limited.models.retrieve("gpt-4o-mini")
