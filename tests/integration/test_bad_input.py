"""Bad input: each gets the right 4xx with an OpenAI-style error, nothing reaches the upstream, and the
server stays healthy."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from llm_relay.keys import ApiKey, hash_key
from tests.conftest import Relay, RelayFactory, Upstream

GOOD = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["message"] and "Traceback" not in error["message"]
    assert response.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', 400, "invalid_request"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "wizard", "content": "x"}]}', 400, "invalid_request"),
        (b'{"model": "gpt-4o-mini", "messages": []}', 400, "invalid_request"),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
            400,
            "invalid_request",
        ),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10000000}',
            400,
            "invalid_request",
        ),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}',
            400,
            "invalid_request",
        ),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            400,
            "invalid_request",
        ),
        (b'{"model": "other-model", "messages": [{"role": "user", "content": "x"}]}', 403, "model_not_allowed"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/chat/stream"])
def test_invalid_bodies_are_refused_before_upstream(
    make_relay: RelayFactory, upstream: Upstream, content: bytes, status: int, code: str, path: str
) -> None:
    relay = make_relay(allowed_models="gpt-4o-mini,gpt-4o")
    response = httpx.post(
        f"{relay.url}{path}", content=content, headers={**relay.headers(), "content-type": "application/json"}
    )
    _assert_error(response, status, code)
    assert upstream.state.bodies == []
    assert (
        httpx.post(f"{relay.url}{path}", json={**GOOD, "mock": {"tokens": 1}}, headers=relay.headers()).status_code
        == 200
    )


def test_body_over_the_cap_is_413(make_relay: RelayFactory, upstream: Upstream) -> None:
    relay = make_relay(max_body_bytes=1024)
    big = {**GOOD, "messages": [{"role": "user", "content": "x" * 2000}]}
    _assert_error(
        httpx.post(f"{relay.url}/v1/chat/completions", json=big, headers=relay.headers()), 413, "payload_too_large"
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap holds while streaming the body in
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 100
        yield b'"}]}'

    _assert_error(
        httpx.post(f"{relay.url}/v1/chat/completions", content=chunks(), headers=relay.headers()),
        413,
        "payload_too_large",
    )
    assert upstream.state.bodies == []


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"authorization": "Basic abc"}, "invalid_api_key"),
        ({"authorization": "Bearer"}, "invalid_api_key"),
        ({"authorization": "Bearer lr-unknown"}, "invalid_api_key"),
        ({"x-api-key": "lr-unknown"}, "invalid_api_key"),
    ],
)
def test_missing_malformed_or_unknown_key_is_401(
    relay: Relay, upstream: Upstream, headers: dict[str, str], code: str
) -> None:
    response = httpx.post(f"{relay.url}/v1/chat/completions", json=GOOD, headers=headers)
    _assert_error(response, 401, code)
    assert upstream.state.bodies == []


def test_revoked_key_is_refused_after_the_cache_ttl(make_relay: RelayFactory, upstream: Upstream) -> None:
    relay = make_relay(auth_cache_ttl_s=0)
    found = relay.stores.keys.get_by_id(relay.api_key.key_id)
    assert found is not None
    key, key_hash = found
    assert key_hash == hash_key(relay.key)
    relay.stores.keys.replace(
        ApiKey(key_id=key.key_id, name=key.name, status="revoked", created_at=key.created_at), key_hash
    )
    _assert_error(
        httpx.post(f"{relay.url}/v1/chat/completions", json=GOOD, headers=relay.headers()), 401, "invalid_api_key"
    )


def test_key_limited_to_some_models(relay: Relay, upstream: Upstream) -> None:
    limited = ApiKey(key_id="rk_limited0001", name="limited", allowed_models=frozenset({"gpt-4o"}))
    relay.stores.keys.put(limited, hash_key("lr-limited"))
    response = httpx.post(f"{relay.url}/v1/chat/completions", json=GOOD, headers=relay.headers("lr-limited"))
    _assert_error(response, 403, "model_not_allowed")
    assert upstream.state.bodies == []


def test_unknown_route_and_wrong_method(relay: Relay) -> None:
    _assert_error(httpx.get(f"{relay.url}/v1/nothing"), 404, "not_found")
    _assert_error(httpx.get(f"{relay.url}/v1/chat/completions"), 405, "method_not_allowed")


def test_key_store_down_is_503_not_500(make_relay: RelayFactory, upstream: Upstream) -> None:
    from llm_relay.dynamo import Stores, make_client

    dead = Stores.create("t", make_client("http://127.0.0.1:9"))
    relay = make_relay(app_kwargs={"stores": dead})
    response = httpx.post(f"{relay.url}/v1/chat/completions", json=GOOD, headers=relay.headers(), timeout=30)
    _assert_error(response, 503, "service_unavailable")
