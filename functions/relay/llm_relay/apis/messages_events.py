"""The relay's chat chunks rendered as Anthropic Messages answers (pure): the SSE events of a streamed answer, the
`stream: false` Message, and error bodies.

A streamed answer is `message_start`, then for each content block `content_block_start`, its deltas and
`content_block_stop`, then `message_delta` (the stop reason and the usage) and `message_stop`. The usage is only
known at the end, so `message_start` carries zeros and `message_delta` the real counts: the SDK's accumulator
takes `message_delta`'s counts as the totals (input tokens included). A stream that fails ends with an `error`
event and nothing else, as Anthropic's own do; the SDK raises on it wherever it comes, so a failure before any
chunk is the `error` event alone.

Usage is in Anthropic's terms: `input_tokens` excludes the tokens read from the prompt cache (OpenAI's
`prompt_tokens` includes them), which are `cache_read_input_tokens`.
"""

from __future__ import annotations

import json
from typing import Any

from ..json_text import dumps

__all__ = ["MessagesFraming", "message_id", "messages_answer", "messages_error", "stop_reason", "usage"]

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# The Anthropic error type of a failed stream, by the relay's code (`timeout_error` is Anthropic's 504 type).
_STREAM_ERROR_TYPES = {
    "budget_exceeded": "rate_limit_error",
    "rate_limit_exceeded": "rate_limit_error",
    "upstream_rate_limited": "overloaded_error",  # the upstream's capacity, not the client's own limit
    "upstream_timeout": "timeout_error",
    "deadline": "timeout_error",
    "content_filtered": "invalid_request_error",
    "client_cancelled": "invalid_request_error",
}
_RELAY_TYPES = {"invalid_request_error": "invalid_request_error", "rate_limit_error": "rate_limit_error"}
# Anthropic's HTTP error types by status, as its API reference lists them; other 4xx are invalid_request_error, other
# 5xx api_error.
_HTTP_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def message_id(request_id: str) -> str:
    """The Message id of a request: `msg_` and the request id whole (the relay's `req_…` or the client's own id),
    so the request id is the Message id without its `msg_` (for the cancel call, the usage records)."""
    return "msg_" + request_id


def stop_reason(finish_reason: str | None) -> str | None:
    """Anthropic's stop reason for a chat finish reason; none for an answer that did not finish (cancelled). A chat
    upstream does not say whether a stop sequence ended the answer, so that is `end_turn` too (and `stop_sequence`
    is always null); an unknown finish reason is a model that did finish."""
    return None if finish_reason is None else _STOP_REASONS.get(finish_reason, "end_turn")


def usage(openai_usage: dict[str, Any] | None) -> dict[str, int]:
    """OpenAI usage in Anthropic's names (zeros when there is none)."""
    openai_usage = openai_usage or {}
    prompt = int(openai_usage.get("prompt_tokens") or 0)
    details = openai_usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens")
    counts = {
        "input_tokens": prompt - int(cached or 0),
        "output_tokens": int(openai_usage.get("completion_tokens") or 0),
    }
    if cached is not None:
        counts["cache_read_input_tokens"] = int(cached)
    return counts


class MessagesFraming:
    """Anthropic's SSE (`event: <type>\\ndata: <json>\\n\\n`) from the relay's chunks. Stateful: one per stream.

    Blocks open as content arrives: text, and one `tool_use` block per tool call. A chat upstream's
    `reasoning_content` is not rendered: Anthropic sends thinking blocks only to a request that enabled thinking
    (the relay refuses it), and a thinking block needs a signature the relay cannot make."""

    media_type = "text/event-stream"
    heartbeat = b'event: ping\ndata: {"type": "ping"}\n\n'
    nudge = b"\n"

    def __init__(self, message_id: str, model: str, created: int) -> None:
        self.message_id = message_id
        self.model = model
        self.created = created  # Anthropic's Message has no timestamp; kept for the framing's signature
        self._started = False
        self._blocks = 0  # how many content blocks were opened
        self._open: str | None = None  # the open block: "text", or "tool:<chat tool-call index>"
        self._tool_blocks: dict[int, int] = {}  # chat tool-call index -> its block index
        self._refused = False

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = [self._start()]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            out.append(self._text(delta.get("content")))
            if delta.get("refusal"):
                self._refused = True  # the model refused: its words are the answer's text, the stop reason says so
                out.append(self._text(delta["refusal"]))
            for call in delta.get("tool_calls") or []:
                out.append(self._tool_call(call))
        return b"".join(out)

    def end(self, summary: dict[str, Any]) -> bytes:
        reason = stop_reason(summary.get("finish_reason"))  # the summary's is the stream's, chunks' included
        if self._refused and reason == "end_turn":
            reason = "refusal"
        delta = {"stop_reason": reason, "stop_sequence": None}
        final = {"type": "message_delta", "delta": delta, "usage": usage(summary.get("usage"))}
        return b"".join((self._start(), self._close(), _event(final), _event({"type": "message_stop"})))

    def error(self, error: dict[str, Any]) -> bytes:
        return _event(_error_body(error, None))

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},  # the real counts come with message_delta
        }
        return _event({"type": "message_start", "message": message})

    def _text(self, text: Any) -> bytes:
        if not isinstance(text, str) or not text:
            return b""
        opened = b"" if self._open == "text" else self._open_block("text", {"type": "text", "text": ""})
        delta = {"type": "text_delta", "text": text}
        return opened + _event({"type": "content_block_delta", "index": self._blocks - 1, "delta": delta})

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        index = int(call.get("index") or 0)
        function = call.get("function") or {}
        opened = b""
        if index not in self._tool_blocks:
            tool_id = call.get("id") or f"toolu_{index}_{self.message_id}"
            block: dict[str, Any] = {"type": "tool_use", "id": tool_id, "name": function.get("name") or "", "input": {}}
            opened = self._open_block(f"tool:{index}", block)
            self._tool_blocks[index] = self._blocks - 1
        arguments = function.get("arguments")
        if not isinstance(arguments, str) or not arguments:
            return opened
        # Arguments arrive after their call's first delta. Chat upstreams send calls one after another; should one
        # interleave them, the late pieces still go to their own block (by index, as the SDK accumulates them).
        delta = {"type": "input_json_delta", "partial_json": arguments}
        event = {"type": "content_block_delta", "index": self._tool_blocks[index], "delta": delta}
        return opened + _event(event)

    def _open_block(self, key: str, block: dict[str, Any]) -> bytes:
        closed = self._close()
        self._open = key
        self._blocks += 1
        return closed + _event({"type": "content_block_start", "index": self._blocks - 1, "content_block": block})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event({"type": "content_block_stop", "index": self._blocks - 1})


def messages_answer(completion: dict[str, Any]) -> dict[str, Any]:
    """The `stream: false` Message for an assembled `chat.completion`."""
    choices = completion.get("choices") or [{}]
    message = choices[0].get("message") or {}
    content: list[dict[str, Any]] = []
    for text in (message.get("content"), message.get("refusal")):
        if isinstance(text, str) and text:
            content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "",
                "name": function.get("name") or "",
                "input": _tool_input(function.get("arguments")),
            }
        )
    reason = stop_reason(choices[0].get("finish_reason"))
    if message.get("refusal") and reason == "end_turn":
        reason = "refusal"
    return {
        "id": message_id(str(completion.get("id") or "")),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model") or "",
        "content": content,
        "stop_reason": reason,
        "stop_sequence": None,
        "usage": usage(completion.get("usage")),
    }


def messages_error(body: dict[str, Any], status: int) -> dict[str, Any]:
    """Anthropic's HTTP error body (`{"type": "error", "error": {"type", "message"}, "request_id"}`) for the relay's
    OpenAI-shaped one answered with `status`."""
    error_type = _HTTP_ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    if status >= 500 and (body.get("error") or {}).get("code") == "upstream_rate_limited":
        error_type = "overloaded_error"
    return _error_body(body, error_type)


def _error_body(body: dict[str, Any], error_type: str | None) -> dict[str, Any]:
    """The error object. The relay's code stays as `code`, and as `details.error_code`, where Anthropic puts a
    stable cause and its SDK reads one (`APIStatusError.error_code`): a program can tell `budget_exceeded` from a
    rate limit."""
    error = body.get("error") or {}
    code = error.get("code")
    if error_type is None:
        error_type = _STREAM_ERROR_TYPES.get(str(code)) or _RELAY_TYPES.get(str(error.get("type")), "api_error")
    anthropic_error: dict[str, Any] = {"type": error_type, "message": str(error.get("message") or "")}
    if code is not None:
        anthropic_error["code"] = code
        anthropic_error["details"] = {"error_code": code}
    if error.get("entity_types") is not None:
        anthropic_error["entity_types"] = error["entity_types"]
    out: dict[str, Any] = {"type": "error", "error": anthropic_error}
    if error.get("request_id") is not None:
        out["request_id"] = error["request_id"]
    return out


def _tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic's `input` is. Arguments that are not a JSON object (a call
    cut off by `max_tokens`, which the stop reason says) are an empty input."""
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else None
    except (ValueError, RecursionError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _event(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {dumps(data)}\n\n".encode()
