"""Bedrock `ConverseStream` body → OpenAI chunks (pure: bytes in, decoded items out).

The body is AWS event-stream framing (binary messages with a prelude, headers and CRC32s); botocore's
`EventStreamBuffer` reads it, never code of ours. Each message's `:event-type` header names a Converse event whose
JSON payload is translated. `messageStop` carries the stop reason but the stream is only complete with the
`metadata` event after it (the upstream's own token counts): so the finish chunk is emitted with `metadata`,
never earlier, and a body cut before it ends as `incomplete` (see `base`).
"""

from __future__ import annotations

import json
import struct
from typing import Any

from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError

from .base import END, Decoded, Failed, chunk, usage_chunk

__all__ = ["FINISH_REASONS", "BedrockDecoder"]

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
"""Bedrock `stopReason` → OpenAI `finish_reason`; any other reason is `stop` (the model did end its message)."""

MALFORMED = "Upstream sent a malformed event."
# What botocore's parser raises on a broken frame: its own errors, and those of unpacking bad header bytes.
_FRAMING_ERRORS = (ParserError, struct.error, KeyError, IndexError, ValueError)


class BedrockDecoder:
    """One ConverseStream body. After `END` or a `Failed`, whatever else arrives is ignored."""

    def __init__(self, model: str, created: int) -> None:
        self._model = model
        self._created = created
        self._buffer = EventStreamBuffer()
        self._stop_reason: str | None = None
        self._tool_index: dict[int, int] = {}  # contentBlockIndex → OpenAI tool_calls index
        self._over = False

    def feed(self, raw: bytes) -> list[Decoded]:
        if self._over:
            return []
        out: list[Decoded] = []
        try:
            self._buffer.add_data(raw)
            for message in self._buffer:
                out.extend(self._message(message))
                if self._over:
                    break
        except _FRAMING_ERRORS:
            out.append(Failed(MALFORMED))
            self._over = True
        return out

    def close(self) -> list[Decoded]:
        """A body that ends before `metadata` is simply over (the relay calls it incomplete)."""
        return []

    def _message(self, message: EventStreamMessage) -> list[Decoded]:
        headers: dict[str, Any] = message.headers  # type: ignore[assignment]  # the stubs call them an int
        kind = headers.get(":message-type")
        if kind == "error":
            return self._fail(f"Upstream error: {headers.get(':error-code')}: {headers.get(':error-message')}")
        try:
            payload = json.loads(message.payload) if message.payload else {}
        except (ValueError, RecursionError):
            payload = None
        if not isinstance(payload, dict):
            return self._fail(MALFORMED)
        if kind == "exception":
            return self._fail(f"Upstream error: {headers.get(':exception-type')}: {payload.get('message')}")
        if kind != "event":
            return self._fail(MALFORMED)
        try:
            return self._event(str(headers.get(":event-type")), payload)
        except (TypeError, AttributeError, ValueError):  # a field of an unexpected type: not an event we can read
            return self._fail(MALFORMED)

    def _event(self, name: str, payload: dict[str, Any]) -> list[Decoded]:
        if name == "messageStart":
            return [self._chunk({"role": "assistant", "content": ""})]
        if name == "contentBlockStart":
            return self._block_start(payload)
        if name == "contentBlockDelta":
            return self._block_delta(payload)
        if name == "messageStop":
            self._stop_reason = str(payload.get("stopReason") or "end_turn")
            return []
        if name == "metadata":
            return self._metadata(payload)
        return []  # contentBlockStop, and events a newer Converse may add

    def _block_start(self, payload: dict[str, Any]) -> list[Decoded]:
        tool = (payload.get("start") or {}).get("toolUse")
        if not isinstance(tool, dict):
            return []
        index = self._tool_index.setdefault(int(payload.get("contentBlockIndex", 0)), len(self._tool_index))
        call = {
            "index": index,
            "id": tool.get("toolUseId", ""),
            "type": "function",
            "function": {"name": tool.get("name", ""), "arguments": ""},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, payload: dict[str, Any]) -> list[Decoded]:
        delta = payload.get("delta") or {}
        if isinstance(delta.get("text"), str):
            return [self._chunk({"content": delta["text"]})]
        tool = delta.get("toolUse")
        if isinstance(tool, dict):
            block = int(payload.get("contentBlockIndex", 0))
            index = self._tool_index.setdefault(block, len(self._tool_index))
            return [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": tool.get("input", "")}}]})]
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict) and isinstance(reasoning.get("text"), str):
            return [self._chunk({"reasoning_content": reasoning["text"]})]
        return []  # reasoning signatures, redacted reasoning, citations: nothing a chunk carries

    def _metadata(self, payload: dict[str, Any]) -> list[Decoded]:
        if self._stop_reason is None:
            return self._fail("Upstream sent its metadata before the message stopped.")
        finish = self._chunk({}, FINISH_REASONS.get(self._stop_reason, "stop"))
        self._over = True
        return [finish, self._usage_chunk(payload.get("usage") or {}), END]

    def _usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        """Bedrock counts cache reads and writes apart from `inputTokens`; OpenAI's `prompt_tokens` includes them
        (and `cached_tokens` says how many were read), so the relay prices and meters the whole prompt."""
        cached = int(usage.get("cacheReadInputTokens") or 0)
        prompt = int(usage.get("inputTokens") or 0) + cached + int(usage.get("cacheWriteInputTokens") or 0)
        completion = int(usage.get("outputTokens") or 0)
        return usage_chunk(self._model, self._created, prompt, completion, cached)

    def _fail(self, message: str) -> list[Decoded]:
        self._over = True
        return [Failed(message)]

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return chunk(self._model, self._created, delta, finish)
