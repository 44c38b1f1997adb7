"""SSE and NDJSON framings: exact bytes on the wire."""

from __future__ import annotations

import json
from typing import Any

from llm_relay.encoding import Framing, NDJSONFraming, SSEFraming
from llm_relay.json_text import dumps

CHUNK: dict[str, Any] = {
    "id": "req_123",
    "object": "chat.completion.chunk",
    "created": 1718000000,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "delta": {"content": "Grüße 日本 🚀"}, "finish_reason": None}],
}
CHUNK_JSON = (
    '{"id":"req_123","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini",'
    '"choices":[{"index":0,"delta":{"content":"Grüße 日本 🚀"},"finish_reason":null}]}'
)
ERROR = {
    "error": {"message": "Upstream timed out.", "type": "upstream_error", "param": None, "code": "upstream_timeout"}
}
ERROR_JSON = (
    '{"error":{"message":"Upstream timed out.","type":"upstream_error","param":null,"code":"upstream_timeout"}}'
)
SUMMARY = {"object": "relay.summary", "finish_reason": "stop", "usage": {"prompt_tokens": 3}}


def test_dumps_is_compact_and_keeps_non_ascii() -> None:
    assert dumps(CHUNK) == CHUNK_JSON
    assert dumps({"a": "é"}) == '{"a":"é"}'


def test_sse_chunk_framing_is_exact() -> None:
    # GIVEN a chunk with non-ASCII content
    # WHEN framed for SSE
    framed = SSEFraming().chunk(CHUNK)
    # THEN it is `data: <compact json>\n\n` in raw UTF-8 (no \u escapes)
    assert framed == f"data: {CHUNK_JSON}\n\n".encode()
    assert "Grüße 日本 🚀".encode() in framed
    assert b"\\u" not in framed


def test_sse_end_is_done() -> None:
    assert SSEFraming().end({"object": "relay.summary"}) == b"data: [DONE]\n\n"


def test_sse_error_is_a_data_event() -> None:
    assert SSEFraming().error(ERROR) == f"data: {ERROR_JSON}\n\n".encode()


def test_sse_constants() -> None:
    framing = SSEFraming()
    assert framing.media_type == "text/event-stream"
    assert framing.heartbeat == b": ping\n\n"
    assert framing.nudge == b"\n"


def test_ndjson_chunk_framing_is_exact() -> None:
    framed = NDJSONFraming().chunk(CHUNK)
    assert framed == f"{CHUNK_JSON}\n".encode()
    assert framed.count(b"\n") == 1
    assert json.loads(framed) == CHUNK


def test_ndjson_end_is_the_summary_line() -> None:
    assert NDJSONFraming().end(SUMMARY) == (
        b'{"object":"relay.summary","finish_reason":"stop","usage":{"prompt_tokens":3}}\n'
    )


def test_ndjson_error_line() -> None:
    assert NDJSONFraming().error(ERROR) == f"{ERROR_JSON}\n".encode()


def test_ndjson_constants() -> None:
    framing = NDJSONFraming()
    assert framing.media_type == "application/x-ndjson"
    assert framing.heartbeat == b"\n"
    assert framing.nudge == b"\n"


def test_newlines_in_content_never_break_framing() -> None:
    # GIVEN content with line breaks of every kind
    chunk = {"choices": [{"delta": {"content": "a\nb\r\nc\rd\u2028e"}}]}
    for framing in (SSEFraming(), NDJSONFraming()):
        # WHEN framed
        framed = framing.chunk(chunk)
        # THEN the only raw line breaks are the frame's own terminators
        body = framed.removeprefix(b"data: ").rstrip(b"\n")
        assert b"\n" not in body
        assert b"\r" not in body
        assert json.loads(body) == chunk


def test_both_satisfy_the_framing_protocol() -> None:
    framings: list[Framing] = [SSEFraming(), NDJSONFraming()]
    assert [f.media_type for f in framings] == ["text/event-stream", "application/x-ndjson"]
