"""OpenAI's Responses API (`POST /v1/responses`) through the relay, read with the official openai SDK, against every
kind of upstream: the same text, usage, record and cost as a chat completion, a cancel mid-stream, a budget cut
rendered as the API's own error event, and the mock's faults. Faults are asked of the mock with `instructions`
(the relay sends them as the system message)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response
from starlette.applications import Starlette

from llm_relay.dynamo import Stores
from llm_relay_dev.mock_upstream import create_mock_app
from tests.conftest import Relay, RelayFactory
from tests.integration.test_budgets import assert_settled
from tests.integration.test_limits_relay import new_key
from tests.integration.test_upstream_kinds import (
    KINDS,
    LONG,
    MODELS,
    PRICES,
    PROMPT,
    SHORT,
    TEXT,
    Upstreams,
    record_of,
    routed,
    upstreams,
)
from tests.servers import serve
from tests.waiting import wait_until

__all__ = ["routed", "upstreams"]  # the fixtures, shared with the chat tests of every kind


def _client(relay: Relay, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{relay.url}/v1", api_key=key or relay.key, max_retries=0)


def _request(kind: str, faults: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": MODELS[kind], "instructions": f"mock: {json.dumps(faults)}", "input": PROMPT, **extra}


def _events(raw: str) -> list[dict[str, Any]]:
    """The data of each `event: ...` / `data: {...}` block of a Responses stream."""
    return [
        json.loads(line[len("data: ") :])
        for block in raw.split("\n\n")
        for line in block.splitlines()
        if line.startswith("data: {")
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_responses_stream_gets_the_text_usage_record_and_cost_from_every_kind(routed: Relay, kind: str) -> None:
    # GIVEN the openai SDK pointed at the relay, and a model routed to this kind of upstream
    with _client(routed) as client:
        # WHEN it streams a response with the SDK's helper
        with client.responses.stream(**_request(kind, SHORT)) as stream:
            deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
            final = stream.get_final_response()
        # AND asks for the same response without streaming
        whole = client.responses.create(**_request(kind, SHORT))
    # THEN both have the text and the upstream's own counts, in the Responses API's names
    assert "".join(deltas) == TEXT == final.output_text == whole.output_text
    for response in (final, whole):
        assert response.status == "completed"
        assert response.usage is not None
        assert (response.usage.input_tokens, response.usage.output_tokens) == (4, 12)
    # AND the record is a chat completion's: the upstream, its counts, the cost, and the API it was asked in
    record = record_of(routed, final.id)
    assert (record.upstream, record.termination_reason, record.usage_source) == (kind, "stop", "upstream")
    assert (record.api, record.mode) == ("responses", "sse")
    assert (record.prompt_tokens, record.completion_tokens) == (4, 12)
    assert record.cost_usd == Decimal("0.0000078")  # 4 x 0.15/M + 12 x 0.60/M


@pytest.mark.parametrize("kind", KINDS)
def test_responses_events_are_numbered_by_the_relay(routed: Relay, kind: str) -> None:
    with _client(routed) as client:
        raw = client.responses.with_raw_response.create(**_request(kind, SHORT), stream=True)
        request_id = raw.headers["x-request-id"]
        events = list(raw.parse())
    # THEN every event has the relay's own strictly increasing sequence number, from 0, and its response id
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert {event.response.id for event in events if hasattr(event, "response")} == {request_id}


@pytest.mark.parametrize("kind", KINDS)
def test_a_cancel_by_client_id_ends_a_responses_stream_of_every_kind(
    routed: Relay, upstreams: Upstreams, kind: str
) -> None:
    # GIVEN a long response streaming with the client's own request id
    client_id = f"resp-cancel-{kind}"
    with _client(routed) as client:
        stream = client.responses.create(
            **_request(kind, LONG), stream=True, extra_headers={"X-Client-Request-Id": client_id}
        )
        seen = []
        for event in stream:
            seen.append(event)
            if sum(e.type == "response.output_text.delta" for e in seen) == 3:
                # WHEN the client cancels it by its own id, while it keeps reading
                cancel = httpx.post(f"{routed.url}/v1/requests/{client_id}/cancel", headers=routed.headers())
                assert cancel.status_code == 202, cancel.text
        request_id = seen[0].response.id
    # THEN the stream ended well short of the answer, the upstream was closed and the record says why
    assert sum(e.type == "response.output_text.delta" for e in seen) < 1000
    wait_until(lambda: (upstreams.record(kind, request_id) or {}).get("disconnected_at"), "upstream closed")
    record = record_of(routed, request_id)
    assert (record.termination_reason, record.cancel_source, record.upstream) == (
        "client_cancelled",
        "cancel_call",
        kind,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_budget_cut_ends_a_responses_stream_with_its_error_event(
    make_relay: RelayFactory, upstreams: Upstreams, stores: Stores, kind: str
) -> None:
    # GIVEN increments of 50 tokens and a key whose budget covers only a few of them
    relay = make_relay(
        upstream_url=None, upstreams=json.dumps(upstreams.table()), prices_json=PRICES, budget_increment_tokens=50
    )
    budget = Decimal("0.0001")
    plain, key = new_key(stores, daily_budget_usd=str(budget), monthly_budget_usd="1")
    # WHEN it streams a 1000-token response
    with httpx.Client(timeout=30) as client:
        answer = client.post(
            f"{relay.url}/v1/responses",
            json=_request(kind, LONG | {"chunk_delay_ms": 1}, stream=True),
            headers=relay.headers(plain),
        )
    # THEN the stream ends with the API's own error event naming the budget, after a failed response
    events = _events(answer.text)
    assert [e["type"] for e in events[-2:]] == ["response.failed", "error"]
    assert events[-1]["code"] == "budget_exceeded"
    assert events[-2]["response"]["error"]["code"] == "budget_exceeded"
    # AND the ledger holds no reservation and no more than the budget
    record = record_of(relay, answer.headers["x-request-id"], key.key_id)
    assert (record.termination_reason, record.upstream) == ("budget_exceeded", kind)
    assert 0 < record.completion_tokens < 1000
    assert assert_settled(stores, key.key_id, [record]) <= budget


def test_a_budget_refusal_before_the_stream_is_a_rate_limit_error(make_relay: RelayFactory, stores: Stores) -> None:
    relay = make_relay(prices_json=PRICES)
    plain, _ = new_key(stores, daily_budget_usd="0.0000001", monthly_budget_usd="1")
    with _client(relay, plain) as client, pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model="gpt-4o-mini", input=PROMPT, max_output_tokens=4000)
    assert caught.value.code == "budget_exceeded"


@pytest.mark.parametrize(
    ("kind", "fault", "reason"),
    [
        ("openai", {"drop_after": 3}, "upstream_error"),
        ("ollama", {"error_after": 3}, "upstream_error"),
        ("ndjson", {"malformed_after": 3}, "upstream_error"),
        ("bedrock", {"exception_after": 3}, "upstream_error"),
        ("bedrock", {"cut_before_stop": True}, "incomplete"),
    ],
)
def test_a_broken_upstream_ends_a_responses_stream_with_its_error_event(
    routed: Relay, kind: str, fault: dict[str, Any], reason: str
) -> None:
    with httpx.Client(timeout=30) as client:
        answer = client.post(
            f"{routed.url}/v1/responses", json=_request(kind, {**SHORT, **fault}, stream=True), headers=routed.headers()
        )
    events = _events(answer.text)
    assert events[-1]["type"] == "error" and events[-1]["code"] == reason
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    record = record_of(routed, answer.headers["x-request-id"])
    assert (record.termination_reason, record.upstream) == (reason, kind)


def test_an_upstream_that_fails_before_the_stream_is_an_sdk_error(routed: Relay) -> None:
    with _client(routed) as client, pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(**_request("openai", {"status": 400}), stream=True)
    assert caught.value.status_code == 400  # the upstream's own refusal, passed on before any event


def test_a_length_finish_is_an_incomplete_response(routed: Relay) -> None:
    with _client(routed) as client:
        response: Response = client.responses.create(**_request("openai", {**SHORT, "finish_reason": "length"}))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"background": True}, "background"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ],
)
def test_what_the_relay_cannot_honour_is_refused_naming_the_field(
    routed: Relay, extra: dict[str, Any], param: str
) -> None:
    with _client(routed) as client, pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt-4o-mini", input=PROMPT, **extra)
    assert caught.value.param == param


# --- an openai upstream: its own stream, passed through --------------------------------------------------------


@pytest.fixture
def mock_app() -> Iterator[tuple[str, Any]]:
    app = create_mock_app()
    with serve(app) as base:
        yield base, app.state.mock


def test_an_openai_upstream_gets_the_responses_request_and_its_events_pass_through(
    make_relay: RelayFactory, mock_app: tuple[str, Any]
) -> None:
    # GIVEN a relay whose model is served by an upstream of the openai kind, with the compliance gate off
    base, state = mock_app
    relay = make_relay(upstream_url=f"{base}/v1")
    tool = {"type": "function", "name": "mock_tool", "parameters": {"type": "object"}}
    faults = {**SHORT, "tool_args": '{"city": "Paris"}'}
    # WHEN the SDK streams a response that calls a tool
    with httpx.Client(timeout=30) as client:
        raw = client.post(
            f"{relay.url}/v1/responses",
            json=_request("openai", faults, tools=[tool], reasoning={"effort": "low"}, stream=True),
            headers=relay.headers(),
        )
        text = raw.text
    # THEN the provider was sent the Responses request itself (not a chat completion), storing nothing
    [sent] = state.bodies
    assert sent["input"] == PROMPT and sent["reasoning"] == {"effort": "low"} and sent["store"] is False
    assert "messages" not in sent
    # AND its events came through under the relay's ids and numbering, none of the provider's ids left
    events = _events(text)
    request_id = raw.headers["x-request-id"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert "resp_mock" not in text and "msg_mock" not in text and "fc_mock" not in text
    assert {e["response"]["id"] for e in events if "response" in e} == {request_id}
    assert "_events" not in text
    completed = events[-1]
    assert completed["type"] == "response.completed"
    [message, call] = completed["response"]["output"]
    assert "".join(part["text"] for part in message["content"]) == TEXT
    assert (call["type"], call["name"], call["arguments"]) == ("function_call", "mock_tool", '{"city": "Paris"}')
    # AND the record counts the provider's usage from response.completed
    record = record_of(relay, request_id)
    usage = completed["response"]["usage"]
    assert (record.prompt_tokens, record.completion_tokens) == (usage["input_tokens"], usage["output_tokens"])
    assert (record.termination_reason, record.usage_source, record.api) == ("tool_calls", "upstream", "responses")


def test_with_the_compliance_gate_on_an_openai_upstream_is_sent_the_translated_request(
    make_relay: RelayFactory, mock_app: tuple[str, Any]
) -> None:
    base, state = mock_app
    relay = make_relay(upstream_url=f"{base}/v1", sanitize="redact")
    with _client(relay) as client:
        response = client.responses.create(**_request("openai", {**SHORT, "text": "Mail me at jo@example.com"}))
    [sent] = state.bodies
    assert "messages" in sent and "input" not in sent  # the gate must see every delta: chat, not pass-through
    assert response.output_text == "Mail me at [EMAIL]"


def test_an_openai_compatible_server_without_the_responses_api_is_sent_the_translated_request(
    make_relay: RelayFactory,
) -> None:
    # GIVEN an OpenAI-compatible upstream that has chat completions but no /v1/responses (vLLM, LiteLLM, Ollama)
    mock = create_mock_app()
    chat_only = Starlette(routes=[r for r in mock.routes if getattr(r, "path", "") != "/v1/responses"])
    with serve(chat_only) as base:
        relay = make_relay(upstream_url=f"{base}/v1")
        # WHEN the SDK streams two responses
        with _client(relay) as client:
            texts = []
            for _ in range(2):
                with client.responses.stream(**_request("openai", SHORT)) as stream:
                    texts.append(stream.get_final_response().output_text)
    # THEN both are answered, from the translated chat request, and the upstream got chat requests only
    assert texts == [TEXT, TEXT]
    assert [("messages" in body, "input" in body) for body in mock.state.mock.bodies] == [(True, False)] * 2
