"""Anthropic's Messages API (`POST /v1/messages`) through the relay, read with the official anthropic SDK (its key in
`x-api-key`, as Anthropic clients send it), against every kind of upstream: text, usage, record and cost, a cancel
mid-stream, a budget cut rendered as Anthropic's error event, the mock's faults, and errors in Anthropic's shape.
Faults are asked of the mock with `system` (the relay sends it as the system message)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest

from llm_relay.dynamo import Stores
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
from tests.waiting import wait_until

__all__ = ["routed", "upstreams"]  # the fixtures, shared with the chat tests of every kind


def _client(relay: Relay, key: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=relay.url, api_key=key or relay.key, max_retries=0)


def _request(kind: str, faults: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "model": MODELS[kind],
        "max_tokens": 2000,
        "system": f"mock: {json.dumps(faults)}",
        "messages": [{"role": "user", "content": PROMPT}],
        **extra,
    }


def _sse(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) of each event of an Anthropic stream."""
    out = []
    for block in raw.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def _text(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if isinstance(block, anthropic.types.TextBlock))


@pytest.mark.parametrize("kind", KINDS)
def test_messages_stream_gets_the_text_usage_record_and_cost_from_every_kind(routed: Relay, kind: str) -> None:
    # GIVEN the anthropic SDK pointed at the relay, and a model routed to this kind of upstream
    with _client(routed) as client:
        # WHEN it streams a message with the SDK's helper
        with client.messages.stream(**_request(kind, SHORT)) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        # AND asks for the same message without streaming
        whole = client.messages.create(**_request(kind, SHORT))
    # THEN both have the text, the stop reason and the upstream's own counts, in Anthropic's names
    assert text == TEXT
    for message in (final, whole):
        assert _text(message) == TEXT
        assert message.stop_reason == "end_turn"
        assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 12)
    # AND the record is a chat completion's: the upstream, its counts and the cost
    record = record_of(routed, final.id.removeprefix("msg_"))
    assert (record.upstream, record.termination_reason, record.usage_source) == (kind, "stop", "upstream")
    assert (record.api, record.mode) == ("messages", "sse")
    assert (record.prompt_tokens, record.completion_tokens) == (4, 12)
    assert record.cost_usd == Decimal("0.0000078")  # 4 x 0.15/M + 12 x 0.60/M


@pytest.mark.parametrize("kind", KINDS)
def test_a_cancel_by_client_id_ends_a_messages_stream_of_every_kind(
    routed: Relay, upstreams: Upstreams, kind: str
) -> None:
    client_id = f"msg-cancel-{kind}"
    texts = 0
    with (
        _client(routed) as client,
        client.messages.stream(**_request(kind, LONG), extra_headers={"X-Client-Request-Id": client_id}) as stream,
    ):
        request_id = stream.response.headers["x-request-id"]
        for event in stream:
            if event.type == "content_block_delta":
                texts += 1
                if texts == 3:  # WHEN the client cancels it by its own id, while it keeps reading
                    cancel = httpx.post(f"{routed.url}/v1/requests/{client_id}/cancel", headers=routed.headers())
                    assert cancel.status_code == 202, cancel.text
        final = stream.get_final_message()
    # THEN the stream ended well short of the answer, with no stop reason, the upstream was closed, and the record
    # says why
    assert texts < 1000 and final.stop_reason is None
    wait_until(lambda: (upstreams.record(kind, request_id) or {}).get("disconnected_at"), "upstream closed")
    record = record_of(routed, request_id)
    assert (record.termination_reason, record.cancel_source, record.upstream) == (
        "client_cancelled",
        "cancel_call",
        kind,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_budget_cut_ends_a_messages_stream_with_anthropics_error_event(
    make_relay: RelayFactory, upstreams: Upstreams, stores: Stores, kind: str
) -> None:
    relay = make_relay(
        upstream_url=None, upstreams=json.dumps(upstreams.table()), prices_json=PRICES, budget_increment_tokens=50
    )
    budget = Decimal("0.0001")
    plain, key = new_key(stores, daily_budget_usd=str(budget), monthly_budget_usd="1")
    # WHEN the SDK streams a 1000-token message
    with (
        _client(relay, plain) as client,
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(**_request(kind, LONG | {"chunk_delay_ms": 1})) as stream,
    ):
        request_id = stream.response.headers["x-request-id"]
        for _ in stream:
            pass
    # THEN the SDK raises the error event: a rate-limit error carrying the relay's code
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert (body["error"]["type"], body["error"]["code"]) == ("rate_limit_error", "budget_exceeded")
    # AND the ledger holds no reservation and no more than the budget
    record = record_of(relay, request_id, key.key_id)
    assert (record.termination_reason, record.upstream) == ("budget_exceeded", kind)
    assert 0 < record.completion_tokens < 1000
    assert assert_settled(stores, key.key_id, [record]) <= budget


@pytest.mark.parametrize(
    ("kind", "fault", "reason"),
    [
        ("openai", {"drop_after": 3}, "upstream_error"),
        ("ollama", {"error_after": 3}, "upstream_error"),
        ("ndjson", {"malformed_after": 3}, "upstream_error"),
        ("bedrock", {"exception_after": 3}, "upstream_error"),
    ],
)
def test_a_broken_upstream_ends_a_messages_stream_with_an_error_event(
    routed: Relay, kind: str, fault: dict[str, Any], reason: str
) -> None:
    with httpx.Client(timeout=30) as client:
        answer = client.post(
            f"{routed.url}/v1/messages",
            json=_request(kind, {**SHORT, **fault}, stream=True),
            headers={"x-api-key": routed.key, "anthropic-version": "2023-06-01"},
        )
    events = _sse(answer.text)
    assert events[0][0] == "message_start"
    assert events[-1][0] == "error" and events[-1][1]["error"]["code"] == reason
    record = record_of(routed, answer.headers["x-request-id"])
    assert (record.termination_reason, record.upstream) == (reason, kind)


def test_errors_before_the_stream_are_in_anthropics_shape(make_relay: RelayFactory, stores: Stores) -> None:
    relay = make_relay(prices_json=PRICES)
    plain, _ = new_key(stores, daily_budget_usd="0.0000001", monthly_budget_usd="1")
    with _client(relay, "lr-not-a-key") as client, pytest.raises(anthropic.AuthenticationError) as unauthorized:
        client.messages.create(**_request("openai", SHORT))
    with _client(relay, plain) as client, pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(**_request("openai", SHORT))
    with _client(relay) as client, pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(**_request("openai", SHORT), extra_body={"top_k": 5})
    assert unauthorized.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert refused.value.body["error"]["code"] == "budget_exceeded"  # type: ignore[index]
    assert bad.value.body["type"] == "error" and "top_k" in bad.value.message  # type: ignore[index]


def test_a_tool_call_is_a_tool_use_block(routed: Relay) -> None:
    tool: Any = {"name": "mock_tool", "description": "The mock's tool", "input_schema": {"type": "object"}}
    faults = {**SHORT, "tool_args": '{"city": "Paris"}'}
    with _client(routed) as client, client.messages.stream(**_request("openai", faults), tools=[tool]) as stream:
        final = stream.get_final_message()
    [use] = [block for block in final.content if block.type == "tool_use"]
    assert (use.name, use.input, final.stop_reason) == ("mock_tool", {"city": "Paris"}, "tool_use")
    assert _text(final) == TEXT
