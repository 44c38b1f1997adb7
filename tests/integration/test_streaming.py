"""Relay happy paths through a real uvicorn server: SSE, NDJSON, plain JSON, and the official openai SDK."""

from __future__ import annotations

import json
from contextlib import ExitStack

import httpx
import openai
import pytest
from bench.run import server_timing

from tests.conftest import Relay, RelayFactory, Upstream
from tests.integration.helpers import RecordingFinalizer, chat_body, ndjson_lines, sse_events


@pytest.fixture
def recorder() -> RecordingFinalizer:
    return RecordingFinalizer()


@pytest.fixture
def rec_relay(make_relay: RelayFactory, recorder: RecordingFinalizer) -> Relay:
    return make_relay(app_kwargs={"finalizers": [recorder]})


def test_sse_stream_is_framed_like_openai(rec_relay: Relay, recorder: RecordingFinalizer) -> None:
    # GIVEN a relay in front of the mock upstream producing 5 tokens
    body = chat_body(stream=True, mock={"tokens": 5, "chunk_delay_ms": 1, "ttft_ms": 5})
    # WHEN a client streams a chat completion
    response = httpx.post(f"{rec_relay.url}/v1/chat/completions", json=body, headers=rec_relay.headers())
    # THEN it gets OpenAI SSE framing: chunk events carrying the request id, then [DONE]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    request_id = response.headers["x-request-id"]
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["id"] == request_id and c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "The quick brown fox jumps"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # AND no usage leaks to a client that did not ask for it
    assert all("usage" not in c for c in chunks)
    outcome = recorder.wait(request_id)
    assert outcome.reason.value == "stop"
    assert outcome.usage.completion_tokens == 5 and not outcome.usage.estimated
    assert outcome.ttft_s is not None and outcome.ttft_s > 0


def test_sse_usage_chunk_only_when_asked(rec_relay: Relay) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True}, mock={"tokens": 3, "chunk_delay_ms": 0})
    response = httpx.post(f"{rec_relay.url}/v1/chat/completions", json=body, headers=rec_relay.headers())
    chunks = [json.loads(e) for e in sse_events(response.text)[:-1]]
    usage_chunks = [c for c in chunks if c.get("usage")]
    assert len(usage_chunks) == 1
    assert usage_chunks[0]["choices"] == []
    assert usage_chunks[0]["usage"]["completion_tokens"] == 3


def test_ndjson_stream_ends_with_summary(rec_relay: Relay, upstream: Upstream) -> None:
    body = chat_body(mock={"tokens": 4, "chunk_delay_ms": 0, "finish_reason": "length"})
    response = httpx.post(f"{rec_relay.url}/api/v1/chat/stream", json=body, headers=rec_relay.headers())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = ndjson_lines(response.text)
    summary = lines[-1]
    assert summary["object"] == "relay.summary"
    assert summary["id"] == response.headers["x-request-id"]
    assert summary["finish_reason"] == "length" and summary["termination_reason"] == "length"
    assert summary["usage"]["completion_tokens"] == 4 and summary["usage"]["estimated"] is False
    assert summary["ttft_ms"] > 0 and summary["duration_ms"] >= summary["ttft_ms"]
    assert "".join(line["choices"][0]["delta"].get("content", "") for line in lines[:-1]) == "The quick brown fox"
    # AND the upstream was always asked to stream with usage, whatever the client sent
    sent = upstream.state.bodies[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_plain_json_when_not_streaming(rec_relay: Relay) -> None:
    body = chat_body(mock={"tokens": 3, "chunk_delay_ms": 0})
    response = httpx.post(f"{rec_relay.url}/v1/chat/completions", json=body, headers=rec_relay.headers())
    assert response.status_code == 200
    completion = response.json()
    assert completion["object"] == "chat.completion"
    assert completion["id"] == response.headers["x-request-id"]
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "The quick brown", "refusal": None}
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"]["completion_tokens"] == 3


def test_x_api_key_header_is_accepted(rec_relay: Relay) -> None:
    response = httpx.post(
        f"{rec_relay.url}/v1/chat/completions", json=chat_body(mock={"tokens": 1}), headers={"x-api-key": rec_relay.key}
    )
    assert response.status_code == 200


def test_openai_sdk_streaming_with_usage(rec_relay: Relay, closing: ExitStack) -> None:
    client = closing.enter_context(openai.OpenAI(base_url=f"{rec_relay.url}/v1", api_key=rec_relay.key, max_retries=0))
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"mock": {"tokens": 6, "chunk_delay_ms": 1}},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == "The quick brown fox jumps over"
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 6


def test_openai_sdk_non_streaming(rec_relay: Relay, closing: ExitStack) -> None:
    client = closing.enter_context(openai.OpenAI(base_url=f"{rec_relay.url}/v1", api_key=rec_relay.key, max_retries=0))
    completion = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"mock": {"tokens": 2}},
    )
    assert completion.choices[0].message.content == "The quick"
    assert completion.usage is not None and completion.usage.completion_tokens == 2


def test_openai_sdk_sees_bad_key_as_authentication_error(rec_relay: Relay, closing: ExitStack) -> None:
    client = closing.enter_context(openai.OpenAI(base_url=f"{rec_relay.url}/v1", api_key="lr-not-a-key", max_retries=0))
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.code == "invalid_api_key"


def test_keep_alive_connection_to_upstream_is_reused(rec_relay: Relay, upstream: Upstream) -> None:
    # GIVEN several sequential requests
    with httpx.Client() as client:
        for _ in range(3):
            client.post(
                f"{rec_relay.url}/v1/chat/completions", json=chat_body(mock={"tokens": 1}), headers=rec_relay.headers()
            )
    # THEN the upstream saw them all arrive on one kept-alive connection (one client port)
    ports = {record.client_port for record in upstream.state.requests.values()}
    assert len(upstream.state.requests) == 3
    assert len(ports) == 1


def test_healthz_touches_nothing_remote(make_relay: RelayFactory) -> None:
    relay = make_relay(dynamodb_endpoint="http://127.0.0.1:9")  # nothing listens there
    response = httpx.get(f"{relay.url}/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert response.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/chat/stream"])
def test_the_response_says_where_the_time_before_its_first_byte_went(rec_relay: Relay, path: str) -> None:
    # GIVEN an upstream that holds its response headers back for 300 ms
    body = chat_body(stream=True, mock={"tokens": 3, "chunk_delay_ms": 1, "ttft_ms": 1, "headers_delay_ms": 300})
    # WHEN a client streams through the relay
    with httpx.stream("POST", f"{rec_relay.url}{path}", json=body, headers=rec_relay.headers(), timeout=30) as response:
        assert response.status_code == 200
        phases = server_timing(response.headers["server-timing"])
    # THEN Server-Timing names the four phases in order, and the 300 ms are the upstream's, not the relay's own
    assert list(phases) == ["auth", "parse", "admit", "upstream"], phases
    assert phases["upstream"] >= 300.0 and all(ms >= 0 for ms in phases.values()), phases
