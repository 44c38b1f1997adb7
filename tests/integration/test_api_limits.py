"""The limits hold across the APIs: requests in the Responses and Anthropic Messages APIs race for the same key's
allowance as chat completions do, and each refusal comes in its own API's error shape."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from llm_relay.keys import ApiKey
from tests.conftest import Relay, RelayFactory
from tests.integration.test_limits_relay import SHORT, in_one_minute_window, new_key, records_of

MOCK = f"mock: {json.dumps(SHORT)}"
RESPONSES = {"model": "gpt-4o-mini", "instructions": MOCK, "input": "Hello there"}
MESSAGES = {
    "model": "gpt-4o-mini",
    "max_tokens": 64,
    "system": MOCK,
    "messages": [{"role": "user", "content": "Hello there"}],
    "stream": True,
}


def test_rpm_5_admits_exactly_5_of_20_concurrent_requests_in_two_apis(relay: Relay) -> None:
    # GIVEN a key limited to 5 requests per minute
    # WHEN 20 requests arrive at once, half in the Responses API (one body), half in Anthropic's (streamed)
    async def burst(plain: str) -> list[tuple[str, httpx.Response]]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=40)) as client:

            async def one(api: str) -> tuple[str, httpx.Response]:
                if api == "responses":
                    return api, await client.post(
                        f"{relay.url}/v1/responses", json=RESPONSES, headers=relay.headers(plain)
                    )
                headers = {"x-api-key": plain, "anthropic-version": "2023-06-01"}
                return api, await client.post(f"{relay.url}/v1/messages", json=MESSAGES, headers=headers)

            return await asyncio.gather(*[one(("responses", "messages")[i % 2]) for i in range(20)])

    def fresh_key_burst() -> tuple[ApiKey, list[tuple[str, httpx.Response]]]:
        plain, key = new_key(relay.stores, rpm=5)
        return key, asyncio.run(burst(plain))

    key, answers = in_one_minute_window(fresh_key_burst)
    # THEN exactly 5 are answered, in their API's shape
    ok = [(api, r) for api, r in answers if r.status_code == 200]
    refused = [(api, r) for api, r in answers if r.status_code == 429]
    assert (len(ok), len(refused)) == (5, 15)
    for api, response in ok:
        if api == "responses":
            assert response.json()["status"] == "completed"
        else:
            assert response.text.rstrip().endswith('data: {"type":"message_stop"}')
    # AND each of the 15 refusals is a rate-limit error in its own API's shape, with Retry-After
    for api, response in refused:
        body: dict[str, Any] = response.json()
        assert 1 <= int(response.headers["retry-after"]) <= 61
        if api == "responses":
            assert (body["error"]["type"], body["error"]["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        else:
            assert body["type"] == "error"
            assert (body["error"]["type"], body["error"]["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    # AND every one of the 20 has a usage record
    reasons = sorted(r.termination_reason for r in records_of(relay.stores, key.key_id, 20))
    assert reasons == ["rate_limit_exceeded"] * 15 + ["stop"] * 5


def test_the_deadline_ends_a_stream_and_an_embeddings_call_in_every_api(make_relay: RelayFactory) -> None:
    # GIVEN a function timeout of 2 s with a 1 s margin, and answers that would take 10 s
    relay = make_relay(function_timeout_s=2.0, deadline_margin_s=1.0)
    slow = {"tokens": 100, "chunk_delay_ms": 100, "ttft_ms": 0}
    headers = {**relay.headers(), "anthropic-version": "2023-06-01"}
    with httpx.Client(timeout=30) as client:
        responses = client.post(
            f"{relay.url}/v1/responses",
            json={**RESPONSES, "instructions": f"mock: {json.dumps(slow)}", "stream": True},
            headers=headers,
        )
        messages = client.post(
            f"{relay.url}/v1/messages", json={**MESSAGES, "system": f"mock: {json.dumps(slow)}"}, headers=headers
        )
        embeddings = client.post(
            f"{relay.url}/v1/embeddings",
            json={"model": "text-embedding-3-small", "input": "Hello", "mock": {"headers_delay_ms": 10_000}},
            headers=headers,
        )
    # THEN each ends as `deadline` before Lambda would cut it off, in its API's own shape
    assert '"code":"deadline"' in responses.text.rsplit("event: error", 1)[-1]
    assert messages.text.rstrip().splitlines()[-2] == "event: error" and '"code":"deadline"' in messages.text
    assert (embeddings.status_code, embeddings.json()["error"]["code"]) == (504, "deadline")
    records = {r.api: r for r in records_of(relay.stores, relay.api_key.key_id, 3)}
    assert {api: r.termination_reason for api, r in records.items()} == {
        "responses": "deadline",
        "messages": "deadline",
        "embeddings": "deadline",
    }
    assert all(record.duration_ms is not None and record.duration_ms < 2000 for record in records.values())
