"""`GET /v1/models` over a real socket, read with the official openai SDK: authenticated like every route, it
lists the models the key may use."""

from __future__ import annotations

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
