"""The Mangum entry point in-process: the app is built once per process, and streamed bodies (SSE, NDJSON) come
back as text, not base64."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from llm_relay import lambda_handler
from llm_relay.errors import ConfigurationError
from tests.conftest import Upstream
from tests.packaging.conftest import relay_environment
from tests.packaging.expected import check_response, load_event


@pytest.fixture
def fresh_handler(
    monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, dev_table: str, upstream: Upstream
) -> Iterator[None]:
    """The handler as in a new sandbox: no adapter built yet, the environment of a local relay."""
    for name, value in relay_environment(moto_endpoint, dev_table, upstream.url).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(lambda_handler, "_adapter", None)
    yield
    asyncio.get_event_loop().close()  # the one the handler made for this thread
    asyncio.set_event_loop(None)


def test_streamed_bodies_come_back_as_text(fresh_handler):
    # GIVEN a fresh sandbox
    # WHEN the SSE and NDJSON events are handled
    for name in ("chat-streamed", "chat-ndjson"):
        response = lambda_handler.handler(load_event(name), None)
        # THEN the whole stream is in the body as text
        check_response(name, response)


def test_the_app_is_built_once_per_sandbox(fresh_handler):
    # GIVEN a fresh sandbox
    first = lambda_handler.handler(load_event("healthz"), None)
    adapter = lambda_handler._adapter
    # WHEN a second invocation arrives
    second = lambda_handler.handler(load_event("healthz"), None)
    # THEN it reuses the adapter (and app) of the first
    assert adapter is not None and lambda_handler._adapter is adapter
    assert json.loads(first["body"]) == json.loads(second["body"]) == {"status": "ok"}
    # AND every response has its own request id
    assert first["headers"]["x-request-id"] != second["headers"]["x-request-id"]


def test_the_handler_refuses_without_an_upstream_url(
    monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, dev_table: str
) -> None:
    # GIVEN a fresh sandbox whose environment lacks RELAY_UPSTREAM_URL
    for name, value in relay_environment(moto_endpoint, dev_table, "unused").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RELAY_UPSTREAM_URL")
    monkeypatch.setattr(lambda_handler, "_adapter", None)
    # WHEN an invocation arrives THEN it fails with an error naming the variable, and no app is kept
    with pytest.raises(ConfigurationError, match="RELAY_UPSTREAM_URL"):
        lambda_handler.handler(load_event("healthz"), None)
    assert lambda_handler._adapter is None


def test_buffered_invocations_are_sanitized_by_the_same_code(
    fresh_handler: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a sandbox whose deployment redacts answers, and an answer with an e-mail address split across chunks
    monkeypatch.setenv("RELAY_SANITIZE", "redact")
    text = "Write to jane.roe@example.org today."
    for name in ("chat-streamed", "chat-ndjson", "chat-buffered"):
        event = load_event(name)
        body = json.loads(event["body"])
        body["mock"] = {"text": text, "chunk_chars": 4, "chunk_delay_ms": 0, "ttft_ms": 0}
        event["body"] = json.dumps(body)
        # WHEN Mangum handles the buffered invocation
        response = lambda_handler.handler(event, None)
        # THEN the body carries the redacted answer and never the value
        assert response["statusCode"] == 200, response["body"]
        assert "jane.roe" not in response["body"]
        assert "Write to [EMAIL] today." in _answer_text(response["body"])


def _answer_text(body: str) -> str:
    """The answer's text in a buffered body: the one JSON completion, or the chunks of an SSE or NDJSON stream."""
    if body.startswith("{") and '"chat.completion"' in body:
        return str(json.loads(body)["choices"][0]["message"]["content"])
    lines = [line.removeprefix("data: ") for line in body.splitlines() if line.strip()]
    chunks = [json.loads(line) for line in lines if line.startswith("{")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
