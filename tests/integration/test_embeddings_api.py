"""`POST /v1/embeddings` through the relay, with the openai SDK's `embeddings.create`, against the kinds of upstream
that have embeddings (`openai`, and `ollama`'s `/api/embed`): the vectors, usage, record and cost; a cancel while
the upstream holds its answer; the limits; the deadline; and a kind without embeddings refused before anything is
counted."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from llm_relay.dynamo import Stores
from llm_relay_dev.mock_embeddings import mock_vector
from tests.conftest import Relay, RelayFactory
from tests.integration.test_limits_relay import new_key
from tests.integration.test_upstream_kinds import Upstreams, record_of, routed, upstreams
from tests.waiting import wait_until

__all__ = ["routed", "upstreams"]  # the fixtures, shared with the chat tests of every kind

PRICES = json.dumps({"models": {"llama-embed": {"input": "0.02", "output": "0"}}})
MODELS = {"openai": "text-embedding-3-small", "ollama": "llama-embed"}
TEXTS = ["The quick brown fox", "jumps over the lazy dog"]  # 19 and 23 characters: 4 + 5 tokens as the mock counts


@pytest.fixture
def embedder(make_relay: RelayFactory, upstreams: Upstreams) -> Relay:
    table = [
        {"name": "openai", "kind": "openai", "url": f"{upstreams.mock}/v1", "models": ["text-embedding-*", "gpt-*"]},
        {"name": "ollama", "kind": "ollama", "url": upstreams.mock, "models": ["llama*"]},
        {"name": "bedrock", "kind": "bedrock", "url": upstreams.bedrock, "region": "us-east-1", "models": ["amazon.*"]},
    ]
    return make_relay(upstream_url=None, upstreams=json.dumps(table), prices_json=PRICES)


def _client(relay: Relay, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{relay.url}/v1", api_key=key or relay.key, max_retries=0)


@pytest.mark.parametrize("kind", list(MODELS))
def test_embeddings_create_gets_the_vectors_usage_record_and_cost(embedder: Relay, kind: str) -> None:
    # GIVEN the openai SDK (which asks for base64 vectors and decodes them) pointed at the relay
    with _client(embedder) as client:
        # WHEN it embeds two texts with a model routed to this kind, as base64 (the SDK's default) and as floats
        raw = client.embeddings.with_raw_response.create(model=MODELS[kind], input=TEXTS, user="end-user-7")
        answer = raw.parse()
        floats = client.embeddings.create(model=MODELS[kind], input=TEXTS[0], encoding_format="float")
    # THEN the vectors are the upstream's, in order, and the usage its count
    assert [item.embedding for item in answer.data] == [mock_vector(text) for text in TEXTS]
    assert floats.data[0].embedding == mock_vector(TEXTS[0])
    assert answer.model == MODELS[kind]
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (9, 9)
    # AND the record counts those tokens, at the model's input price, attributed to the end user
    request_id = raw.headers["x-request-id"]
    record = record_of(embedder, request_id)
    assert (record.upstream, record.termination_reason, record.usage_source) == (kind, "stop", "upstream")
    assert (record.api, record.mode) == ("embeddings", "json")
    assert (record.prompt_tokens, record.completion_tokens, record.attribution.user) == (9, 0, "end-user-7")
    assert record.cost_usd == Decimal("0.00000018") == Decimal(raw.headers["x-relay-cost-usd"])  # 9 x 0.02/M


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_cancel_by_client_id_stops_an_embeddings_request(embedder: Relay, upstreams: Upstreams, kind: str) -> None:
    # GIVEN an upstream that holds its answer back for 20 s, and a request with the client's own id
    client_id = f"embed-cancel-{kind}"
    mock = {"headers_delay_ms": 20_000}
    body: dict[str, Any] = {"model": MODELS[kind], "input": [*TEXTS, f"mock: {json.dumps(mock)}"]}
    answers: list[httpx.Response] = []

    def embed() -> None:
        with httpx.Client(timeout=30) as client:
            answers.append(
                client.post(
                    f"{embedder.url}/v1/embeddings",
                    json=body,
                    headers={**embedder.headers(), "X-Client-Request-Id": client_id},
                )
            )

    thread = threading.Thread(target=embed)
    thread.start()
    # WHEN the client cancels it by its id while the upstream holds it
    [request_id] = wait_until(lambda: upstreams_saw(upstreams), "the upstream got the request")
    cancel = httpx.post(f"{embedder.url}/v1/requests/{client_id}/cancel", headers=embedder.headers())
    assert cancel.status_code == 202, cancel.text
    thread.join(timeout=15)
    # THEN the request ends at once, as cancelled, and the upstream's request was closed
    [answer] = answers
    assert answer.json()["error"]["code"] == "client_cancelled", answer.text
    assert answer.headers["x-request-id"] == request_id
    wait_until(lambda: (upstreams.record("openai", request_id) or {}).get("disconnected_at"), "upstream closed")
    record = record_of(embedder, request_id)
    assert (record.termination_reason, record.cancel_source) == ("client_cancelled", "cancel_call")


def upstreams_saw(upstreams: Upstreams) -> list[str]:
    """The ids of the requests the mock got (its record appears when a request arrives)."""
    answer = httpx.get(f"{upstreams.mock}/mock/requests", timeout=5)
    answer.raise_for_status()
    ids: list[str] = answer.json()
    return ids


def test_a_budget_refuses_embeddings_it_cannot_cover(embedder: Relay, stores: Stores) -> None:
    plain, _ = new_key(stores, daily_budget_usd="0.0000000001", monthly_budget_usd="1")
    with _client(embedder, plain) as client, pytest.raises(openai.RateLimitError) as caught:
        client.embeddings.create(model=MODELS["openai"], input=TEXTS * 50)
    assert caught.value.code == "budget_exceeded"


def test_a_kind_without_embeddings_is_refused_before_anything_is_counted(embedder: Relay) -> None:
    with _client(embedder) as client, pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="amazon.titan-embed-text-v2:0", input=TEXTS)
    assert caught.value.param == "model" and "does not serve embeddings" in caught.value.message


def test_an_upstream_failure_is_passed_on_and_recorded(embedder: Relay) -> None:
    with httpx.Client(timeout=30) as client:
        answer = client.post(
            f"{embedder.url}/v1/embeddings",
            json={"model": MODELS["openai"], "input": TEXTS, "mock": {"status": 500}},
            headers=embedder.headers(),
        )
    assert answer.status_code == 502, answer.text
    record = record_of(embedder, answer.headers["x-request-id"])
    assert (record.termination_reason, record.upstream, record.cost_usd) == ("upstream_error", "openai", 0)


def test_an_answer_the_relay_refuses_is_still_billed_at_the_estimate(embedder: Relay) -> None:
    # GIVEN an upstream that answers 200 with one vector fewer than the inputs (the provider billed the call)
    with httpx.Client(timeout=30) as client:
        answer = client.post(
            f"{embedder.url}/v1/embeddings",
            json={"model": MODELS["openai"], "input": TEXTS, "mock": {"wrong_count": True}},
            headers=embedder.headers(),
        )
    # THEN the client gets a 502, never vectors in the wrong place, and the record bills the inputs' estimate
    assert answer.status_code == 502, answer.text
    record = record_of(embedder, answer.headers["x-request-id"])
    assert (record.termination_reason, record.usage_source) == ("upstream_error", "estimated")
    assert record.prompt_tokens > 0 and record.cost_usd is not None and record.cost_usd > 0


def test_without_the_upstreams_count_the_inputs_are_billed_at_the_relays_estimate(embedder: Relay) -> None:
    # GIVEN an upstream that gives no token count, and 4,000 CJK characters (about a token each)
    text = "漢字" * 2000
    with _client(embedder) as client:
        raw = client.embeddings.with_raw_response.create(
            model=MODELS["openai"], input=text, extra_body={"mock": {"no_usage": True}}
        )
        answer = raw.parse()
    # THEN the usage and the record are the relay's estimate, marked so, and not a quarter of it
    record = record_of(embedder, raw.headers["x-request-id"])
    assert answer.usage.prompt_tokens == record.prompt_tokens >= 4000
    assert record.usage_source == "estimated"
